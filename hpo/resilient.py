"""Riding out database outages: retries with backoff around every storage call.

A PostgreSQL restart of a fraction of a second is enough to make a plain
Optuna worker lose a finished trial. Retrying at the storage itself, rather
than at each call site, covers everything a worker does: claiming, the
objective's ``report``/``should_prune``/``set_user_attr``, heartbeats and
``tell``. Only connection-level failures are retried; a real error (a
constraint, bad data) surfaces at once.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
import uuid
from datetime import datetime
from typing import Callable, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from hpo import optuna_compat as compat

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
    # Two processes creating a fresh SQLite database's schema at once: the loser's version stamp collides
    # with the winner's; opened again, it finds the schema made.
    "unique constraint failed: alembic_version",
)


def is_transient(exc: BaseException) -> bool:
    """A failure that waiting can cure: lost connection, server restarting, pool or lock busy."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageError):  # a retry that already ran out of patience: do not nest another
            return False
        if getattr(exc, "transient", False):  # e.g. storage.LockLost
            return True
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
    """RDBStorage whose calls retry through short database outages.

    A failure can come after the database committed (a connection lost during
    the commit's reply), so only idempotent calls are retried blindly; the others
    look for their own effect before they try again (see ``_create_new_trial``,
    ``set_trial_state_values``, ``_set_trial_param``).
    """

    patience: float = DEFAULT_PATIENCE
    mask: Callable[[str], str] = staticmethod(str)

    def _attempt(self, name: str, args: tuple, kwargs: dict):
        """One real call of an RDBStorage method: the seam fault-injection tests wrap."""
        return getattr(RDBStorage, name)(self, *args, **kwargs)

    def _retry(self, name: str, action: Callable[[], T]) -> T:
        return call_with_retries(action, name, self.patience, self.mask)

    def _checked(self, name: str, args: tuple, kwargs: dict, effect: Callable[[], tuple[bool, object]]):
        """Retry a call that may have taken effect before it failed: after a failure, ``effect()``
        says whether it did (and what the call would have returned) before the call is made again."""
        state = {"failed": False}

        def action():
            if state["failed"]:
                done, result = effect()
                if done:
                    return result
            try:
                return self._attempt(name, args, kwargs)
            except Exception:
                state["failed"] = True
                raise

        return self._retry(name, action)

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Each new trial carries a claim token, so a creation whose commit is in doubt is found
        again rather than made twice (a twin RUNNING trial would hold a budget slot for ever)."""
        token = uuid.uuid4().hex
        template = _with_token(template_trial, token)

        def effect():
            found = next((t for t in RDBStorage.get_all_trials(self, study_id, deepcopy=False) if t.system_attrs.get(CLAIM_TOKEN) == token), None)
            return found is not None, found

        return self._checked("_create_new_trial", (study_id, template), {}, effect)

    def _get_prepared_new_trial(self, study_id, template_trial, session):
        """A new RUNNING trial gets its heartbeat in the transaction that creates it: it is owned
        from the instant it exists, and becomes stale (and is retried) if its worker dies at once."""
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        if self.heartbeat_interval and compat.running_state(trial):
            compat.add_heartbeat_row(session, trial)
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        """In doubt, the trial's state tells whether the change happened. A trial found RUNNING
        after an attempt to start it is ours: hpo takes waiting trials only under the study lock."""

        def effect():
            now = RDBStorage.get_trial(self, trial_id)
            if now.state != state:
                return False, None
            if values is not None and list(now.values or []) != [float(v) for v in values]:
                return False, None
            return True, True

        return self._checked("set_trial_state_values", (trial_id, state, values), {}, effect)

    def _set_trial_param(self, trial_id, param_name, param_value_internal, distribution, previous_distribution):
        def effect():
            try:
                return RDBStorage.get_trial_param(self, trial_id, param_name) == param_value_internal, None
            except KeyError:
                return False, None

        args = (trial_id, param_name, param_value_internal, distribution, previous_distribution)
        return self._checked("_set_trial_param", args, {}, effect)


CLAIM_TOKEN = "hpo:claim"


def _with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    if template is None:
        return FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={CLAIM_TOKEN: token},
            intermediate_values={}, trial_id=-1,
        )
    stamped = copy.deepcopy(template)
    stamped.system_attrs = {**stamped.system_attrs, CLAIM_TOKEN: token}
    return stamped


def _retrying(name: str):
    def wrapper(self, *args, **kwargs):
        return self._retry(name, lambda: self._attempt(name, args, kwargs))

    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


_EFFECT_CHECKED = ("_create_new_trial", "set_trial_state_values", "_set_trial_param")
# Public methods that only call a private one already covered: wrapping both would nest retries.
DELEGATING = {"create_new_trial": "_create_new_trial", "set_trial_param": "_set_trial_param"}
for _name in compat.rdb_methods_to_retry():
    if _name not in _EFFECT_CHECKED and _name not in DELEGATING:
        setattr(ResilientRDBStorage, _name, _retrying(_name))


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
