"""Opening the shared study database, safely and without leaking secrets.

Every function here that can fail raises ``StorageError`` with a message that
names the host and database but never the password. Checks run before
anything is written, so a bad URL or an unreachable host leaves no trace.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from hpo.errors import StorageError

SUPPORTED_BACKENDS = ("sqlite", "postgresql", "mysql")
# Seconds a SQLite writer waits for the lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 120


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def mask_text(message: str, url: str) -> str:
    """Remove the URL's password from any text (driver errors can echo it)."""
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message.replace(url, mask_url(url))


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line only: the root cause, not SQLAlchemy's wrapping."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    message = str(getattr(root, "orig", None) or root).strip()
    return message.splitlines()[0] if message else type(root).__name__


def _reason(exc: BaseException, url: str) -> str:
    return mask_text(first_line(exc), url)


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(f"storage: malformed database URL {mask_url(url)!r}") from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise StorageError(
            f"storage: unsupported backend {parsed.get_backend_name()!r} in {mask_url(url)!r} "
            f"(use {', '.join(SUPPORTED_BACKENDS)})"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StorageError("storage: in-memory SQLite cannot be shared or resumed; give a file, e.g. sqlite:///hpo.db")
    return parsed


def sqlite_path(url: str) -> Path | None:
    parsed = parse_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" else None


def _where(parsed: URL) -> str:
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return f"{parsed.host or 'localhost'}:{parsed.port or 'default port'}/{parsed.database or ''}"


def application_name() -> str:
    return f"hpo-{os.getpid()}"


def _connect_args(parsed: URL) -> dict[str, object]:
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"timeout": SQLITE_BUSY_TIMEOUT}
    if backend == "postgresql":
        # Named per process, so an operator (or the soak test) can find one worker's connections.
        return {"connect_timeout": 5, "application_name": application_name()}
    if backend == "mysql":
        return {"connect_timeout": 5}
    return {}


def check_reachable(url: str) -> None:
    """Fail fast, before any write, if the database cannot be used.

    SQLite is checked without connecting, because connecting creates the file.
    """
    parsed = parse_url(url)
    path = sqlite_path(url)
    if path is not None:
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise StorageError(f"storage: folder {folder} for the SQLite file does not exist")
        return
    try:
        engine = create_engine(parsed, connect_args=_connect_args(parsed))
        with engine.connect():
            pass
        engine.dispose()
    except (SQLAlchemyError, ImportError, OSError) as exc:
        raise StorageError(f"storage: cannot connect to {_where(parsed)}: {_reason(exc, url)}") from None


def existing_direction(url: str, study_name: str) -> str | None:
    """The direction of an existing study of that name, read without creating anything."""
    parsed = parse_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = create_engine(parsed, connect_args=_connect_args(parsed))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("studies") or not inspect(conn).has_table("study_directions"):
                return None
            row = conn.execute(
                text(
                    "SELECT d.direction FROM studies s JOIN study_directions d ON d.study_id = s.study_id "
                    "WHERE s.study_name = :name ORDER BY d.objective"
                ),
                {"name": study_name},
            ).first()
    except SQLAlchemyError as exc:
        raise StorageError(f"storage: cannot read {_where(parsed)}: {_reason(exc, url)}") from None
    finally:
        engine.dispose()
    if row is None:
        return None
    return str(row[0]).lower().replace("studydirection.", "")


def check_direction(url: str, study_name: str, direction: str) -> None:
    """Refuse to join a study of the same name that optimises the other way."""
    existing = existing_direction(url, study_name)
    if existing is not None and existing != direction:
        raise StorageError(
            f"study {study_name!r} already exists in {mask_url(url)} with direction {existing}, "
            f"but this study file's metric needs {direction}; choose another name"
        )


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback=None,
):
    """An Optuna RDBStorage tuned for several workers sharing one database."""
    parsed = parse_url(url)
    engine_kwargs: dict[str, object] = {"connect_args": _connect_args(parsed)}
    if parsed.get_backend_name() == "sqlite":
        _enable_wal(sqlite_path(url))
    else:
        # Survive dropped idle connections and short server restarts.
        # At most two pooled connections per worker (the trial thread and the
        # heartbeat), plus one for the study lock while claiming.
        engine_kwargs.update(pool_pre_ping=True, pool_size=1, max_overflow=1, pool_timeout=30, pool_recycle=1800)
    from hpo.resilient import ResilientRDBStorage, call_with_retries

    def create() -> ResilientRDBStorage:
        return ResilientRDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )

    try:
        store = call_with_retries(create, f"opening {_where(parsed)}", mask=lambda text: mask_text(text, url))
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"storage: cannot open {_where(parsed)}: {_reason(exc, url)}") from None
    store.mask = lambda text: mask_text(text, url)
    return store


def _enable_wal(path: Path | None) -> None:
    """WAL lets readers (status, dashboard) run while a worker writes."""
    import sqlite3

    if path is None:
        return
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def _lock_key(study_name: str) -> int:
    digest = hashlib.sha256(f"hpo-budget:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LockLost(Exception):
    """The study lock's connection dropped while a worker held it.

    PostgreSQL releases an advisory lock with the connection that took it, so
    another worker may have counted and claimed meanwhile: the claim made under
    it must be checked again before it is trusted.
    """

    transient = True  # a claim that made nothing under it may simply be tried again


class StudyLock:
    """Mutual exclusion across every worker of a study, on any machine.

    Claiming a trial (count what is finished or running, then ask for a new
    one) must be atomic, or parallel workers overshoot the budget. PostgreSQL
    gives us advisory locks on a connection of their own; SQLite is one file on
    one machine, so a file lock beside it does the same job. ``release`` tells
    whether the lock was held all along: an unlock that fails or finds nothing
    to unlock means the connection, and with it the lock, was lost.
    """

    def __init__(self, url: str, study_name: str):
        self.url = url
        self.backend = parse_url(url).get_backend_name()
        self.key = _lock_key(study_name)
        self._handle = None
        self._conn = None

    def acquire(self) -> None:
        if self.backend == "sqlite":
            self._handle = open(str(sqlite_path(self.url)) + ".hpo.lock", "a+")
            fcntl.flock(self._handle, fcntl.LOCK_EX)
            return
        self._conn = _lock_engine(self.url).connect()
        try:
            if self.backend == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            else:
                self._conn.execute(text("SELECT GET_LOCK(:k, 3600)"), {"k": str(self.key)})
            self._conn.commit()
        except BaseException:
            self._close()
            raise

    def release(self) -> bool:
        if self.backend == "sqlite":
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            return True
        try:
            if self.backend == "postgresql":
                held = self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key}).scalar()
            else:
                held = self._conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": str(self.key)}).scalar()
            self._conn.commit()
            return bool(held)
        except SQLAlchemyError:
            return False
        finally:
            self._close()

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend holding the lock (for tests that drop its connection)."""
        if self._conn is None or self.backend != "postgresql":
            return None
        return self._conn.connection.dbapi_connection.info.backend_pid

    def _close(self) -> None:
        try:
            self._conn.close()
        except SQLAlchemyError:
            pass
        self._conn = None


@contextlib.contextmanager
def budget_lock(url: str, study_name: str) -> Iterator[StudyLock]:
    """Hold the study's lock; raise ``LockLost`` at the end if it was lost on the way."""
    lock = StudyLock(url, study_name)
    lock.acquire()
    try:
        yield lock
    except BaseException:
        lock.release()
        raise
    if not lock.release():
        raise LockLost(f"the study lock's connection to {_where(parse_url(url))} was lost while held")


_LOCK_ENGINES: dict[str, object] = {}


def _lock_engine(url: str):
    if url not in _LOCK_ENGINES:
        parsed = parse_url(url)
        # No pool: the lock's connection is open only while a worker claims a trial.
        _LOCK_ENGINES[url] = create_engine(parsed, connect_args=_connect_args(parsed), poolclass=NullPool)
    return _LOCK_ENGINES[url]
