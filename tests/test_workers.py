"""Many workers on one study: exact budget, dead and preempted workers, database outages, hangs.

Real processes against a real SQLite file and the real local PostgreSQL. Most
workers here run tests/sleepy_worker.py (an objective that sleeps) because
what is tested is the processes and the database; the CLI tests at the end
use the tiny transformer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import hpo
from hpo.errors import UserError
from hpo.records import LostResults
from hpo.workers import parse_gpus, plan

pytestmark = pytest.mark.slow

SLEEPY = Path(__file__).parent / "sleepy_worker.py"


def sleepy_study(tmp_path: Path, storage: str, n_trials: int, **extra) -> Path:
    study = {
        "name": f"workers-{uuid.uuid4().hex[:8]}",
        "storage": storage,
        "n_trials": n_trials,
        "model": "unused",
        "data": {"source": "demo"},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
        "search_space": {
            "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
            "batch_size": {"choices": [8, 16, 32]},
            "epochs": 1,
            "freeze_depth": 0,
        },
        **extra,
    }
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def start(study: Path, index: int, seconds: float, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SLEEPY), str(study), str(index), str(seconds), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(SLEEPY.parent.parent)},
    )


def wait_for_trial(process: subprocess.Popen) -> None:
    """Block until the worker is inside a trial (its start-up time varies on a busy machine)."""
    for line in process.stdout:
        if line.startswith("started trial"):
            return
    raise AssertionError("the worker ended before starting a trial")


def finish(processes: list[subprocess.Popen], timeout: float = 120) -> list[int]:
    codes = []
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"worker did not finish: {process.stdout.read()}")
        codes.append(process.returncode)
    return codes


def trials(study: Path):
    spec = yaml.safe_load(study.read_text())
    return optuna.load_study(study_name=spec["name"], storage=spec["storage"]).trials


def finished(all_trials) -> list:
    return [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return request.getfixturevalue("postgres_url")


def test_parallel_workers_spend_the_budget_exactly(tmp_path, storage):
    study = sleepy_study(tmp_path, storage, n_trials=10)
    codes = finish([start(study, i, 0.3) for i in range(4)])
    assert codes == [0, 0, 0, 0]
    done = trials(study)
    assert len(finished(done)) == 10, [t.state for t in done]
    assert len(done) == 10, "no trial beyond the budget was even started"
    assert len({t.number for t in done}) == 10


def test_a_seed_in_the_study_file_repeats_alone_and_differs_per_worker(tmp_path):
    """`sampler.seed` makes a one-worker study repeatable; parallel workers must not
    all replay that seed's random draws (they did: the seed went to every worker)."""
    first_draws = []
    for run in range(2):
        study = sleepy_study(tmp_path, f"sqlite:///{tmp_path / f'alone-{run}.db'}", n_trials=2, sampler={"type": "random", "seed": 7})
        assert finish([start(study, 0, 0.1)]) == [0]
        first_draws.append([t.params for t in trials(study)])
    assert first_draws[0] == first_draws[1]

    study = sleepy_study(tmp_path, f"sqlite:///{tmp_path / 'four.db'}", n_trials=8, sampler={"type": "random", "seed": 7})
    assert finish([start(study, i, 0.3) for i in range(4)]) == [0, 0, 0, 0]
    rates = [t.params["learning_rate"] for t in trials(study)]
    assert len(set(rates)) == len(rates) == 8, rates


def test_killed_worker_trial_is_retried_and_budget_stays_exact(tmp_path, postgres_url):
    study = sleepy_study(tmp_path, postgres_url, n_trials=4, heartbeat={"interval": 1, "grace_period": 3})
    victim = start(study, 0, 4.0)
    wait_for_trial(victim)
    survivor = start(study, 1, 0.5)
    victim.send_signal(signal.SIGKILL)
    assert finish([survivor]) == [0]
    done = trials(study)
    lost = [t for t in done if t.state == TrialState.FAIL]
    assert len(lost) == 1 and len(finished(done)) == 4
    retries = [t for t in done if t.user_attrs.get("retry_of") == lost[0].number]
    assert len(retries) == 1 and retries[0].params == lost[0].params
    assert retries[0].state == TrialState.COMPLETE
    assert not [t for t in done if t.state == TrialState.RUNNING]


@pytest.mark.serial
@pytest.mark.parametrize("outage", [0.3, 5.0])
def test_postgres_restart_mid_trial_loses_nothing(tmp_path, postgres_url, outage):
    study = sleepy_study(tmp_path, postgres_url, n_trials=4)
    workers = [start(study, i, 2.0) for i in range(2)]
    for worker in workers:
        wait_for_trial(worker)
    time.sleep(0.5)  # both workers are mid-trial
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "--mode=fast", version, "main", "stop"], check=True)
    time.sleep(outage)
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True)
    codes = finish(workers)
    logs = "".join(w.stdout.read() for w in workers)
    assert codes == [0, 0], logs
    if outage >= 5:
        assert "database unavailable" in logs, "the workers must have hit the outage and retried"
    done = trials(study)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4, logs
    spec = yaml.safe_load(study.read_text())
    assert "lost_results" not in optuna.load_study(study_name=spec["name"], storage=postgres_url).user_attrs


def test_connection_limit_gives_a_clear_message_not_a_crash(make_study, postgres_url):
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS hpo_limited WITH (FORCE)"))
        conn.execute(text(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'hpo_limited') "
            "THEN EXECUTE 'DROP OWNED BY hpo_limited'; END IF; END $$"
        ))
        conn.execute(text("DROP ROLE IF EXISTS hpo_limited"))
        conn.execute(text("CREATE ROLE hpo_limited LOGIN CONNECTION LIMIT 1"))
        conn.execute(text("CREATE DATABASE hpo_limited OWNER hpo_limited"))
    engine.dispose()
    limited = postgres_url.replace("postgres@", "hpo_limited@", 1).rsplit("/", 1)[0] + "/hpo_limited"
    path = make_study(name="limited", storage=limited)
    result = hpo("launch", str(path), cwd=path.parent, env={"HPO_DB_PATIENCE": "3"})
    assert result.returncode == 2, result.stderr
    assert "too many connections" in result.stderr and "run fewer workers or raise max_connections" in result.stderr
    assert "Traceback" not in result.stderr
    assert "retrying" in result.stderr  # it backed off before giving up


def test_hung_trial_is_ended_by_trial_timeout(tmp_path):
    study = sleepy_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2, trial_timeout=2)
    assert finish([start(study, 0, 0.2, "hang")]) == [0]
    done = trials(study)
    assert done[0].state == TrialState.FAIL
    assert done[0].user_attrs["fail_reason"].startswith("TrialTimeout: trial_timeout")
    assert len(finished(done)) == 2


def test_enqueued_configurations_run_exactly_once_with_eight_workers(tmp_path, storage):
    study = sleepy_study(tmp_path, storage, n_trials=8)
    spec = yaml.safe_load(study.read_text())
    queued = optuna.create_study(study_name=spec["name"], storage=storage, direction="maximize")
    rates = [1e-5 * (i + 1) for i in range(8)]
    for rate in rates:
        queued.enqueue_trial({"learning_rate": rate, "batch_size": 16})
    assert finish([start(study, i, 0.2) for i in range(8)]) == [0] * 8
    done = trials(study)
    assert sorted(t.params["learning_rate"] for t in done) == pytest.approx(rates)
    assert all(t.state == TrialState.COMPLETE for t in done)


@pytest.mark.serial
def test_sigterm_fails_the_trial_as_preempted_and_requeues_it(make_study):
    path = make_study(name="preempt", n_trials=2, search_space={
        "learning_rate": 3.0e-3, "batch_size": 16, "epochs": 40, "freeze_depth": {"low": 0, "high": 1},
    })
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "launch", str(path)], cwd=path.parent,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in process.stdout:
        if "trial 0 started" in line:
            break
    time.sleep(1.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    assert time.monotonic() - sent < 10
    done = trials(path)
    assert done[0].state == TrialState.FAIL and done[0].user_attrs["fail_reason"] == "preempted"
    assert done[1].state == TrialState.WAITING and done[1].user_attrs["retry_of"] == 0
    assert done[1].params == done[0].params


def test_launch_with_two_cli_workers_on_the_tiny_model(make_study):
    # Trials of a few seconds each: long enough that the second worker, however slow
    # to start on a busy machine, is there before the first has spent the budget alone.
    path = make_study(name="pair", n_trials=4, search_space={
        "learning_rate": 3.0e-3, "batch_size": 16, "epochs": 25, "freeze_depth": {"low": 0, "high": 1},
    })
    result = hpo("launch", str(path), "--workers", "2", cwd=path.parent)
    assert result.returncode == 0, result.stderr
    assert "starting 2 workers: worker-0, worker-1" in result.stdout
    assert "[worker-0]" in result.stdout and "[worker-1]" in result.stdout
    assert len(finished(trials(path))) == 4 and len(trials(path)) == 4


def test_gpus_all_without_gpus_is_a_user_error(make_study):
    path = make_study(name="nogpu")
    result = hpo("launch", str(path), "--gpus", "all", cwd=path.parent, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "no GPU is visible" in result.stderr


def test_gpu_parsing_and_worker_environment():
    assert parse_gpus("all", ["0", "1", "2"]) == ["0", "1", "2"]
    assert parse_gpus("0,2", ["0", "1", "2"]) == ["0", "2"]
    with pytest.raises(UserError, match="not visible"):
        parse_gpus("0,5", ["0", "1"])
    with pytest.raises(UserError, match="listed twice"):
        parse_gpus("1,1", ["0", "1"])
    slots = plan(["0", "2"], None)
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [("gpu0", "0"), ("gpu2", "2")]
    doubled = plan(["3"], 2)
    assert [(s.name, s.index, s.env["CUDA_VISIBLE_DEVICES"]) for s in doubled] == [("gpu3-0", 0, "3"), ("gpu3-1", 1, "3")]
    cpu = plan(None, 4, cpu_count=8)
    assert [s.env["OMP_NUM_THREADS"] for s in cpu] == ["2"] * 4 or "OMP_NUM_THREADS" in os.environ


def test_workers_starting_together_on_a_fresh_postgres_database(tmp_path, postgres_url):
    from sqlalchemy import create_engine, text

    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS hpo_fresh WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE hpo_fresh"))
    admin.dispose()
    fresh = postgres_url.rsplit("/", 1)[0] + "/hpo_fresh"
    study = sleepy_study(tmp_path, fresh, n_trials=6)
    workers = [start(study, i, 0.2) for i in range(6)]  # no schema, no study: all race to create them
    codes = finish(workers)
    assert codes == [0] * 6, "".join(w.stdout.read() for w in workers)
    assert len(finished(trials(study))) == 6


def test_a_result_finished_after_its_trial_was_declared_dead_is_kept(tmp_path):
    """A worker frozen past the grace period (a long pause, a network partition) comes back
    with a result for a trial another worker has already failed: the value is kept, not lost."""
    study = sleepy_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2, heartbeat={"interval": 1, "grace_period": 2})
    frozen = start(study, 0, 3.0)
    wait_for_trial(frozen)
    time.sleep(1.0)
    frozen.send_signal(signal.SIGSTOP)
    other = start(study, 1, 0.2)
    time.sleep(6.0)  # the other worker declares trial 0 dead and runs its retry
    frozen.send_signal(signal.SIGCONT)
    codes = finish([frozen, other])
    assert codes == [0, 0]
    spec = yaml.safe_load(study.read_text())
    kept = LostResults.of(optuna.load_study(study_name=spec["name"], storage=spec["storage"])).trials
    assert 0 in kept and kept[0].value > 0
    assert len(finished(trials(study))) == 2


def test_ctrl_c_stops_every_worker_cleanly(make_study):
    path = make_study(name="ctrlc", n_trials=4, search_space={
        "learning_rate": 3.0e-3, "batch_size": 16, "epochs": 40, "freeze_depth": {"low": 0, "high": 1},
    })
    parent = subprocess.Popen(
        [sys.executable, "-m", "hpo", "launch", str(path), "--workers", "2"], cwd=path.parent,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    started = 0
    for line in parent.stdout:
        started += "started" in line
        if started == 2:
            break
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=60) == 130
    states = [t.state for t in trials(path)]
    assert states and TrialState.RUNNING not in states, states


@pytest.mark.serial
def test_a_deferred_sigterm_that_the_trial_never_acts_on_still_stops_the_worker_in_time(tmp_path):
    """A checkpointing trial defers SIGTERM to its next step; one stuck elsewhere is stopped after the wait."""
    study = sleepy_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=1)
    process = start(study, 0, 60, "deferred")
    wait_for_trial(process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    took = time.monotonic() - sent
    assert 1.4 < took < 10, f"exited {took:.1f} s after SIGTERM; the wait is 1.5 s"
    first, retry = trials(study)
    assert first.user_attrs["fail_reason"] == "preempted" and retry.state == TrialState.WAITING


def test_trial_groups_split_the_gpus_into_runs_of_processes_per_trial():
    from hpo.workers import plan_groups

    eight = [str(i) for i in range(8)]
    two = plan_groups(eight, None, 4)
    assert [(s.index, s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in two] == [(0, "gpu0-3", "0,1,2,3"), (1, "gpu4-7", "4,5,6,7")]
    assert [s.name for s in plan_groups(eight, None, 2)] == ["gpu0-1", "gpu2-3", "gpu4-5", "gpu6-7"]
    assert [s.name for s in plan_groups(["0", "2", "5", "7"], None, 2)] == ["gpu0+2", "gpu5+7"]
    assert [s.name for s in plan_groups(["GPU-a", "GPU-b"], None, 2)] == ["group-0"]
    doubled = plan_groups(["0", "1"], 2, 2)  # --workers with --gpus: that many trial groups on each run of GPUs
    assert [(s.index, s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in doubled] == [(0, "gpu0-1/0", "0,1"), (1, "gpu0-1/1", "0,1")]
    with pytest.raises(UserError, match=r"^runtime\.processes_per_trial is 4: 6 GPUs \(0,1,2,3,4,5\) do not split"):
        plan_groups(eight[:6], None, 4)
    with pytest.raises(UserError, match="processes_per_trial is 4: 2 GPUs"):
        plan_groups(["0", "1"], None, 4)


def test_cpu_trial_groups_share_the_cores(monkeypatch):
    from hpo.workers import plan_groups

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    groups = plan_groups(None, 2, 2, cpu_count=16)
    assert [(s.name, s.gpu, s.env["OMP_NUM_THREADS"]) for s in groups] == [("group-0", None, "4"), ("group-1", None, "4")]
    assert [s.env["OMP_NUM_THREADS"] for s in plan_groups(None, 3, 4, cpu_count=2)] == ["1"] * 3  # at least one
    assert plan_groups(None, None, 2, cpu_count=8)[0].env["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert plan_groups(None, 2, 2, cpu_count=16)[0].env["OMP_NUM_THREADS"] == "3"  # a user's setting wins
