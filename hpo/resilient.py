"""Riding out database outages: retries with backoff around every storage call.

A PostgreSQL restart of a fraction of a second is enough to make a plain
Optuna worker lose a finished trial. Retrying at the storage itself, rather
than at each call site, covers everything a worker does: claiming, the
objective's ``report``/``should_prune``/``set_user_attr``, heartbeats and
``tell``. Only connection-level failures are retried; a real error (a
constraint, bad data) surfaces at once.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Callable, TypeVar

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import exc as sa_exc

from hpo.errors import StorageError
from hpo.storage import first_line

log = logging.getLogger("hpo.storage")

T = TypeVar("T")

# How long a worker keeps retrying before it gives up on the database. Longer
# than a routine restart, shorter than the heartbeat grace period, so a worker
# that cannot reach the database stops before others declare its trial dead.
DEFAULT_PATIENCE = float(os.environ.get("HPO_DB_PATIENCE", "30"))

_TRANSIENT_MARKERS = (
    "connection", "server closed", "terminating", "shutting down", "could not connect", "starting up",
    "too many clients", "database is locked", "timeout", "broken pipe", "reset by peer",
)


def is_transient(exc: BaseException) -> bool:
    """A failure that waiting can cure: lost connection, server restarting, pool or lock busy."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, sa_exc.TimeoutError):  # pool exhausted
            return True
        if isinstance(exc, (sa_exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError)):
            if any(marker in str(exc).lower() for marker in _TRANSIENT_MARKERS):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def call_with_retries(action: Callable[[], T], what: str, patience: float = DEFAULT_PATIENCE, mask: Callable[[str], str] = str) -> T:
    """Run ``action``, retrying transient database failures with exponential backoff."""
    deadline = time.monotonic() + patience
    wait = 0.1
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient just below
            if not is_transient(exc):
                raise
            if time.monotonic() + wait > deadline:
                reason = mask(first_line(exc))
                hint = ""
                if "too many" in reason.lower():
                    hint = "; each worker holds at most 3 connections: run fewer workers or raise max_connections"
                raise StorageError(f"storage: {what} failed for {patience:.0f}s: {reason}{hint}") from None
            if attempt == 1 or attempt % 5 == 0:
                log.warning("database unavailable during %s (%s); retrying", what, mask(first_line(exc)))
            time.sleep(wait)
            wait = min(wait * 2, 2.0)


class ResilientRDBStorage(RDBStorage):
    """RDBStorage whose public methods retry through short database outages."""

    patience: float = DEFAULT_PATIENCE
    mask: Callable[[str], str] = staticmethod(str)


def _retrying(name: str, method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return call_with_retries(lambda: method(self, *args, **kwargs), name, self.patience, self.mask)

    return wrapper


for _name, _method in list(vars(RDBStorage).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("upgrade", "remove_session"):
        setattr(ResilientRDBStorage, _name, _retrying(_name, _method))
# fail_stale_trials calls this private method; it reads only, so retrying is safe.
ResilientRDBStorage._get_stale_trial_ids = _retrying("_get_stale_trial_ids", RDBStorage._get_stale_trial_ids)


def _tolerating_finished(name: str, method):
    """Writes a trial makes about itself while running, made harmless once the trial was
    finished by someone else (another worker judged it dead during a long pause). The
    objective runs on, and the runner keeps its result in the study's ``lost_results``
    instead of letting the first ``report`` after the pause throw the work away."""

    @functools.wraps(method)
    def wrapper(self, trial_id, *args, **kwargs):
        try:
            return method(self, trial_id, *args, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial id %s was finished by another worker; its result will be kept in lost_results", trial_id)
            return None

    return wrapper


for _name in ("set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr"):
    setattr(ResilientRDBStorage, _name, _tolerating_finished(_name, getattr(ResilientRDBStorage, _name)))
