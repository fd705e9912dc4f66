"""A preempted or killed trial resumes from its checkpoint and ends exactly as if it had never stopped.

Real worker processes (``hpo launch`` as a user types it) on SQLite and
PostgreSQL, stopped by SIGTERM or kill -9 while the tiny model trains, then
launched again; the retry's value, curve and intermediate values are compared
with an uninterrupted run of the same parameters and seed (fp32 on the CPU,
within 1e-6). Checkpoints that cannot be used (truncated, deleted, written for
other parameters) start the trial from scratch with a warning and never fail it.
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

from hpo import checkpoints
from hpo.params import TrainingParams
from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec
from objectives import build, loop_state
from objectives.config import Hooks
from objectives.results import TrainResult

from conftest import hpo, lm_study, study_dict

pytestmark = pytest.mark.slow

EPOCHS = 60  # about 3 s of training on the tiny model: long enough to stop it halfway
FIXED = {"learning_rate": 3.0e-3, "batch_size": 16, "epochs": EPOCHS, "freeze_depth": 1}


def checkpointed(tiny_model, tiny_data, folder: Path, storage: str, epochs: int = EPOCHS, **overrides) -> dict:
    study = study_dict(tiny_model, tiny_data, n_trials=1, storage=storage, search_space=dict(FIXED, epochs=epochs),
                       evaluation={"points_per_epoch": 1}, heartbeat={"interval": 1, "grace_period": 3},
                       checkpoints={"store": str(folder / "checkpoints")}, **overrides)
    return study


def write(folder: Path, study: dict) -> Path:
    path = folder / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def load(study: dict) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study["name"], storage=study["storage"]).trials


def launch(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo", "launch", str(path)], cwd=path.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(study: dict, process: subprocess.Popen | None, points: int = 3, timeout: float = 120) -> None:
    """Until trial 0 has saved a checkpoint holding at least ``points`` evaluation points."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, process.stdout.read()
        try:
            found = load(study)
        except Exception:  # noqa: BLE001 - the worker has not created the study (or its schema) yet
            found = []
        record = found[0].user_attrs.get(checkpoints.ATTR) if found else None
        if record and record["points"] >= points:
            return
        time.sleep(0.1)
    raise AssertionError("no checkpoint was written")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model, tiny_data):
    """The same trial run through without a stop (in this process, one thread, fp32 as the workers)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    spec = parse_spec(study_dict(tiny_model, tiny_data, n_trials=1, storage=f"sqlite:///{folder / 'hpo.db'}",
                                 search_space=dict(FIXED), evaluation={"points_per_epoch": 1}))
    run_worker(spec, build(spec), WorkerOptions())
    (trial,) = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert trial.state == TrialState.COMPLETE
    return trial


def assert_same_trial(resumed: optuna.trial.FrozenTrial, uninterrupted: optuna.trial.FrozenTrial) -> None:
    assert resumed.state == TrialState.COMPLETE
    assert resumed.value == pytest.approx(uninterrupted.value, abs=1e-6)
    assert sorted(resumed.intermediate_values) == sorted(uninterrupted.intermediate_values)
    for step, value in uninterrupted.intermediate_values.items():
        assert resumed.intermediate_values[step] == pytest.approx(value, abs=1e-6), step
    for name, values in uninterrupted.user_attrs["curve"].items():
        assert resumed.user_attrs["curve"][name] == pytest.approx(values, abs=1e-6), name
    assert resumed.user_attrs["examples_seen"] == uninterrupted.user_attrs["examples_seen"]


def test_sigterm_then_kill_9_and_the_twice_resumed_trial_ends_as_if_never_stopped(
        tmp_path, tiny_model, tiny_data, postgres_url, uninterrupted):
    """One trial's line: SIGTERM saves where it stands and requeues; the retry resumes and is killed -9
    after a few more points; once its heartbeat is stale the second retry resumes its last checkpoint.

    On PostgreSQL, as fleets run it; the requeue on SQLite is the runner's, tested in test_workers.py,
    and the s3 test below preempts a checkpointing trial on SQLite."""
    storage = postgres_url
    study = checkpointed(tiny_model, tiny_data, tmp_path, storage)
    path = write(tmp_path, study)
    process = launch(path)
    wait_for_checkpoint(study, process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    took = time.monotonic() - sent
    output = process.stdout.read()
    assert took < 30, f"SIGTERM to exit took {took:.1f} s"
    assert "after SIGTERM" in output, output[-3000:]
    first, retry = load(study)
    assert first.user_attrs["fail_reason"] == "preempted" and retry.state == TrialState.WAITING
    carried = retry.user_attrs[checkpoints.RESUME_ATTR]
    assert carried == first.user_attrs[checkpoints.ATTR], "the retry resumes the checkpoint written at SIGTERM"
    assert 0 < carried["examples"] < uninterrupted.user_attrs["examples_seen"]

    process = launch(path)
    deadline = time.monotonic() + 120
    while not (load(study)[1].user_attrs.get(checkpoints.ATTR) or {}).get("points", 0) >= carried["points"] + 3:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=30)
    _, killed = load(study)
    assert killed.state == TrialState.RUNNING and killed.user_attrs[checkpoints.RESUMED_ATTR] == carried["examples"]
    saved = killed.user_attrs[checkpoints.ATTR]
    assert len(list((tmp_path / "checkpoints").iterdir())) <= 2, "one checkpoint per trial (and one being written)"
    time.sleep(study["heartbeat"]["grace_period"] + 1)

    again = hpo("launch", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first, killed, resumed = load(study)
    assert killed.state == TrialState.FAIL and resumed.user_attrs["retry_of"] == killed.number
    assert resumed.user_attrs[checkpoints.RESUMED_ATTR] >= saved["examples"]
    assert checkpoints.WARNING_ATTR not in resumed.user_attrs
    assert_same_trial(resumed, uninterrupted)
    finished = optuna.load_study(study_name=study["name"], storage=storage).get_trials(
        states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 1, "the resumed trial counts once in the budget"
    assert list((tmp_path / "checkpoints").iterdir()) == [], "a finished trial leaves no checkpoint behind"


# --- in one process: the loop's state, and checkpoints that must not be used -------------------


class _Stop(Exception):
    pass


class _StopAt:
    """Takes the loop's state at its n-th optimizer step boundary and stops the run there."""

    def __init__(self, n: int):
        self.n, self.seen, self.state = n, 0, None

    def boundary(self, at_point, capture):
        self.seen += 1
        if self.seen == self.n:
            self.state = loop_state.from_bytes(loop_state.to_bytes(capture()))
            raise _Stop()


def _train(objective, params, hooks=Hooks(), resume=None) -> TrainResult:
    model, result = objective.new_model(params, 0), TrainResult()
    try:
        objective.train_model(model, params, 0, validation=objective.validation, result=result, hooks=hooks, resume=resume)
    except _Stop:
        pass
    finally:
        objective.release(model)
    return result


@pytest.mark.parametrize("setting", ["full", "lora", "accumulation"])
def test_a_run_resumed_at_any_step_equals_the_run_never_stopped(tmp_path, tiny_model, tiny_data, setting):
    study = study_dict(tiny_model, tiny_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    values = {"learning_rate": 3e-3, "batch_size": 16, "epochs": 2, "freeze_depth": 1}
    if setting == "lora":
        study["adapter"] = {"type": "lora"}
        values.update(lora_r=4, lora_dropout=0.1, freeze_depth=0)
    if setting == "accumulation":
        values["gradient_accumulation_steps"] = 3
    objective = build(parse_spec(study))
    params = TrainingParams.from_values(values)
    whole = _train(objective, params)
    for stop in (1, 4, 7):  # within the first epoch, at the epoch's end (10 batches of 16), in the second
        stopper = _StopAt(stop)
        _train(objective, params, Hooks(checkpoint=stopper))
        resumed = _train(objective, params, resume=stopper.state)
        assert [p.examples for p in resumed.points] == [p.examples for p in whole.points]
        for a, b in zip(resumed.points, whole.points):
            assert a.metrics == pytest.approx(b.metrics, abs=1e-6), stop
        assert resumed.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
        assert resumed.examples_seen == whole.examples_seen


def test_a_packed_language_model_run_resumes_exactly_counted_in_tokens(tmp_path, tiny_decoder, lm_data):
    study = lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", adapter={"type": "lora"})
    objective = build(parse_spec(study))
    params = TrainingParams.from_values({"learning_rate": 5e-3, "batch_size": 4, "epochs": 2, "lora_r": 4,
                                         "lora_dropout": 0.1})
    whole = _train(objective, params)
    stopper = _StopAt(3)
    _train(objective, params, Hooks(checkpoint=stopper))
    resumed = _train(objective, params, resume=stopper.state)
    assert [p.examples for p in resumed.points] == [p.examples for p in whole.points]  # completion tokens
    for a, b in zip(resumed.points, whole.points):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-6)


def test_a_checkpoint_holds_the_trainable_weights_only(tmp_path, tiny_model, tiny_data):
    study = study_dict(tiny_model, tiny_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", adapter={"type": "lora"})
    objective = build(parse_spec(study))
    params = TrainingParams.from_values({"learning_rate": 3e-3, "batch_size": 16, "epochs": 1, "lora_r": 4})
    stopper = _StopAt(2)
    _train(objective, params, Hooks(checkpoint=stopper))
    saved = stopper.state["model"]
    assert saved and all("lora_" in name or "classifier" in name for name in saved), sorted(saved)[:5]
    loop_state.check_layout(stopper.state, sharded=False)
    with pytest.raises(loop_state.StateMismatch, match="another runtime.strategy"):  # FSDP keys its optimizer by name
        loop_state.check_layout(stopper.state, sharded=True)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "other-parameters", "not-a-checkpoint"])
def test_an_unusable_checkpoint_never_resumes_and_never_fails_the_trial(tmp_path, tiny_model, tiny_data, damage):
    spec = parse_spec(checkpointed(tiny_model, tiny_data, tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", epochs=2))
    store = checkpoints.open_store(spec.checkpoints)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize")
    # A trial that saved a checkpoint and was lost; its retry waits with the checkpoint's record.
    lost = study.ask()
    state = {"format": loop_state.FORMAT, "identity": {"study": "another study"}}
    payload = b"not a checkpoint" if damage == "not-a-checkpoint" else loop_state.to_bytes(state)
    record = checkpoints.TrialCheckpoints(store, lost).save(payload, examples=80, points=1)
    study.tell(lost, state=TrialState.FAIL)
    if damage == "deleted":
        store.remove(record.artifact_id)
    if damage == "truncated":  # a write cut short under the same key: the record's size and hash tell
        (tmp_path / "checkpoints" / record.artifact_id).write_bytes(payload[: len(payload) // 2])
    study.enqueue_trial({}, user_attrs={checkpoints.RESUME_ATTR: record.dump(), "retry_of": lost.number})
    run_worker(spec, build(spec), WorkerOptions())
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE
    warning = retry.user_attrs[checkpoints.WARNING_ATTR]
    assert warning.endswith("started from scratch")
    expected = {"deleted": "is missing from", "truncated": "(a cut write?)", "other-parameters": "written for another",
                "not-a-checkpoint": "not a checkpoint torch can read"}[damage]
    assert expected in warning, warning
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_every_n_seconds_saves_between_evaluation_points(tmp_path, tiny_model, tiny_data, caplog):
    study = checkpointed(tiny_model, tiny_data, tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", epochs=3)
    study["checkpoints"]["every"] = 0.001  # at every optimizer step, in effect
    spec = parse_spec(study)
    with caplog.at_level("INFO", logger="objectives.checkpointing"):
        run_worker(spec, build(spec), WorkerOptions())
    saved = [r.getMessage() for r in caplog.records if "checkpoint at" in r.getMessage()]
    assert any("(timer)" in m for m in saved) and any("(evaluation point)" in m for m in saved), saved[:3]
    assert len(saved) == 30, "one per optimizer step: 3 epochs of 10 batches"
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_keep_best_keeps_one_final_state_and_exports_it_without_a_retrain(tmp_path, tiny_model, tiny_data):
    from transformers import AutoModelForSequenceClassification

    # fp32: on a CPU that multiplies in bf16, precision auto scores the trial in bf16, 1e-4 away from fp32.
    study = study_dict(tiny_model, tiny_data, n_trials=3, storage=f"sqlite:///{tmp_path / 'hpo.db'}",
                       pruner={"type": "none"}, checkpoints={"store": str(tmp_path / "checkpoints"), "keep": "best"},
                       runtime={"num_threads": 1, "precision": "fp32"})
    path = write(tmp_path, study)
    spec = parse_spec(study)
    objective = build(spec)
    run_worker(spec, objective, WorkerOptions(), objective.describe())
    optuna_study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    number, record = checkpoints.kept(optuna_study)
    assert number == optuna_study.best_trial.number
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [record.artifact_id], "only the best trial's state stays"

    result = hpo("export", str(path), "-o", str(tmp_path / "export"), "--from-checkpoint", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"(trial #{number}, its own weights from the search, not retrained)" in result.stdout
    assert "Not retrained and not tested" in (tmp_path / "export" / "README.md").read_text()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export" / "model")
    scored = objective.evaluate(model, objective.validation, fp32=True)
    best = optuna_study.best_trial
    assert scored["loss"] == pytest.approx(best.user_attrs["curve"]["loss"][-1], abs=1e-5), "the weights at the end of the trial"


def test_export_from_checkpoint_without_keep_best_exits_2_with_one_line(launched_study, tmp_path):
    result = hpo("export", str(launched_study.path), "-o", str(tmp_path / "export"), "--from-checkpoint", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "checkpoints.keep: best" in result.stderr, result.stderr


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3 endpoint (moto's server, over HTTP) with an empty bucket; boto3 finds it through AWS_ENDPOINT_URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="checkpoints")
    yield client
    server.stop()


def test_an_s3_store_resumes_a_sigterm_preempted_trial(tmp_path, tiny_model, tiny_data, s3_bucket, uninterrupted):
    import threading

    from hpo.signals import Preempted

    study = checkpointed(tiny_model, tiny_data, tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}")
    study["checkpoints"]["store"] = "s3://checkpoints/team/sft"
    spec = parse_spec(study)
    objective = build(spec)

    def preempt_after_a_checkpoint():
        wait_for_checkpoint(study, process=None)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt_after_a_checkpoint, daemon=True).start()
    with pytest.raises(Preempted):
        run_worker(spec, objective, WorkerOptions(handle_signals=True))
    keys = [o["Key"] for o in s3_bucket.list_objects_v2(Bucket="checkpoints")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("team/sft/"), keys
    run_worker(spec, objective, WorkerOptions())
    first, resumed = load(study)
    assert resumed.user_attrs[checkpoints.RESUMED_ATTR] == first.user_attrs[checkpoints.ATTR]["examples"]
    assert_same_trial(resumed, uninterrupted)
    assert s3_bucket.list_objects_v2(Bucket="checkpoints")["KeyCount"] == 0


def test_bad_checkpoint_settings_exit_2_naming_each_and_write_nothing(make_study):
    path = make_study(checkpoints={"store": "gs://bucket/x", "every": 0, "keep": "all"})
    result = hpo("launch", str(path), cwd=path.parent)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    for problem in ("checkpoints.store: a folder path or s3://bucket/prefix",
                    "checkpoints.every: must be point or a number of seconds > 0, got 0",
                    "checkpoints.keep: must be 'running' or 'best'"):
        assert problem in result.stderr, result.stderr
    assert not (path.parent / "hpo.db").exists()
