"""Every storage call a worker makes, failed before and after its effect: the study still ends exact.

The faults come from tests/faultproxy.py, on the real SQLite file and the real
PostgreSQL. Each case runs one or two in-process workers with a trivial
objective and checks what a user would: exactly ``n_trials`` finished, nothing
left RUNNING, no trial of the same parameters twice beyond declared retries,
every computed value in its trial or in ``lost_results``, and no worker hung
(each run is bounded).
"""

from __future__ import annotations

import logging
import threading
import traceback
import time
import uuid
from collections import Counter
from datetime import datetime

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import text

import faultproxy
from faultproxy import Fault, FaultPlan
from hpo import optuna_compat as compat
from hpo.records import LostResults
from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec

N_TRIALS = 4
BOUND = 60  # seconds a faulty run may take before it counts as a hang


def _spec(storage: str, n_trials: int = N_TRIALS, **extra):
    return parse_spec(
        {
            "name": f"faults-{uuid.uuid4().hex[:8]}",
            "storage": storage,
            "n_trials": n_trials,
            "model": "unused",
            "data": {"source": "demo"},
            "sampler": {"type": "random"},
            "pruner": {"type": "none"},
            "heartbeat": {"interval": 1, "grace_period": 3},
            "search_space": {
                "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                "batch_size": {"choices": [8, 16]},
                "epochs": 1,
                "freeze_depth": 0,
            },
            **extra,
        }
    )


class Objective:
    """Samples, reports twice, sets an attribute; remembers each value it computed."""

    def __init__(self, spec, seconds: float = 0.05, fail_first: bool = False):
        self.spec, self.seconds, self.fail_first = spec, seconds, fail_first
        self.computed: dict[int, float] = {}
        self.lock = threading.Lock()

    def __call__(self, trial):
        params = self.spec.sample(trial)
        trial.report(params.learning_rate, step=1)
        trial.set_user_attr("examples_seen", 10)
        time.sleep(self.seconds)
        trial.report(params.learning_rate * 2, step=2)
        if self.fail_first and trial.number == 0:
            raise RuntimeError("simulated out of memory")
        with self.lock:
            self.computed[trial.number] = params.learning_rate
        return params.learning_rate


def _run(spec, objective, workers: int = 1) -> list[BaseException]:
    errors: list[BaseException] = []
    stops = [threading.Event() for _ in range(workers)]

    def work(i: int) -> None:
        try:
            run_worker(spec, objective, WorkerOptions(name=f"w{i}", index=i, poll_interval=0.2, stop=stops[i]), {"metric": spec.metric})
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            traceback.print_exc()
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + BOUND
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        for stop in stops:
            stop.set()
        raise AssertionError(f"a worker hung past {BOUND}s")
    return errors


def assert_exact(spec, objective: Objective, lost_workers: int = 0) -> list[optuna.trial.FrozenTrial]:
    """The user's view of a study after faults; ``lost_workers`` trials may have been retried
    (the only retries a test without dead workers may show is none: a fault is not a lost worker)."""
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    trials = study.trials
    states = Counter(t.state for t in trials)
    summary = [(t.number, t.state.name, t.user_attrs.get("fail_reason"), t.params.get("learning_rate")) for t in trials]
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == spec.n_trials, summary
    assert states[TrialState.RUNNING] == 0, summary
    originals = Counter(tuple(sorted(t.params.items())) for t in trials if t.params and "retry_of" not in t.user_attrs)
    assert max(originals.values()) == 1, summary
    retries = Counter(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs)
    assert all(n <= spec.heartbeat.max_retry for n in retries.values()), summary
    assert sum(retries.values()) == lost_workers, summary
    lost = LostResults.of(study).trials
    by_number = {t.number: t for t in trials}
    for number, value in objective.computed.items():
        kept = by_number[number].state == TrialState.COMPLETE and by_number[number].value == value
        assert kept or (number in lost and lost[number].value == value), (number, value, summary)
    return trials


def _state_is(state):
    return lambda args: args[1] == state


def _template_state(state):
    return lambda args: (args[1].state if len(args) > 1 and args[1] is not None else TrialState.RUNNING) == state


# (step of a trial's life, storage method, which calls); each is failed before and after its effect.
STEPS = {
    "open": ("create_new_study", None),
    "open-attrs": ("set_study_user_attr", None),
    "count": ("_get_trials", None),
    "ask": ("_create_new_trial", _template_state(TrialState.RUNNING)),
    "heartbeat": ("record_heartbeat", None),
    "report": ("set_trial_intermediate_value", None),
    "sample": ("_set_trial_param", None),
    "set_user_attr": ("set_trial_user_attr", None),
    "tell": ("set_trial_state_values", _state_is(TrialState.COMPLETE)),
    "tell-fail": ("set_trial_state_values", _state_is(TrialState.FAIL)),
}


@pytest.fixture
def faults(monkeypatch):
    def make(url: str, *fault_list: Fault) -> FaultPlan:
        return faultproxy.install(monkeypatch, FaultPlan(list(fault_list), url=url))

    yield make
    faultproxy.uninstall()


def _sqlite(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'faults.db'}"


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_failed_storage_call_leaves_the_study_exact(tmp_path, faults, step, when):
    method, match = STEPS[step]
    spec = _spec(_sqlite(tmp_path))
    plan = faults(spec.storage, Fault(method, when, nth=2 if step in ("ask", "report", "heartbeat") else 1, match=match))
    objective = Objective(spec, fail_first=step == "tell-fail")
    assert _run(spec, objective) == []
    assert plan.fired == 1, plan.log
    assert_exact(spec, objective)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", ["count", "ask", "tell"])
def test_claim_and_tell_faults_on_postgresql(postgres_url, faults, step, when):
    method, match = STEPS[step]
    spec = _spec(postgres_url)
    plan = faults(spec.storage, Fault(method, when, nth=2, match=match))
    objective = Objective(spec)
    assert _run(spec, objective, workers=2) == []
    assert plan.fired == 1, plan.log
    assert_exact(spec, objective)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", ["lock", "unlock"])
def test_a_dropped_lock_connection_aborts_the_claim_instead_of_racing_on(postgres_url, faults, step, when):
    """'after' on the lock: PostgreSQL really drops the lock's connection while the claim counts under it."""
    spec = _spec(postgres_url)
    plan = faults(spec.storage, Fault(step, when, nth=3, times=2))
    objective = Objective(spec)
    assert _run(spec, objective, workers=2) == []
    assert plan.fired == 2, plan.log
    assert_exact(spec, objective)


def _orphan(spec) -> None:
    """A trial whose worker died right after claiming it: RUNNING, sampled, its heartbeat never renewed."""
    from hpo import storage as storage_lib

    store = storage_lib.open_storage(spec.storage, heartbeat_interval=spec.heartbeat.interval, grace_period=spec.heartbeat.grace_period)
    study = optuna.create_study(study_name=spec.name, storage=store, direction=spec.direction)
    tid = compat.storage_of(study).create_new_trial(compat.study_id(study))
    spec.sample(compat.new_trial(study, tid))
    with store.engine.begin() as conn:  # its last beat, long ago
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id = :id"), {"t": datetime(2000, 1, 1), "id": tid})


DEAD_WORKER_CASES = [(step, when, "sqlite") for step in ("requeue", "pop", "pop-beat") for when in ("before", "after")] + [
    ("pop", when, "postgresql") for when in ("before", "after")  # taking a retry is part of the claim, under the lock
]


@pytest.mark.parametrize("step, when, backend", DEAD_WORKER_CASES)
def test_a_dead_workers_trial_is_retried_once_through_faults(tmp_path, request, faults, step, when, backend):
    spec = _spec(_sqlite(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgres_url"))
    _orphan(spec)
    fault = {
        "requeue": Fault("_create_new_trial", when, match=_template_state(TrialState.WAITING)),
        "pop": Fault("set_trial_state_values", when, match=_state_is(TrialState.RUNNING)),
        "pop-beat": Fault("record_heartbeat", when, nth=1),
    }[step]
    plan = faults(spec.storage, fault)
    objective = Objective(spec)
    assert _run(spec, objective) == []
    assert plan.fired == 1, plan.log
    trials = assert_exact(spec, objective, lost_workers=1)
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[0].params


def test_a_long_outage_in_the_claim_ends_the_worker_and_leaves_nothing_running(tmp_path, faults, monkeypatch):
    """Past the worker's patience it gives up (a one-line error), and the trial it had made is not left RUNNING."""
    from hpo.errors import StorageError

    spec = _spec(_sqlite(tmp_path))
    # The trial is made; then every read of it (the sampler's start of trial) fails for good.
    faults(spec.storage, Fault("get_trial", "before", nth=1, times=10_000))
    monkeypatch.setattr(faultproxy.FaultyStorage, "patience", 1.0)
    errors = _run(spec, Objective(spec))
    assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
    faultproxy.uninstall()
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert "claim failed before the objective started" in study.trials[0].user_attrs["fail_reason"]


def test_a_failed_trial_keeps_the_end_of_its_traceback_and_logs_it_as_a_warning(tmp_path, caplog):
    spec = _spec(_sqlite(tmp_path), n_trials=2)

    def deep(n):
        if n == 0:
            raise RuntimeError("CUDA out of memory (simulated)") from ValueError("allocator state " + "y" * 2500)
        deep(n - 1)

    def objective(trial):
        spec.sample(trial)
        if trial.number == 0:
            deep(50)
        return 0.5

    with caplog.at_level(logging.WARNING, logger="hpo.runner"):
        run_worker(spec, objective, WorkerOptions())
    failed = optuna.load_study(study_name=spec.name, storage=spec.storage).trials[0]
    kept = failed.user_attrs["fail_traceback"]
    assert len(kept) == 2000 and kept.rstrip().endswith("RuntimeError: CUDA out of memory (simulated)") and "in deep" in kept
    assert "trial 0 failed: RuntimeError: CUDA out of memory" in caplog.text
    assert any(r.levelno == logging.WARNING and "in deep" in r.getMessage() for r in caplog.records)


def test_an_error_that_dooms_every_trial_stops_the_worker_at_the_first(tmp_path):
    from hpo.errors import FatalTrialError, UserError
    from objectives.errors import ObjectiveError

    assert issubclass(ObjectiveError, FatalTrialError) and issubclass(FatalTrialError, UserError)  # exit code 2 at the edge
    spec = _spec(_sqlite(tmp_path), n_trials=5)

    def objective(trial):
        spec.sample(trial)
        raise ObjectiveError("data: no column 'text' in train.csv (columns: review, stars)")

    with pytest.raises(FatalTrialError, match="trial 0 failed: ObjectiveError: data: no column 'text'"):
        run_worker(spec, objective, WorkerOptions())
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert trials[0].user_attrs["fail_reason"].startswith("ObjectiveError: data: no column 'text'")


def test_heartbeat_errors_log_their_message(tmp_path, faults, monkeypatch, caplog):
    spec = _spec(_sqlite(tmp_path), n_trials=1)
    faults(spec.storage, Fault("record_heartbeat", "before", nth=1, times=3))
    monkeypatch.setattr(faultproxy.FaultyStorage, "patience", 0.0)
    with caplog.at_level(logging.WARNING, logger="hpo.heartbeat"):
        assert _run(spec, Objective(spec, seconds=2.5)) == []
    assert "failed (StorageError: storage: record_heartbeat failed for 0s: server closed the connection unexpectedly)" in caplog.text
