"""One trial on two processes (``runtime.processes_per_trial: 2``): CPU ranks with gloo, under torchrun.

``hpo launch`` as a user types it re-executes itself under torchrun; rank 0
claims, reports and prunes, the other rank gets the parameters and every
pruning decision from it. What a user relies on: both ranks train the same
configuration, a pruned trial stops both at the same evaluation point, and the
validation curve is the one a single process computes on the same batches.
"""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec
from objectives import build

from conftest import hpo, study_dict

pytestmark = pytest.mark.slow

GOOD, HOPELESS = 3.0e-3, 1.0e-7  # learning rates: one that learns, one the median pruner stops at once


def test_two_ranks_train_what_rank_0_drew_prune_together_and_score_as_one_process(tmp_path, tiny_model, tiny_data):
    space = {"learning_rate": {"low": 1.0e-7, "high": 1.0e-2, "log": True}, "batch_size": 16, "epochs": 2,
             "freeze_depth": 0, "dropout": 0.0}
    study = study_dict(tiny_model, tiny_data, n_trials=2, storage=f"sqlite:///{tmp_path / 'hpo.db'}", search_space=space,
                       runtime={"num_threads": 1, "processes_per_trial": 2},
                       pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0, "metric": "loss"})
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    queued = optuna.create_study(study_name=study["name"], storage=study["storage"], direction="maximize")
    for rate in (GOOD, HOPELESS):
        queued.enqueue_trial({"learning_rate": rate})

    result = hpo("launch", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "starting one trial on 2 processes" in output
    good, hopeless = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    assert good.state == TrialState.COMPLETE and hopeless.state == TrialState.PRUNED
    for trial in (good, hopeless):  # the other rank trained exactly what rank 0 drew
        assert f"rank 1: trial {trial.number} with {trial.params}" in output, output[-3000:]
    assert "rank 1: trial 1 pruned" in output and sorted(hopeless.intermediate_values) == [80]
    assert good.user_attrs["processes"] == 2 and len(good.user_attrs["devices"]) == 2

    single = parse_spec({**study, "name": "single", "n_trials": 1, "runtime": {"num_threads": 1},
                         "storage": f"sqlite:///{tmp_path / 'single.db'}", "search_space": {**space, "learning_rate": GOOD}})
    run_worker(single, build(single), WorkerOptions())
    (alone,) = optuna.load_study(study_name="single", storage=single.storage).trials
    assert good.user_attrs["curve"]["examples"] == alone.user_attrs["curve"]["examples"]
    assert good.user_attrs["curve"]["loss"] == pytest.approx(alone.user_attrs["curve"]["loss"], abs=1e-5)
    assert good.value == pytest.approx(alone.value, abs=1e-6)


@pytest.mark.parametrize("runtime, extra, message", [
    ({"processes_per_trial": 2, "strategy": "fsdp"}, {}, "runtime.strategy: fsdp is not built yet"),
    ({"processes_per_trial": 2}, {"checkpoints": {"store": "ckpt"}}, "checkpoints: not yet with runtime.processes_per_trial > 1"),
])
def test_what_several_processes_cannot_do_yet_is_refused_in_one_line(make_study, runtime, extra, message):
    path = make_study(runtime=runtime, **extra)
    result = hpo("validate", str(path), "--offline", cwd=path.parent)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
