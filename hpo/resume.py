"""What a study file may change once its study exists, and finding what it did change.

A study's trials mean something only under the spec they ran with: their value
is the stored metric, their parameters were drawn from the stored space, their
data was the stored data. A resumed launch may change how much more to run and
how (budget, timeouts, heartbeat, threads, sampler, the pruner's options,
retrain settings, the test split that only retrain reads); anything that gives
the existing trials another meaning is refused, so that status and export never
rank one metric as another and no best trial lies outside the space.

The stored spec is the study's ``spec`` user attribute, written by every
launch (see hpo/cli/launch.py ``study_attributes``); it is read here with one
SELECT on Optuna's tables (hpo/optuna_compat.py), before anything is written.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from hpo import optuna_compat, storage
from hpo.errors import StorageError
from hpo.spec import StudySpec

# Dotted paths (or prefixes ending in ".") a resumed launch may change.
MAY_CHANGE = (
    "n_trials", "timeout", "trial_timeout", "retrain.", "heartbeat.", "runtime.num_threads", "runtime.device",
    "runtime.gradient_checkpointing",  # memory against time; the same weights
    "sampler.", "pruner.", "evaluation.batch_size", "data.test",
    "checkpoints", "checkpoints.",  # where and how often running trials are saved; not what they compute
)
# ...except these, which the rule above would let through.
MAY_NOT_CHANGE = ("pruner.metric",)
# Fields holding a file or folder: resolved to absolute paths, which differ between the machines of
# one fleet (the same checkout in another place); they count as changed when the file name does.
PATHS = ("data.train", "data.validation", "data.test", "model")
# The study's identity (a copied study keeps its source's spec), not a setting.
IGNORED = ("name",)
_ABSENT = object()


def may_change(path: str) -> bool:
    if any(path == p or path.startswith(p + ".") for p in MAY_NOT_CHANGE):
        return False
    return any(path == p or (p.endswith(".") and path.startswith(p)) for p in MAY_CHANGE)


def stored_spec(url: str, study_name: str) -> dict[str, Any] | None:
    """The spec stored on an existing study, or None (no such study, or launched by an hpo that stored none)."""
    parsed = storage.parse_url(url)
    path = storage.sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = create_engine(parsed)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(optuna_compat.STUDY_USER_ATTRS_TABLE):
                return None
            row = conn.execute(optuna_compat.study_user_attr_select(study_name, "spec")).first()
    except SQLAlchemyError as exc:
        raise StorageError(f"storage: cannot read {storage.mask_url(url)}: {storage.first_line(exc)}") from None
    finally:
        engine.dispose()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaves; a search-space dimension is one leaf, so a change names the dimension once."""
    if isinstance(value, dict) and value and not prefix.startswith("search_space."):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _show(value: Any) -> str:
    """A value as the study file would write it; a dimension without its defaults (log: false, step: null)."""
    if value is _ABSENT:
        return "absent"
    if isinstance(value, dict):
        shown = {k: v for k, v in value.items() if v is not None and v is not False}
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in shown.items()) + "}"
    return value if isinstance(value, str) else json.dumps(value)


def _same(path: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if path in PATHS and isinstance(old, str) and isinstance(new, str) and "/" in old + new:
        return PurePath(old).name == PurePath(new).name
    return False


def _distribution(dim: Any) -> tuple | None:
    """How Optuna records a dimension: kind, log scale and choices; None for a fixed value (never suggested)."""
    if isinstance(dim, dict) and "choices" in dim:
        return ("categorical", None, json.dumps(dim["choices"]))
    if isinstance(dim, dict) and "low" in dim:
        ints = all(isinstance(dim.get(k), int) and not isinstance(dim.get(k), bool) for k in ("low", "high"))
        return ("int" if ints else "float", bool(dim.get("log")), None)
    return None


def optuna_refuses(line_path: str, stored: dict[str, Any], spec: StudySpec) -> bool:
    """A dimension Optuna cannot change within a study (other choices, kind or log scale): trials would fail."""
    if not line_path.startswith("search_space."):
        return False
    name = line_path.split(".", 1)[1]
    before = _distribution((stored.get("search_space") or {}).get(name))
    after = _distribution(spec.model_dump(mode="json")["search_space"].get(name))
    return before is not None and after is not None and before != after


def _at(document: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(document, dict) or key not in document:
            return _ABSENT
        document = document[key]
    return document


def _ancestor(path: str, flat: dict[str, Any]) -> str | None:
    """The shortest prefix of ``path`` that is a leaf on the other side (a section that was null, say)."""
    parts = path.split(".")
    return next((".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in flat), None)


def changes(stored: dict[str, Any], spec: StudySpec) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes between the stored spec and this one, each as 'path: old -> new'.

    A key only one side has, outside the search space, is a difference between
    hpo versions (a setting added since the study was launched), not a change
    the user made, unless the other side has a value above it (a section that
    was null and now is set). A dimension added to or removed from the search
    space is a change.
    """
    current = spec.model_dump(mode="json", exclude={"storage"})
    old, new = _flatten(stored), _flatten(current)
    found: dict[str, tuple[Any, Any]] = {}
    for path in sorted((set(old) | set(new)) - set(IGNORED)):
        before, after = old.get(path, _ABSENT), new.get(path, _ABSENT)
        if (before is _ABSENT or after is _ABSENT) and not path.startswith("search_space."):
            above = _ancestor(path, old if before is _ABSENT else new)
            if above is None:
                continue
            path, before, after = above, _at(stored, above), _at(current, above)
        if not _same(path, before, after):
            found[path] = (before, after)
    refused, allowed = [], []
    for path, (before, after) in found.items():
        (allowed if may_change(path) else refused).append(f"{path}: {_show(before)} -> {_show(after)}")
    return refused, allowed
