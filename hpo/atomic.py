"""Replacing files and folders so that a reader sees the old version or the new one, never half of one.

Exports and retrained models are written into a staging folder beside their
target (same filesystem, so a rename is atomic) and swapped in when complete.
A failure or a kill while staging leaves the previous version untouched. On
Linux the swap of two folders is one ``renameat2(RENAME_EXCHANGE)`` call;
elsewhere it is two renames, and the old version is only deleted after the
new one is in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _default_mode(mode: int) -> int:
    """What open() or mkdir() would give; mkstemp and mkdtemp give owner-only, wrong for a shared export."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(staging, _default_mode(0o666))
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def staging_dir(target: Path) -> Path:
    """An empty folder beside ``target``, hidden, to be filled and then swapped in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    os.chmod(staging, _default_mode(0o777))
    return staging


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step; False where the system cannot (then the caller renames twice)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_dir(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target``, then delete what was there."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous version
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old)
