"""A user's whole session, through the CLI: validate, launch, status, export, relaunch."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import hpo, write_csv

pytestmark = pytest.mark.slow


def _load(path, storage):
    name = yaml.safe_load(path.read_text())["name"]
    return optuna.load_study(study_name=name, storage=storage)


def test_launch_status_export_on_sqlite(make_study, tmp_path):
    path = make_study(name="e2e", n_trials=3)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"

    validated = hpo("validate", str(path), cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "learning_rate" in validated.stdout and "valid" in validated.stdout

    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    assert "3/3 finished" in launched.stdout

    study = _load(path, storage)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    best = study.best_trial
    # What a person wants to see on each trial is recorded.
    for key in ("examples_per_second", "wall_seconds", "trainable_parameters", "peak_memory_mb", "device", "best_examples", "train_loss"):
        assert key in best.user_attrs, key
    # Evaluation points are counted in examples, identical across batch sizes.
    steps = {tuple(sorted(t.intermediate_values)) for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(s[0] == 80 for s in steps), steps  # 160 train examples, two points per epoch
    assert study.user_attrs["label2id"] == {"neg": 0, "pos": 1}
    assert "storage" not in study.user_attrs["spec"]

    status = hpo("status", str(path), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "3/3 finished" in status.stdout and f"#{best.number}" in status.stdout

    exported = hpo("export", str(path), "-o", str(tmp_path / "best.yaml"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    best_file = yaml.safe_load((tmp_path / "best.yaml").read_text())
    for name, value in best.params.items():
        assert best_file["search_space"][name] == value
    assert best_file["name"] == "e2e-best" and best_file["n_trials"] == 1

    relaunched = hpo("launch", str(tmp_path / "best.yaml"), cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stderr
    rerun = optuna.load_study(study_name="e2e-best", storage=storage).best_trial
    assert rerun.params == {}  # nothing left to search
    assert rerun.value == pytest.approx(best.value, abs=1e-6)  # same seed, same data, same result


def test_budget_is_global_across_launches(make_study, tmp_path):
    path = make_study(name="budget", n_trials=2, search_space={
        "learning_rate": 3.0e-3, "batch_size": 32, "epochs": 1, "freeze_depth": {"low": 0, "high": 2},
    })
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert hpo("launch", str(path), cwd=tmp_path).returncode == 0
    again = hpo("launch", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(_load(path, storage).trials) == 2, "a second launch of a spent budget runs nothing"

    study = yaml.safe_load(path.read_text())
    study["n_trials"] = 3
    path.write_text(yaml.safe_dump(study))
    assert hpo("launch", str(path), cwd=tmp_path).returncode == 0
    assert len(_load(path, storage).trials) == 3


def test_test_split_is_never_read_during_search(make_study, tmp_path, tiny_data):
    # A test file that would fail if opened: it lacks the label column.
    poisoned = write_csv(tmp_path / "test.csv", [("fine", "x")], header=("text", "stars"))
    data = {"source": "csv", "train": str(tiny_data["train"]), "validation": str(tiny_data["validation"]), "test": str(poisoned), "max_length": 32}
    path = make_study(name="untouched", n_trials=1, data=data)
    assert hpo("validate", str(path), cwd=tmp_path).returncode == 0
    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr


def test_launch_on_postgres(make_study, tmp_path, postgres_url):
    path = make_study(n_trials=2, storage="sqlite:///ignored.db")
    launched = hpo("launch", str(path), "--storage", postgres_url, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    study = _load(path, postgres_url)
    assert len([t for t in study.trials if t.state.is_finished()]) == 2
    assert not (tmp_path / "ignored.db").exists()
    status = hpo("status", str(path), cwd=tmp_path, env={"HPO_STORAGE": postgres_url})
    assert status.returncode == 0 and "2/2 finished" in status.stdout
    optuna.delete_study(study_name=study.study_name, storage=postgres_url)


def test_every_trial_failing_stops_the_worker(make_study, tmp_path, tiny_data):
    # Texts longer than the model's 64 positions, with max_length above it: every forward fails.
    long_rows = [(" ".join(["good"] * 100), "pos"), (" ".join(["bad"] * 100), "neg")] * 10
    train = write_csv(tmp_path / "long.csv", long_rows)
    # The same file twice, repeats kept: hygiene would otherwise leave no validation row to fail on.
    data = {"source": "csv", "train": str(train), "validation": str(train), "max_length": 128, "drop_duplicates": False, "drop_leaking": False}
    path = make_study(name="doomed", n_trials=5, data=data)
    result = hpo("launch", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "3 trials in a row failed" in result.stderr
    study = _load(path, f"sqlite:///{tmp_path / 'hpo.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all("fail_reason" in t.user_attrs for t in study.trials)
