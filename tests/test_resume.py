"""A study file changed under an existing study: what may change on resume, and what is refused."""

from __future__ import annotations

import optuna
import pytest
import yaml

from conftest import hpo
from test_bad_input import _assert_user_error

pytestmark = pytest.mark.slow


def _rewrite(path, **changes):
    study = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            study[section][name] = value
        else:
            study[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))


def test_changes_that_give_trials_another_meaning_are_refused(make_study, tmp_path):
    path = make_study(name="resumed", n_trials=1, pruner={"type": "none"})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert hpo("launch", str(path), cwd=tmp_path).returncode == 0
    stored = optuna.load_study(study_name="resumed", storage=storage).user_attrs["spec"]

    _rewrite(path, metric="f1", search_space__epochs={"low": 1, "high": 3}, data__max_length=16)
    refused = hpo("launch", str(path), cwd=tmp_path)
    _assert_user_error(refused, "study 'resumed' was launched with another study file", "metric: accuracy -> f1",
                       "search_space.epochs: {low: 1, high: 2} -> {low: 1, high: 3}",
                       "data.max_length: 32 -> 16", "--allow-changes")
    _assert_user_error(hpo("status", str(path), cwd=tmp_path), "metric: accuracy -> f1", "restore them")
    _assert_user_error(hpo("validate", str(path), cwd=tmp_path), "metric: accuracy -> f1", "launch with --allow-changes")

    _rewrite(path, search_space__batch_size={"choices": [8, 16]})
    impossible = hpo("launch", str(path), "--allow-changes", cwd=tmp_path)
    _assert_user_error(impossible, "search_space.batch_size", "Optuna cannot change", "new name")
    study = optuna.load_study(study_name="resumed", storage=storage)
    assert len(study.trials) == 1 and study.user_attrs["spec"] == stored  # nothing written

    # Budget and timeouts may change; with --allow-changes, so may the rest (Optuna permitting).
    _rewrite(path, search_space__batch_size={"choices": [16, 32]}, n_trials=2, trial_timeout=600)
    resumed = hpo("launch", str(path), "--allow-changes", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "study file changed since the last launch: data.max_length: 32 -> 16; metric: accuracy -> f1" in resumed.stderr
    study = optuna.load_study(study_name="resumed", storage=storage)
    assert len(study.trials) == 2 and study.user_attrs["spec"]["metric"] == "f1"
    assert hpo("status", str(path), cwd=tmp_path).returncode == 0
