"""``task: text-regression`` end to end on the tiny BERT: numeric labels, MSE, rmse/mae/r2/spearman."""

from __future__ import annotations

import random

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import FILLER, NEGATIVE, POSITIVE, hpo, study_dict, write_csv
from hpo.retrain import recorded

pytestmark = pytest.mark.slow


def scored_sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """Three sentiment words each; the score is how many are positive (0-3), as a number."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positives = rng.randint(0, 3)
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE, positives) + rng.sample(NEGATIVE, 3 - positives)
        rng.shuffle(words)
        rows.append((" ".join(words), f"{positives:.1f}"))
    return rows


@pytest.fixture
def regression_files(tmp_path):
    header = ("text", "score")
    return {
        "train": write_csv(tmp_path / "train.csv", scored_sentences(160, 1), header),
        "validation": write_csv(tmp_path / "validation.csv", scored_sentences(48, 2), header),
        "test": write_csv(tmp_path / "test.csv", scored_sentences(48, 3), header),
    }


def test_regression_launches_and_reports_every_metric(tmp_path, tiny_model, regression_files):
    study = study_dict(tiny_model, regression_files, name="sts", task="text-regression", metric="spearman", n_trials=3,
                       storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    study["data"]["label_column"] = "score"
    study["search_space"].update({"learning_rate": {"low": 3.0e-3, "high": 1.0e-2, "log": True}, "epochs": 2, "freeze_depth": 0})
    path = tmp_path / "sts.yaml"
    path.write_text(yaml.safe_dump(study))

    validated = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "spearman (maximize)" in validated.stdout
    assert "labels    train: min 0" in validated.stdout  # a numeric summary, not classes

    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    loaded = optuna.load_study(study_name="sts", storage=study["storage"])
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE
    best = loaded.best_trial
    assert set(best.user_attrs["best_metrics"]) == {"rmse", "mae", "r2", "spearman", "loss"}
    assert best.value > 0.5, best.user_attrs["best_metrics"]  # ranks pairs by score far better than chance
    assert best.user_attrs["best_metrics"]["loss"] == pytest.approx(best.user_attrs["best_metrics"]["rmse"] ** 2, rel=1e-3)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in loaded.trials)
    assert loaded.user_attrs["data_report"]["splits"]["train"]["used"] == 160

    retrained = hpo("retrain", str(path), "--seeds", "0", cwd=tmp_path)
    assert retrained.returncode == 0, retrained.stderr
    record = recorded(optuna.load_study(study_name="sts", storage=study["storage"]))
    assert {"spearman", "rmse"} <= set(record.test.mean), record.test


def test_non_numeric_label_is_a_user_error(tmp_path, tiny_model, regression_files):
    bad = write_csv(tmp_path / "bad.csv", scored_sentences(20, 5) + [("good tea", "high")], ("text", "score"))
    study = study_dict(tiny_model, {**regression_files, "train": bad}, task="text-regression")
    study["data"]["label_column"] = "score"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert result.returncode == 2
    assert "must hold numbers for a regression task; the train split has 'high'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stalled_regression_trial_is_pruned_on_rmse(tmp_path, tiny_model, regression_files):
    """rmse is minimised: the pruner must see the trial that learns nothing as the worse one."""
    from hpo.runner import WorkerOptions, run_worker
    from hpo.spec import parse_spec
    from objectives import build

    study = study_dict(tiny_model, regression_files, task="text-regression", n_trials=2, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    study["data"]["label_column"] = "score"
    spec = parse_spec(study)
    assert (spec.metric, spec.direction) == ("rmse", "minimize")
    created = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="minimize")
    created.enqueue_trial({"learning_rate": 1e-2, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    # A learning rate this small leaves the new head near 0: rmse stays at the labels' root mean square.
    created.enqueue_trial({"learning_rate": 1e-9, "batch_size": 16, "epochs": 2, "freeze_depth": 2})
    run_worker(spec, build(spec), WorkerOptions())
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED], [t.intermediate_values for t in trials]


def test_a_lora_regression_study_trains_its_one_output_head(tmp_path, tiny_model, regression_files):
    """Adapters on the regression task: the one-output head trains in full beside the adapter."""
    from hpo.runner import WorkerOptions, run_worker
    from hpo.spec import parse_spec
    from objectives import build

    study = study_dict(tiny_model, regression_files, task="text-regression", n_trials=2, adapter={"type": "lora"},
                       storage=f"sqlite:///{tmp_path / 'hpo.db'}", sampler={"type": "random"}, pruner={"type": "none"})
    study["data"]["label_column"] = "score"
    study["search_space"] = {"learning_rate": {"low": 5e-3, "high": 2e-2}, "batch_size": 16, "epochs": 2,
                             "lora_r": {"choices": [4, 8]}, "lora_target": "all-linear"}
    spec = parse_spec(study)
    objective = build(spec)
    run_worker(spec, objective, WorkerOptions())
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    for trial in trials:
        assert trial.user_attrs["adapter"]["trained_head_modules"] == ["classifier"]
    assert max(t.user_attrs["best_metrics"]["r2"] for t in trials) > 0, "better than predicting the mean"
    assert objective.pretrained.model.classifier.out_features == 1
