"""The Optuna internals hpo relies on (hpo/optuna_compat.py) still exist, with the shapes we use.

If one of these fails after an Optuna upgrade, do not patch the test: fix
hpo/optuna_compat.py (and the retries in hpo/resilient.py) for the new version.
"""

from __future__ import annotations

import inspect

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models

from hpo import optuna_compat as compat
from hpo.resilient import DELEGATING, ResilientRDBStorage


def _params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize(
    "name, params",
    [
        ("_create_new_trial", ["self", "study_id", "template_trial"]),
        ("_get_prepared_new_trial", ["self", "study_id", "template_trial", "session"]),
        ("_set_trial_param", ["self", "trial_id", "param_name", "param_value_internal", "distribution", "previous_distribution"]),
        ("_get_stale_trial_ids", ["self", "study_id"]),
        ("_get_trials", ["self", "study_id", "states", "included_trial_ids", "trial_id_greater_than"]),
        ("_get_best_trial_id", ["self", "study_id", "direction"]),
        ("set_trial_state_values", ["self", "trial_id", "state", "values"]),
        ("record_heartbeat", ["self", "trial_id"]),
        ("get_trial_param", ["self", "trial_id", "param_name"]),
        ("get_all_trials", ["self", "study_id", "deepcopy", "states"]),
        ("create_new_trial", ["self", "study_id", "template_trial"]),
        ("set_trial_param", ["self", "trial_id", "param_name", "param_value_internal", "distribution"]),
    ],
)
def test_rdb_storage_methods_we_wrap_keep_their_signatures(name, params):
    assert _params(getattr(RDBStorage, name)) == params


def test_every_backend_call_of_optunas_cache_is_retried():
    """A Study wraps our RDBStorage in _CachedStorage, which calls some private methods:
    each must be one our retrying storage covers, or an outage there loses work."""
    retried = set(compat.rdb_methods_to_retry())
    missing = compat.cache_backend_calls() - retried
    assert not missing, f"_CachedStorage calls backend methods hpo does not retry: {sorted(missing)}"
    for name in retried - set(DELEGATING):
        assert getattr(ResilientRDBStorage, name) is not getattr(RDBStorage, name), name
    for public, private in DELEGATING.items():  # left unwrapped because they only call a wrapped one
        assert f"self.{private}(" in inspect.getsource(getattr(RDBStorage, public)), public


def test_the_attributes_we_read_exist(tmp_path):
    storage = ResilientRDBStorage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=5, grace_period=10)
    study = optuna.create_study(storage=storage, study_name="compat")
    assert isinstance(compat.storage_of(study), _CachedStorage)
    assert compat.backend_of(study) is storage
    assert compat.study_id(study) == storage.get_study_id_from_name("compat")
    tid = compat.storage_of(study).create_new_trial(compat.study_id(study))
    trial = compat.new_trial(study, tid)
    assert compat.trial_id(trial) == tid and compat.trial_id(study.trials[0]) == tid
    assert hasattr(study, "_thread_local") and hasattr(study._thread_local, "cached_all_trials")
    assert compat.stale_trial_ids(storage, compat.study_id(study)) == []
    assert "heartbeat" in {c.name for c in models.TrialHeartbeatModel.__table__.columns}
    assert {"_backend"} <= set(vars(_CachedStorage(storage)))


def test_a_new_trial_is_born_with_a_heartbeat(tmp_path):
    """hpo's ownership rule rests on this override of a private method."""
    storage = ResilientRDBStorage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=5, grace_period=10)
    study = optuna.create_study(storage=storage, study_name="born")
    tid = compat.storage_of(study).create_new_trial(compat.study_id(study))
    with storage.scoped_session() as session:
        assert session.query(models.TrialHeartbeatModel).filter_by(trial_id=tid).count() == 1


def test_the_heartbeat_warning_we_silence_is_still_worded_so():
    import optuna.study.study as study_module

    assert compat.HEARTBEAT_ASK_WARNING in inspect.getsource(study_module)
    assert "fail_stale_trials" in dir(optuna.storages)
    assert "_get_stale_trial_ids" in inspect.getsource(optuna.storages.fail_stale_trials)


def test_a_study_user_attribute_reads_by_name_without_a_storage(tmp_path):
    """hpo/resume.py compares a study file with the spec stored on the study before anything is written."""
    from sqlalchemy import create_engine, inspect as inspect_db

    url = f"sqlite:///{tmp_path / 'attrs.db'}"
    optuna.create_study(study_name="kept", storage=url).set_user_attr("spec", {"metric": "f1"})
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert inspect_db(conn).has_table(compat.STUDY_USER_ATTRS_TABLE)
            assert conn.execute(compat.study_user_attr_select("kept", "spec")).scalar_one() == '{"metric": "f1"}'
            assert conn.execute(compat.study_user_attr_select("other", "spec")).first() is None
    finally:
        engine.dispose()
