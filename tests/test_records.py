"""Records on a study: written, read back through a real SQLite study, refused in one line when unreadable."""

from __future__ import annotations

import optuna
import pytest

from hpo.errors import UserError
from hpo.records import LostResult, LostResults, RetrainRecord, StudyFacts, TrialRecord, keep_lost_result

TRIAL = dict(
    wall_seconds=3.5, train_seconds=2.0, eval_seconds=0.5, examples_seen=320, examples_per_second=160.0,
    train_loss=0.41, trainable_parameters=1000, trainable_fraction=0.25, device="cpu", precision="fp32",
    peak_memory_mb=812.3, stopped_early=False, best_examples=160, best_epoch=1.0,
    best_metrics={"accuracy": 0.75, "loss": 0.5}, curve={"examples": [160, 320], "accuracy": [0.75, 0.7], "loss": [0.5, 0.6]},
)

FACTS = dict(
    label_names=["neg", "pos"], label2id={"neg": 0, "pos": 1}, train_examples=160, validation_examples=48,
    rows_dropped={"train": 0}, data_report={"warnings": []}, class_weights=None, model_depth=2,
    model_parameters=4000, device="cpu", precision="fp32",
)

RETRAIN = {
    "run_id": "abc",
    "plan": {"top_k": 1, "seeds": [0, 1], "train_on": "train+validation", "study_seed": 0, "candidates": [0], "home": "/m"},
    "metric": "accuracy",
    "winner": {"trial": 0, "params": {"learning_rate": 1e-4, "batch_size": 16, "optimizer": "adamw"},
               "training_params": {"learning_rate": 1e-4, "dropout": None}, "search_value": 0.75,
               "validation_mean": 0.75, "validation_std": 0.0, "best_epoch": 1.0},
    "selection": [{"trial": 0, "params": {"learning_rate": 1e-4}, "search_value": 0.75,
                   "runs": [{"seed": 0, "value": 0.75, "best_epoch": None, "from_search": True}], "mean": 0.75, "std": 0.0}],
    "trained_on": {"split": "train+validation", "examples": 208},
    "seeds": [{"seed": 0, "test": {"accuracy": 0.8}, "validation": None, "examples_seen": 208, "epochs": 1.0, "seconds": 2.5}],
    "test": {"examples": 48, "mean": {"accuracy": 0.8}, "std": {"accuracy": 0.0}},
    "model": {"seed": 0, "path": "/m/model", "host": "here"},
    "finished_at": "2026-01-01T00:00:00+00:00",
    "wall_seconds": 12.5,
}


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def _reloaded(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="records", storage=storage)


def _one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_trial_record_round_trips_and_a_trial_without_one_reads_none(storage):
    study = optuna.create_study(study_name="records", storage=storage)
    trial = study.ask()
    TrialRecord(**TRIAL).write(trial)
    trial.set_user_attr("fail_reason", "other attributes are not part of the record")
    study.tell(trial, 0.75)
    bare = study.ask()
    bare.set_user_attr("examples_seen", 12)  # progress notes of a trial that never finished training
    study.tell(bare, state=optuna.trial.TrialState.FAIL)

    first, second = _reloaded(storage).get_trials()
    record = TrialRecord.of(first)
    assert record == TrialRecord(**TRIAL)
    assert first.user_attrs["record_version"] == 1 and first.user_attrs["best_epoch"] == 1.0  # one attribute per field
    assert "adapter" not in first.user_attrs  # unset optional fields are not written
    assert TrialRecord.of(second) is None


def test_an_old_trial_record_without_a_version_reads_as_version_1_and_an_unknown_one_is_refused(storage):
    study = optuna.create_study(study_name="records", storage=storage)
    old, future, broken = study.ask(), study.ask(), study.ask()
    partial = {k: v for k, v in TRIAL.items() if k not in ("best_examples", "best_epoch", "best_metrics", "curve")}
    for key, value in partial.items():  # as hpo wrote trials before records had versions
        old.set_user_attr(key, value)
    TrialRecord(**TRIAL).write(future)
    future.set_user_attr("record_version", 7)
    TrialRecord(**TRIAL).write(broken)
    broken.set_user_attr("examples_seen", "many")
    old, future, broken = _reloaded(storage).get_trials()

    assert TrialRecord.of(old) == TrialRecord(**partial)
    with pytest.raises(UserError) as exc:
        TrialRecord.of(future)
    _one_line(exc, "trial #1's record was written by another hpo version (schema_version 7; this hpo reads 1)")
    with pytest.raises(UserError) as exc:
        TrialRecord.of(broken)
    _one_line(exc, "trial #2's record is not a valid trial record (examples_seen: ")


def test_study_facts_round_trip_as_one_attribute_each(storage):
    study = optuna.create_study(study_name="records", storage=storage)
    assert StudyFacts.of(study) is None
    StudyFacts(**FACTS).write(study)
    reloaded = _reloaded(storage)
    assert StudyFacts.of(reloaded) == StudyFacts(**FACTS)
    assert reloaded.user_attrs["label2id"] == {"neg": 0, "pos": 1} and reloaded.user_attrs["facts_version"] == 1
    reloaded.set_user_attr("facts_version", 2)
    with pytest.raises(UserError) as exc:
        StudyFacts.of(_reloaded(storage))
    _one_line(exc, "the facts record of study 'records' was written by another hpo version (schema_version 2;", "`hpo launch`")


def test_the_retrain_record_round_trips_and_another_version_is_refused_in_one_line(storage):
    study = optuna.create_study(study_name="records", storage=storage)
    assert RetrainRecord.of(study) is None
    written = RetrainRecord.read(RETRAIN, "the test's record")  # written before versions: read as version 1
    study.set_user_attr("retrain", written.dump())
    record = RetrainRecord.of(_reloaded(storage))
    assert record == written and record.dump() == {"schema_version": 1, **RETRAIN}
    assert record.winner.params == {"learning_rate": 1e-4, "batch_size": 16, "optimizer": "adamw"}
    assert isinstance(record.winner.params["batch_size"], int)  # parameter types survive the round trip

    study.set_user_attr("retrain", {**RETRAIN, "schema_version": 7})
    with pytest.raises(UserError) as exc:
        RetrainRecord.of(_reloaded(storage))
    assert _one_line(exc) == ("study attribute 'retrain' was written by another hpo version "
                              "(schema_version 7; this hpo reads 1): run `hpo retrain --force`")
    study.set_user_attr("retrain", {**RETRAIN, "winner": {"trial": 0}})
    with pytest.raises(UserError) as exc:
        RetrainRecord.of(_reloaded(storage))
    _one_line(exc, "study attribute 'retrain' is not a valid retrain record (winner.params: Field required", "--force")


def test_lost_results_are_kept_beside_those_written_before_versions(storage):
    study = optuna.create_study(study_name="records", storage=storage)
    assert LostResults.of(study).trials == {}
    study.set_user_attr("lost_results", {"0": {"value": 0.5, "params": {"learning_rate": 0.001}}})  # the old shape
    keep_lost_result(study, 3, LostResult(value=0.75, params={"learning_rate": 0.01, "batch_size": 8}))
    lost = LostResults.of(_reloaded(storage))
    assert {n: r.value for n, r in lost.trials.items()} == {0: 0.5, 3: 0.75}
    assert lost.trials[3].params == {"learning_rate": 0.01, "batch_size": 8}
