"""The worker loop with plain Python objectives: budget, failures, progress events.

The runner takes any callable, so these tests need no model; what they check
is bookkeeping in a real SQLite database.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec


def _spec(tmp_path, n_trials=4, **extra):
    return parse_spec(
        {
            "name": "runner",
            "storage": f"sqlite:///{tmp_path / 'runner.db'}",
            "n_trials": n_trials,
            "model": "unused",
            "data": {"source": "demo"},
            "sampler": {"type": "random"},
            "search_space": {
                "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                "batch_size": {"choices": [8, 16]},
                "epochs": 1,
                "freeze_depth": 0,
            },
            **extra,
        }
    )


def test_a_failing_trial_is_recorded_and_the_worker_goes_on(tmp_path):
    spec = _spec(tmp_path, n_trials=3)
    calls = []

    def objective(trial):
        params = spec.sample(trial)
        calls.append(trial.number)
        if trial.number == 1:
            raise RuntimeError("CUDA out of memory (simulated by the objective)")
        return params.learning_rate

    counts = run_worker(spec, objective, WorkerOptions())
    study = optuna.load_study(study_name="runner", storage=spec.storage)
    assert counts.complete == 3 and counts.failed == 1
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed[0].user_attrs["fail_reason"].startswith("RuntimeError: CUDA out of memory")
    assert calls == [0, 1, 2, 3]


def test_pruned_trials_count_toward_the_budget(tmp_path):
    spec = _spec(tmp_path, n_trials=4)

    def objective(trial):
        spec.sample(trial)
        trial.report(0.5, step=10)
        if trial.number % 2:
            raise optuna.TrialPruned()
        return 0.5

    counts = run_worker(spec, objective, WorkerOptions())
    assert (counts.complete, counts.pruned, counts.finished) == (2, 2, 4)


def test_progress_events_carry_study_totals(tmp_path):
    spec = _spec(tmp_path, n_trials=2)
    events = []
    run_worker(spec, lambda t: spec.sample(t).learning_rate, WorkerOptions(on_trial_end=events.append))
    assert [e.counts.finished for e in events] == [1, 2]
    assert events[-1].best is not None and events[-1].n_trials == 2


def test_nan_is_a_failure_not_a_best(tmp_path):
    spec = _spec(tmp_path, n_trials=1)
    values = iter([float("nan"), 0.7])
    run_worker(spec, lambda t: next(values), WorkerOptions())
    study = optuna.load_study(study_name="runner", storage=spec.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.best_value == 0.7
