"""Every Optuna internal hpo relies on, in one place.

Optuna's public API has no way to name a trial's database row, to find a
study's storage, to own a trial from the instant it exists, or to retry the
private methods its own storage cache calls. Each such reach below the
surface is a function here, and tests/test_optuna_compat.py checks that the
names and signatures still exist, so an Optuna upgrade that moves them fails
one test loudly instead of a worker quietly.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import optuna
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models as rdb_models
from optuna.trial import FrozenTrial

# Private RDBStorage methods that Optuna's _CachedStorage (what a Study wraps an
# RDBStorage in) calls instead of the public ones; retries must cover them too.
CACHE_CALLS_PRIVATE = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids")

# Messages of warnings Optuna gives about APIs hpo uses on purpose.
HEARTBEAT_ASK_WARNING = "Heartbeat of storage is supposed to be used"


def storage_of(study: optuna.Study):
    """The storage a study talks to (Optuna's cache around our RDBStorage)."""
    return study._storage


def backend_of(study: optuna.Study) -> RDBStorage:
    """The RDBStorage below Optuna's cache."""
    store = study._storage
    return store._backend if isinstance(store, _CachedStorage) else store


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's row id, which storage methods take (trial.number is per study)."""
    return trial._trial_id


def new_trial(study: optuna.Study, tid: int) -> optuna.Trial:
    """A live Trial for a row this worker created or popped itself (what ``Study.ask`` returns),
    after dropping the study's per-thread trial cache as ``ask`` does, so the sampler sees every
    trial finished since the last one."""
    study._thread_local.cached_all_trials = None
    return optuna.Trial(study, tid)


def stale_trial_ids(storage: RDBStorage, sid: int) -> list[int]:
    """RUNNING trials whose heartbeat is older than the grace period (what ``fail_stale_trials`` fails)."""
    return storage._get_stale_trial_ids(sid)


def add_heartbeat_row(session, trial_model) -> None:
    """Give a new RUNNING trial its heartbeat inside the transaction that creates it, so no
    instant exists in which the trial is RUNNING but invisible to the stale-trial check."""
    session.add(rdb_models.TrialHeartbeatModel(trial_id=trial_model.trial_id))


def running_state(trial_model) -> bool:
    return trial_model.state == optuna.trial.TrialState.RUNNING


def rdb_methods_to_retry() -> dict[str, Callable[..., Any]]:
    """The RDBStorage methods a worker calls (public ones and the cache's private ones)."""
    methods = {
        name: method
        for name, method in vars(RDBStorage).items()
        if callable(method) and not name.startswith("_") and name not in ("upgrade", "remove_session")
    }
    methods.update({name: getattr(RDBStorage, name) for name in CACHE_CALLS_PRIVATE})
    return methods


def cache_backend_calls() -> set[str]:
    """The backend methods Optuna's cache calls, read from its source (for the compat test)."""
    return set(re.findall(r"self\._backend\.(\w+)\(", inspect.getsource(_CachedStorage)))


# Seams hpo overrides in its RDBStorage subclass; the compat test checks their signatures.
PREPARED_NEW_TRIAL = "_get_prepared_new_trial"  # (self, study_id, template_trial, session) -> TrialModel


def study_user_attr_select(study_name: str, key: str):
    """A SELECT of one study user attribute's JSON text by study name: read without an RDBStorage,
    which would create or upgrade the schema (a check before anything is written must not)."""
    from sqlalchemy import select

    attrs, studies = rdb_models.StudyUserAttributeModel, rdb_models.StudyModel
    return (select(attrs.value_json).join(studies, studies.study_id == attrs.study_id)
            .where(studies.study_name == study_name, attrs.key == key))


STUDY_USER_ATTRS_TABLE = rdb_models.StudyUserAttributeModel.__tablename__
