"""`hpo launch --workers/--gpus` starts a worker again when it dies of a crash or a hard trial_timeout.

Real worker processes (tests/sleepy_worker.py) under the real parent loop
(hpo.workers.run), on a real SQLite file.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo import workers
from test_workers import SLEEPY, sleepy_study

pytestmark = pytest.mark.slow


def test_which_exits_are_restarted():
    assert workers.respawn_reason(124) == "exited with 124 (a trial hung past trial_timeout)"
    assert workers.respawn_reason(-signal.SIGKILL) == "was killed by SIGKILL"
    assert workers.respawn_reason(-signal.SIGSEGV) == "crashed (SIGSEGV)"
    assert workers.respawn_reason(128 + signal.SIGABRT) == "crashed (SIGABRT)"
    for final in (0, 1, 2, 130, 143, -signal.SIGTERM, -signal.SIGINT):
        assert workers.respawn_reason(final) is None, final


def _slots(n: int) -> list[workers.WorkerSlot]:
    return [workers.WorkerSlot(i, f"w{i}", None) for i in range(n)]


def _sleepy(study: Path, seconds: float, *mode: str):
    return lambda slot: [sys.executable, str(SLEEPY), str(study), str(slot.index), str(seconds), *mode]


def _trials(study: Path, storage: str):
    import yaml

    return optuna.load_study(study_name=yaml.safe_load(study.read_text())["name"], storage=storage).trials


def _bounded(run, seconds: float = 120):
    """Run the parent loop with a watchdog that ends every worker if it overstays."""
    timer = threading.Timer(seconds, lambda: os.killpg(os.getpgid(0), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    try:
        return run()
    finally:
        timer.cancel()


def test_a_worker_that_hangs_past_the_hard_limit_is_started_again(tmp_path, monkeypatch, caplog):
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = sleepy_study(tmp_path, storage, n_trials=3, trial_timeout=1, heartbeat={"interval": 1, "grace_period": 3})
    monkeypatch.setenv("HPO_HARD_LIMIT_EXTRA", "1")
    caplog.set_level(logging.WARNING, logger="hpo.workers")
    code = _bounded(lambda: workers.run(str(study), storage, _slots(1), [], command=_sleepy(study, 0.2, "native-hang")))
    assert code == 0
    assert "worker w0 exited with 124 (a trial hung past trial_timeout); starting it again (1 of 3)" in caplog.text
    done = _trials(study, storage)
    assert done[0].state == TrialState.FAIL and done[0].user_attrs["fail_reason"].startswith("trial_timeout: hung")
    assert sum(t.state == TrialState.COMPLETE for t in done) == 3 and not any(t.state == TrialState.RUNNING for t in done)


def _kill_one_worker_in_a_trial(study: Path, storage: str, killed: list[int]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if sum(t.state == TrialState.RUNNING for t in _trials(study, storage)) == 2:  # both workers in a trial
                break
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.2)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(SLEEPY).encode() in cmdline and str(study).encode() in cmdline:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return


def test_a_worker_killed_with_sigkill_is_started_again_and_the_budget_stays_exact(tmp_path, caplog):
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = sleepy_study(tmp_path, storage, n_trials=4, heartbeat={"interval": 1, "grace_period": 3})
    caplog.set_level(logging.WARNING, logger="hpo.workers")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_worker_in_a_trial, args=(study, storage, killed), daemon=True)
    killer.start()
    code = _bounded(lambda: workers.run(str(study), storage, _slots(2), [], command=_sleepy(study, 2.0)))
    killer.join(5)
    assert killed and code == 0
    assert "was killed by SIGKILL; starting it again (1 of 3)" in caplog.text
    done = _trials(study, storage)
    assert sum(t.state == TrialState.COMPLETE for t in done) == 4
    assert not any(t.state == TrialState.RUNNING for t in done)
    assert any(t.user_attrs.get("retry_reason") == "worker lost (no heartbeat)" for t in done)


def test_a_stop_passed_to_children_that_exit_1_as_torchrun_does_still_exits_143(tmp_path):
    """torchrun, stopped by SIGTERM, exits 1: the parent of trial groups says 143 all the same."""
    child = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(1)); "
             f"pathlib.Path({str(tmp_path)!r}, sys.argv[1]).touch(); time.sleep(60)")

    def stop_when_started() -> None:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_started, daemon=True).start()
    code = _bounded(lambda: workers.run("unused.yaml", "sqlite://", _slots(2), [],
                                        command=lambda slot: [sys.executable, "-c", child, slot.name]), 60)
    assert code == 143


def test_the_parent_adds_a_worker_and_retires_one_after_its_trial_when_asked(tmp_path):
    """The hook ``--workers-per-gpu auto`` drives: one worker more at the first ask, the first one retired
    (SIGUSR1) at the second; the retired worker ends its trial, exits 0, and the other spends the budget."""
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = sleepy_study(tmp_path, storage, n_trials=6)
    asks: list[list[str]] = []

    def tend(running):
        asks.append([slot.name for slot in running])
        if len(asks) == 1:
            return [workers.WorkerSlot(1, "w1", None)], []
        if len(asks) == 2:
            return [], [slot for slot in running if slot.name == "w0"]
        return [], []

    code = _bounded(lambda: workers.run(str(study), storage, _slots(1), [], command=_sleepy(study, 1.0), tend=tend,
                                        tend_every=1.5))
    assert code == 0 and asks[:2] == [["w0"], ["w0", "w1"]], asks
    done = _trials(study, storage)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 6, "the budget is spent exactly, nothing cut short"
    by = [t.user_attrs["worker"] for t in done]
    assert by[0] == "w0" and by[-1] == "w1" and by.count("w0") < 4, by
