"""One trial on two processes (``runtime.processes_per_trial: 2``): CPU ranks with gloo, under torchrun.

``hpo launch`` as a user types it re-executes itself under torchrun; rank 0
claims, reports and prunes, the other rank gets the parameters and every
pruning decision from it. What a user relies on: both ranks train the same
configuration, a pruned trial stops both at the same evaluation point, and the
validation curve is the one a single process computes on the same batches,
with DDP and with FSDP (``runtime.strategy: fsdp``: the model sharded across
the ranks), for full fine-tuning and for LoRA.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec
from objectives import build

from hpo import checkpoints

from conftest import hpo, lm_study, study_dict
from test_checkpoints import wait_for_checkpoint

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


def _sharded_and_alone(tmp_path, study: dict, enqueued: list[dict]) -> tuple[list, list]:
    """The study's trials (``enqueued``) launched on 2 FSDP ranks, and the same trials run by one process."""
    fsdp = {**study, "name": "fsdp", "storage": f"sqlite:///{tmp_path / 'fsdp.db'}",
            "runtime": {**study["runtime"], "processes_per_trial": 2, "strategy": "fsdp"}}
    single = parse_spec({**study, "name": "single", "storage": f"sqlite:///{tmp_path / 'single.db'}"})
    for storage, name in ((fsdp["storage"], "fsdp"), (single.storage, "single")):
        queued = optuna.create_study(study_name=name, storage=storage, direction=single.direction)
        for params in enqueued:
            queued.enqueue_trial(params)
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(fsdp, sort_keys=False))
    result = hpo("launch", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "starting one trial on 2 processes" in result.stdout
    assert "model sharded across 2 processes: 2 blocks and the rest" in result.stdout + result.stderr
    run_worker(single, build(single), WorkerOptions())
    sharded = optuna.load_study(study_name="fsdp", storage=fsdp["storage"]).trials
    alone = optuna.load_study(study_name="single", storage=single.storage).trials
    assert [t.state for t in sharded] == [t.state for t in alone] == [TrialState.COMPLETE] * len(enqueued)
    for two, one in zip(sharded, alone):
        assert two.user_attrs["processes"] == 2 and two.user_attrs["strategy"] == "fsdp", two.user_attrs
        assert two.user_attrs["trainable_parameters"] == one.user_attrs["trainable_parameters"]  # whole, not a shard
        assert two.user_attrs["curve"]["examples"] == one.user_attrs["curve"]["examples"]
        for metric, values in one.user_attrs["curve"].items():
            assert two.user_attrs["curve"][metric] == pytest.approx(values, abs=1e-5), (two.number, metric)
    return sharded, alone


def test_fsdp_full_fine_tuning_scores_as_one_process_with_and_without_frozen_layers(tmp_path, tiny_model, tiny_data):
    """Two trials on the same 2 ranks: every layer trained (AdamW), then the embeddings and block 0 frozen
    (frozen parameters inside the sharded root unit, and a wholly frozen sharded block) with SGD, where a
    clip by a wrong norm (a shard's, not the whole gradient's) would show: every step is clipped."""
    space = {"learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "batch_size": 16, "epochs": 1,
             "freeze_depth": {"low": 0, "high": 1}, "dropout": 0.0, "max_grad_norm": 0.05,
             "optimizer": {"choices": ["adamw", "sgd"]}}
    study = study_dict(tiny_model, tiny_data, n_trials=2, search_space=space, pruner={"type": "none"})
    _sharded_and_alone(tmp_path, study, [{"learning_rate": GOOD, "freeze_depth": 0, "optimizer": "adamw"},
                                         {"learning_rate": 5.0e-2, "freeze_depth": 1, "optimizer": "sgd"}])


def test_fsdp_lora_on_a_decoder_scores_and_generates_as_one_process_and_leaves_the_shared_base_as_loaded(
        tmp_path, tiny_decoder, lm_data):
    """A causal LM with LoRA on 2 ranks: loss and generation metrics (greedy decoding, a collective per
    step) equal one process's; the second trial on the same worker equals the second trial of one process,
    so the first trial's sharding left the base the worker shares between trials untouched."""
    study = lm_study(tiny_decoder, lm_data, n_trials=2, metric="exact_match", pruner={"type": "none"},
                     adapter={"type": "lora"})
    study["data"].update(max_generation_samples=8, max_new_tokens=2)
    study["search_space"] = {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}, "batch_size": 8, "epochs": 1,
                             "freeze_depth": {"low": 0, "high": 1}, "dropout": 0.0, "lora_dropout": 0.0,
                             "lora_r": {"choices": [4, 8]}, "lora_target": {"choices": ["attention", "all-linear"]}}
    sharded, _ = _sharded_and_alone(tmp_path, study, [
        {"learning_rate": 1.0e-2, "freeze_depth": 0, "lora_r": 4, "lora_target": "attention"},
        {"learning_rate": 2.0e-2, "freeze_depth": 1, "lora_r": 8, "lora_target": "all-linear"}])
    assert sharded[1].user_attrs["adapter"]["adapted_layers"] == 7  # block 1's q, k, v, o, gate, up, down
    assert "exact_match" in sharded[0].user_attrs["curve"]


@pytest.mark.parametrize("runtime, extra, message", [
    ({"processes_per_trial": 2, "strategy": "fsdp"}, {"adapter": {"type": "lora", "quantize": "4bit"}},
     "adapter.quantize: not with runtime.strategy fsdp"),
    ({"processes_per_trial": 2}, {"checkpoints": {"store": "ckpt", "sigterm_wait": 30}},
     "checkpoints.sigterm_wait: must be under 30 s with runtime.processes_per_trial > 1"),
])
def test_what_several_processes_cannot_do_yet_is_refused_in_one_line(make_study, runtime, extra, message):
    path = make_study(runtime=runtime, **extra)
    result = hpo("validate", str(path), "--offline", cwd=path.parent)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def _rank_pids(launcher: int) -> dict[int, int]:
    """The trial's processes under the launcher (torchrun), by rank, read from their environment
    (waiting for both while torchrun starts a group again)."""
    deadline = time.monotonic() + 60
    while len(found := _ranks_now(launcher)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _ranks_now(launcher: int) -> dict[int, int]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().split()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[3]) != launcher:
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in env:
            found[int(env[b"RANK"])] = int(proc.name)
    return found


def _long_study(tmp_path, tiny_model, tiny_data, epochs: int = 30) -> tuple[Path, dict]:
    study = study_dict(tiny_model, tiny_data, n_trials=1, storage=f"sqlite:///{tmp_path / 'hpo.db'}",
                       search_space={"learning_rate": 3.0e-3, "batch_size": 16, "epochs": epochs, "freeze_depth": 0},
                       runtime={"num_threads": 1, "processes_per_trial": 2}, heartbeat={"interval": 1, "grace_period": 5})
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path, study


def _wait_for_a_point(study: dict, process, trial: int = 0) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            trials = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
        except Exception:  # noqa: BLE001 - not created yet
            trials = []
        if len(trials) > trial and trials[trial].intermediate_values:
            return
        time.sleep(0.2)
    raise AssertionError("no evaluation point within 120 s")


def test_sigterm_then_kill_9_of_rank_1_end_the_trial_everywhere_and_the_restarted_groups_run_it_again(
        tmp_path, tiny_model, tiny_data):
    """Rank 1 alone preempted (its node drained), then rank 1 of the restarted group killed -9: torchrun
    stops the group each time; rank 0 gives the first trial back as preempted and the second as lost,
    and the group torchrun starts again runs the retry to the end."""
    path, study = _long_study(tmp_path, tiny_model, tiny_data, epochs=12)
    process = subprocess.Popen([sys.executable, "-m", "hpo", "launch", str(path)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_a_point(study, process)
    os.kill(_rank_pids(process.pid)[1], signal.SIGTERM)
    _wait_for_a_point(study, process, trial=1)
    os.kill(_rank_pids(process.pid)[1], signal.SIGKILL)
    assert process.wait(timeout=180) == 0, process.stdout.read()[-3000:]
    preempted, lost, retry = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    # Rank 0 hears of it first from torchrun's SIGTERM ("preempted") or from its broken collective (a gloo
    # error): queued again either way, never failed for its configuration.
    assert preempted.state == TrialState.FAIL and "RankFailed" not in preempted.user_attrs["fail_reason"]
    assert lost.state == TrialState.FAIL and lost.user_attrs["retry_of"] == preempted.number
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == lost.number
    assert retry.user_attrs["processes"] == 2


def test_sigterm_to_the_launcher_requeues_the_trial_and_stops_every_rank(tmp_path, tiny_model, tiny_data):
    path, study = _long_study(tmp_path, tiny_model, tiny_data)
    process = subprocess.Popen([sys.executable, "-m", "hpo", "launch", str(path)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_a_point(study, process)
    ranks = _rank_pids(process.pid)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    assert time.monotonic() - sent < 30 and code != 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks.values()), "every rank stopped"
    first, retry = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    assert first.user_attrs["fail_reason"] == "preempted" and retry.state == TrialState.WAITING



def test_a_rank_s_own_error_reaches_rank_0_as_that_error_not_as_a_lost_rank():
    """What rank 0 makes of a broken group: the reason a follower left in the group's store (an out-of-memory
    error on rank 1, say) fails the trial with that reason, instead of queueing it again as a lost rank to fail
    the same way. A one-process gloo group: its store is the real one the ranks share."""
    import torch.distributed as dist

    from hpo import distributed as group_lib
    from hpo.errors import GroupOutOfStep

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        broken = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
        lost = group_lib._out_of_step(7, broken)
        assert isinstance(lost, GroupOutOfStep) and lost.lost_rank
        group_lib.note_failure(7, 1, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        for seen in (broken, group_lib.Preempted()):  # the group broke, or torchrun's SIGTERM came first
            failed = group_lib._out_of_step(7, seen)
            assert isinstance(failed, GroupOutOfStep) and not failed.lost_rank
            assert str(failed.__cause__) == "rank 1: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        assert group_lib._out_of_step(8, group_lib.Preempted()).__class__ is group_lib.Preempted
    finally:
        dist.destroy_process_group()


def test_two_trial_groups_of_two_cpu_processes_share_one_study(tmp_path, tiny_model, tiny_data):
    """``--workers 2`` with processes_per_trial 2: two torchruns of their own (their own rendezvous) on one host."""
    study = study_dict(tiny_model, tiny_data, n_trials=4, storage=f"sqlite:///{tmp_path / 'hpo.db'}",
                       search_space={"learning_rate": {"low": 1.0e-3, "high": 5.0e-3, "log": True}, "batch_size": 16,
                                     "epochs": 3, "freeze_depth": 0},
                       runtime={"num_threads": 1, "processes_per_trial": 2}, pruner={"type": "none"})
    path = tmp_path / "groups.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    result = hpo("launch", str(path), "--workers", "2", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "starting 2 trial groups of 2 processes: group-0, group-1" in output
    trials = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert all(t.user_attrs["processes"] == 2 and len(t.user_attrs["devices"]) == 2 for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {"group-0", "group-1"}, "both groups ran trials"
    assert "[group-1] rank 1: trial" in output  # the other rank of each group names its group too


def test_gpus_that_do_not_split_into_trial_groups_are_refused_in_one_line(make_study):
    path = make_study(runtime={"processes_per_trial": 2})
    result = hpo("launch", str(path), "--gpus", "all", cwd=path.parent, env={"CUDA_VISIBLE_DEVICES": "0,1,2"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "runtime.processes_per_trial is 2: 3 GPUs (0,1,2) do not split into groups of 2" in result.stderr
    assert "starting" not in result.stdout


def test_a_torchrun_group_of_another_size_than_the_study_file_says_is_refused(make_study):
    path = make_study(runtime={"processes_per_trial": 2})
    result = hpo("launch", str(path), cwd=path.parent, env={"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "torchrun started 4 processes (WORLD_SIZE) but runtime.processes_per_trial is 2" in result.stderr


def test_a_group_torchrun_started_across_two_nodes_has_one_leader(tmp_path, tiny_model, tiny_data):
    """``torchrun --nnodes 2 ... -m hpo launch``, both "nodes" on this host: each has LOCAL_RANK 0, and
    only the process the rendezvous made global rank 0 claims, reports and records."""
    import socket

    study = study_dict(tiny_model, tiny_data, n_trials=2, storage=f"sqlite:///{tmp_path / 'hpo.db'}",
                       search_space={"learning_rate": 3.0e-3, "batch_size": 16, "epochs": 1, "freeze_depth": 0},
                       runtime={"num_threads": 1, "processes_per_trial": 2}, pruner={"type": "none"})
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}", "--nproc-per-node=1",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=hpo-test", "-m", "hpo", "launch", str(path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    leaders = [o for o in outputs if "trial 0 started" in o]
    followers = [o for o in outputs if "rank 1: trial 0 with" in o]
    assert len(leaders) == 1 and len(followers) == 1 and leaders != followers, "\n\n".join(o[-3000:] for o in outputs)
    trials = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["processes"] == 2 and len(t.user_attrs["devices"]) == 2 for t in trials)


def test_a_rank_whose_torchrun_was_killed_stops_instead_of_training_on():
    """torchrun starts each rank in a session of its own: after a kill -9 of torchrun the ranks would go
    on beside the group hpo launch starts again. A rank watches its parent and ends itself (SIGTERM)."""
    rank = ("import time; from hpo import distributed; distributed.watch_parent(every=0.1); "
            "print('watching', flush=True); time.sleep(60)")
    middle = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {rank!r}], "
                               "start_new_session=True); print(p.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    orphan = int(middle.stdout.readline())
    assert middle.stdout.readline().strip() == "watching"
    middle.kill()
    middle.wait()
    deadline = time.monotonic() + 10

    def alive() -> bool:
        try:
            return Path(f"/proc/{orphan}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), "the orphaned rank is still running"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_checkpointing_two_rank_trial_stopped_by_sigterm_resumes_and_ends_as_if_never_stopped(
        tmp_path, tiny_model, tiny_data, strategy):
    """SIGTERM to the launcher (torchrun forwards it to both ranks): rank 0 tells both to save at the next step
    and stop, the trial is queued again with that checkpoint, and the next launch's retry (rank 1 given the
    checkpoint by rank 0, its own RNGs in it: dropout is on) ends as the same trial run through on 2 ranks.
    Under FSDP the state saved is gathered from both ranks' shards, and each rank loads its shards back."""
    path, study = _long_study(tmp_path, tiny_model, tiny_data, epochs=12)
    study["runtime"]["strategy"] = strategy
    # Batches of 13 rows: 7 and 6 per rank, so the ranks' dropout draws (and RNG states) differ.
    study.update(n_trials=2, evaluation={"points_per_epoch": 1}, checkpoints={"store": str(tmp_path / "checkpoints")},
                 search_space={**study["search_space"], "batch_size": 13})
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    process = subprocess.Popen([sys.executable, "-m", "hpo", "launch", str(path)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(study, process, points=2)
    ranks = _rank_pids(process.pid)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    output = process.stdout.read()
    assert time.monotonic() - sent < 30 and code != 0, output[-3000:]
    assert "after SIGTERM" in output, output[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks.values()), "every rank stopped"
    first, retry = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    assert first.user_attrs["fail_reason"] == "preempted" and retry.state == TrialState.WAITING
    carried = retry.user_attrs[checkpoints.RESUME_ATTR]
    assert carried == first.user_attrs[checkpoints.ATTR] and carried["points"] >= 2

    again = hpo("launch", str(path), cwd=tmp_path)  # the retry, then trial 2: the same parameters, never stopped
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _, resumed, through = optuna.load_study(study_name=study["name"], storage=study["storage"]).trials
    assert resumed.user_attrs[checkpoints.RESUMED_ATTR] == carried["examples"] and resumed.user_attrs["processes"] == 2
    assert checkpoints.WARNING_ATTR not in resumed.user_attrs
    assert checkpoints.RESUMED_ATTR not in through.user_attrs and resumed.params == through.params
    assert resumed.state == through.state == TrialState.COMPLETE
    assert resumed.value == pytest.approx(through.value, abs=1e-5)
    assert resumed.intermediate_values == pytest.approx(through.intermediate_values, abs=1e-5)
    for name, values in through.user_attrs["curve"].items():
        assert resumed.user_attrs["curve"][name] == pytest.approx(values, abs=1e-5), name
    assert list((tmp_path / "checkpoints").iterdir()) == [], "finished trials leave no checkpoint behind"
