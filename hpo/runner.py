"""The worker loop: claim a trial, run the objective, record the outcome.

The runner is handed an objective (any callable taking an Optuna trial and
returning a float) and never imports one. It owns what the objective must not
care about: the global budget, heartbeats, retries of dead workers' trials,
failure bookkeeping and progress events.

Like Optuna's ``_optimize.py``, a trial that raises is recorded as FAIL with
its reason before anything else happens; unlike it, the worker then goes on
with the next trial, because one out-of-memory configuration should not end a
night-long study.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import checkpoints
from hpo import optuna_compat as compat
from hpo import storage as storage_lib
from hpo.errors import FatalTrialError, GroupOutOfStep
from hpo.heartbeat import Heartbeat
from hpo.records import LostResult, LostResults, keep_lost_result
from hpo.resilient import call_with_retries
from hpo.watchdog import time_limit
from hpo.pruners import build_pruner
from hpo.samplers import build_sampler
from hpo.signals import Preempted, SignalGuard
from hpo.spec import StudySpec

log = logging.getLogger("hpo.runner")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Objective(Protocol):
    def __call__(self, trial: optuna.Trial) -> float: ...


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> "Counts":
        states = [t.state for t in trials]
        return cls(
            complete=states.count(TrialState.COMPLETE),
            pruned=states.count(TrialState.PRUNED),
            failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING),
            waiting=states.count(TrialState.WAITING),
        )


@dataclass(frozen=True)
class TrialEvent:
    """What a progress display needs after each trial, without touching the database again."""

    worker: str
    trial: FrozenTrial
    counts: Counts
    n_trials: int
    best: FrozenTrial | None
    elapsed: float
    reason: str | None = None


@dataclass
class WorkerOptions:
    name: str = "worker-0"
    index: int = 0  # distinguishes sampler seeds between parallel workers
    max_consecutive_failures: int = 3  # stop when every trial fails: the budget never shrinks then
    poll_interval: float = 2.0  # seconds between looks while other workers finish the last trials
    on_trial_start: Callable[[str, optuna.Trial], None] | None = None
    on_trial_end: Callable[[TrialEvent], None] | None = None
    on_study_open: Callable[[optuna.Study], None] | None = None  # once the study exists (the launch's dashboard note)
    stop: threading.Event = field(default_factory=threading.Event)
    # Take over SIGINT and SIGTERM while running (worker processes); see hpo.signals.
    handle_signals: bool = False


class TooManyFailures(RuntimeError):
    pass


@contextmanager
def _expected_warnings():
    """Silence Optuna's notes about APIs we use on purpose: heartbeats with ask/tell
    (we beat ourselves) and the experimental stale-trial helpers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=compat.HEARTBEAT_ASK_WARNING)
        yield


def open_study(spec: StudySpec, options: WorkerOptions, study_attrs: dict[str, Any]) -> optuna.Study:
    """Create the study or join it, refusing one that optimises the other way.

    Creation happens under the study's lock: workers starting at the same
    instant against a new database would otherwise race on the schema.
    """
    storage_lib.check_direction(spec.storage, spec.name, spec.direction)
    with storage_lib.budget_lock(spec.storage, spec.name), _expected_warnings():
        store = storage_lib.open_storage(
            spec.storage,
            heartbeat_interval=spec.heartbeat.interval,
            grace_period=spec.heartbeat.grace_period,
            stale_trial_callback=lambda study, trial: requeue(study, trial, "worker lost (no heartbeat)", spec),
        )
        probe = optuna.create_study(study_name=spec.name, storage=store, direction=spec.direction, load_if_exists=True)
        started = len(probe.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=spec.name,
        storage=store,
        # A different seed per worker and per launch, or resumed and parallel
        # workers would replay the same random draws.
        sampler=build_sampler(spec, seed=_sampler_seed(spec, options, started)),
        pruner=build_pruner(spec),
    )
    for key, value in study_attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def _sampler_seed(spec: StudySpec, options: WorkerOptions, started: int) -> int:
    """Distinct per worker, per host and per launch, yet repeatable for one worker on one host.

    Workers started by a scheduler (Kubernetes pods, Slurm tasks, compose
    replicas) all have index 0; their host names and worker names tell them apart.
    A ``sampler.seed`` in the study file is used as given by the first worker of
    a new study, so a one-worker study draws what ``TPESampler(seed=...)`` draws
    anywhere; every other worker derives its own from it, or all of them would
    draw the same random trials.
    """
    explicit = spec.sampler.options.get("seed")
    if explicit is not None and options.index == 0 and started == 0:
        return int(explicit)
    base = spec.seed if explicit is None else explicit
    identity = f"{base}/{options.index}/{options.name}/{socket.gethostname()}/{started}"
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big")


def requeue(study: optuna.Study, failed: FrozenTrial, reason: str, spec: StudySpec) -> None:
    """Queue a lost trial again with the same parameters, linked to the original.

    Keeps Optuna's ``failed_trial``/``retry_history`` system attributes, so
    ``RetryHeartbeatStaleTrialCallback.retried_trial_number`` works on our studies.
    With checkpoints, the retry inherits the latest one of its line (``resume_from``).
    """
    max_retry = spec.heartbeat.max_retry
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > max_retry:
        log.warning("trial %d lost (%s); not retried: %d retries already", failed.number, reason, max_retry)
        if spec.checkpoints is not None:
            checkpoints.release(checkpoints.open_store(spec.checkpoints), failed)
        return
    carried = {}
    if spec.checkpoints is not None:
        checkpoints.drop_unfinished(checkpoints.open_store(spec.checkpoints), failed)
        carried = checkpoints.carried(failed)
    log.warning("trial %d lost (%s); queued again with the same parameters%s", failed.number, reason,
                ", to resume from its checkpoint" if carried else "")
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=failed.params,
            distributions=failed.distributions,
            user_attrs={"retry_of": failed.number, "retry_reason": reason, **carried},
            system_attrs={"failed_trial": failed.system_attrs.get("failed_trial", failed.number), "retry_history": history},
        )
    )


def count(study: optuna.Study) -> Counts:
    return Counts.of(study.get_trials(deepcopy=False))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best first; ties keep trial order, so the earlier trial ranks higher."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)


def _claim(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """Take a waiting trial or create one, only while finished + running trials are under the budget.

    Counting and taking happen under one lock shared by every worker, which is
    what makes the budget exact; ``MaxTrialsCallback`` checks after the fact
    and overshoots by up to the number of workers minus one. The trial is born
    with a heartbeat (see ``ResilientRDBStorage``), so from the instant it
    exists it is either this worker's or, should the worker die, stale. A failure
    before it exists retries the whole claim; after, the trial is given back.
    """
    tid = None
    try:
        with storage_lib.budget_lock(spec.storage, spec.name), _expected_warnings():
            optuna.storages.fail_stale_trials(study)
            counts = count(study)
            if counts.finished + counts.running >= spec.n_trials:
                return None
            tid, popped = _take_or_create(study)
    except storage_lib.LockLost as exc:
        if tid is None:
            raise  # transient: the whole claim is tried again
        log.warning("%s; checking the budget again before trial id %s runs", exc, tid)
        if not _still_within_budget(study, spec, tid, popped):
            return _claim(study, spec)
    try:
        return compat.new_trial(study, tid)
    except BaseException as exc:
        _give_back(study, tid, popped, f"claim failed before the objective started: {_reason(exc)}")
        raise


def _take_or_create(study: optuna.Study) -> tuple[int, bool]:
    """A waiting trial (a retry) made RUNNING, or a new RUNNING trial; and whether it was popped.

    A waiting trial gets its heartbeat before it turns RUNNING, so it too is never
    RUNNING without one; the stale-trial check looks at RUNNING trials only.
    """
    store = compat.storage_of(study)
    for waiting in store.get_all_trials(compat.study_id(study), deepcopy=False, states=(TrialState.WAITING,)):
        tid = compat.trial_id(waiting)
        store.record_heartbeat(tid)
        try:
            if store.set_trial_state_values(tid, state=TrialState.RUNNING):
                return tid, True
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return store.create_new_trial(compat.study_id(study)), False


def _still_within_budget(study: optuna.Study, spec: StudySpec, tid: int, popped: bool) -> bool:
    """After a lost lock, keep the trial only if the budget, counted again under a new lock, allows it."""
    while True:
        try:
            with storage_lib.budget_lock(spec.storage, spec.name):
                counts = count(study)
                if counts.finished + counts.running <= spec.n_trials:
                    return True
                _give_back(study, tid, popped, "claim aborted: the study lock was lost and the budget was overshot")
                return False
        except storage_lib.LockLost:
            continue


def _give_back(study: optuna.Study, tid: int, popped: bool, reason: str) -> None:
    """Undo a claim whose objective never started: a retry goes back to the queue, a new trial is failed.

    Best effort: if the database is gone, the trial's heartbeat goes stale and
    another worker fails and re-queues it.
    """
    store = compat.storage_of(study)
    try:
        if popped:
            store.set_trial_state_values(tid, state=TrialState.WAITING)
        else:
            store.set_trial_user_attr(tid, "fail_reason", reason)
            store.set_trial_state_values(tid, state=TrialState.FAIL)
        log.warning("trial id %s given back (%s)", tid, reason)
    except Exception as exc:  # noqa: BLE001 - the heartbeat's staleness covers what this cannot do
        log.warning("could not give back trial id %s (%s); its heartbeat will go stale", tid, _reason(exc))


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


TRACEBACK_KEPT = 2000  # characters of a failed trial's traceback kept in its fail_traceback attribute


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    value: float | None = None
    reason: str | None = None
    traceback: str | None = None
    fatal: FatalTrialError | None = None  # an error every trial would hit: the worker stops after recording it
    restart: GroupOutOfStep | None = None  # a multi-process trial failed: the worker stops, its group restarts

    @property
    def retried(self) -> bool:
        """Lost through no fault of its configuration (SIGTERM, a lost rank): queued again, its checkpoint kept."""
        return self.reason == "preempted" or (self.restart is not None and self.restart.lost_rank)


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective, spec: StudySpec, guard: SignalGuard) -> Outcome:
    store = compat.storage_of(study)
    tid = compat.trial_id(trial)

    def hung() -> None:
        trial.set_user_attr("fail_reason", f"trial_timeout: hung past {spec.trial_timeout:g}s")
        store.set_trial_state_values(tid, TrialState.FAIL)

    with Heartbeat(store, tid, spec.heartbeat.interval, mask=lambda t: storage_lib.mask_text(t, spec.storage)):
        try:
            with guard.objective_running(), time_limit(spec.trial_timeout, hung):
                value = float(objective(trial))
        except optuna.TrialPruned:
            return Outcome(TrialState.PRUNED)
        except Preempted:
            return Outcome(TrialState.FAIL, reason="preempted")
        except KeyboardInterrupt:
            return Outcome(TrialState.FAIL, reason="interrupted")
        except Exception as exc:  # noqa: BLE001 - one bad trial must not end the study
            tail = traceback.format_exc()[-TRACEBACK_KEPT:]
            log.warning("trial %d failed: %s\n%s", trial.number, _reason(exc), tail.rstrip())
            cause = exc.__cause__ if isinstance(exc, GroupOutOfStep) and exc.__cause__ is not None else exc
            return Outcome(TrialState.FAIL, reason=_reason(cause), traceback=tail,
                           fatal=exc if isinstance(exc, FatalTrialError) else None,
                           restart=exc if isinstance(exc, GroupOutOfStep) else None)
    if math.isnan(value) or math.isinf(value):
        log.warning("trial %d failed: objective returned %s", trial.number, value)
        return Outcome(TrialState.FAIL, reason=f"objective returned {value}")
    return Outcome(TrialState.COMPLETE, value)


def _record(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, spec: StudySpec) -> tuple[FrozenTrial, bool]:
    """Tell the storage, riding out short outages; never lose a computed result silently.

    Returns the trial as stored and whether this worker's tell finished it (not,
    say, another worker's stale-trial check during a long pause).
    """
    store = compat.storage_of(study)
    tid = compat.trial_id(trial)
    try:
        current = store.get_trial(tid)
        ours = not current.state.is_finished()  # else someone else (a stale-trial check) finished it meanwhile
        if ours:
            if outcome.reason:
                trial.set_user_attr("fail_reason", outcome.reason)
            if outcome.traceback:
                trial.set_user_attr("fail_traceback", outcome.traceback)
            try:
                with _expected_warnings():
                    study.tell(trial, outcome.value if outcome.state == TrialState.COMPLETE else None, state=outcome.state)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                ours = False  # finished between our look and our tell; the state is read back below
        frozen = store.get_trial(tid)
        if frozen.state != outcome.state and outcome.value is not None:
            _keep_lost_result(study, spec, trial, outcome.value, frozen.state)
    except Exception:
        if outcome.value is not None:
            log.error(
                "trial %d finished with %s = %.6g (params %s) but the database could not record it",
                trial.number, spec.metric, outcome.value, trial.params,
            )
        raise
    return frozen, ours and frozen.state == outcome.state


def _keep_lost_result(study: optuna.Study, spec: StudySpec, trial: optuna.Trial, value: float, state: TrialState) -> None:
    log.warning(
        "trial %d finished with %s = %.6g but was already marked %s by another worker; "
        "the value is kept in the study attribute lost_results",
        trial.number, spec.metric, value, state.name,
    )
    entry = LostResult(value=value, params=trial.params)
    while True:
        try:
            with storage_lib.budget_lock(spec.storage, spec.name):  # two workers' read-modify-write must not interleave
                keep_lost_result(study, trial.number, entry)
            return
        except storage_lib.LockLost:
            if LostResults.of(study).trials.get(trial.number) == entry:
                return  # written, and not overwritten by a writer that slipped in while the lock was gone


def _tidy_checkpoints(study: optuna.Study, frozen: FrozenTrial, spec: StudySpec) -> None:
    """A trial that will not be resumed gives its checkpoints back; keep: best keeps the best one's end state."""
    if spec.checkpoints is None:
        return
    store = checkpoints.open_store(spec.checkpoints)
    checkpoints.release(store, frozen)
    if spec.checkpoints.keep == "best":
        with storage_lib.budget_lock(spec.storage, spec.name):
            checkpoints.keep_if_best(store, study, compat.storage_of(study).get_trial(compat.trial_id(frozen)))


def run_worker(
    spec: StudySpec, objective: Objective, options: WorkerOptions, study_attrs: dict[str, Any] | None = None
) -> Counts:
    """Run trials until the study's global budget is spent, the timeout passes or we are stopped."""
    guard = SignalGuard(options.stop)
    with guard.installed(options.handle_signals):
        counts = _work(spec, objective, options, study_attrs or {}, guard)
        guard.raise_pending()  # a signal that came between trials ends the worker now
    return counts


def _work(spec: StudySpec, objective: Objective, options: WorkerOptions, study_attrs: dict[str, Any], guard: SignalGuard) -> Counts:
    study = call_with_retries(
        lambda: open_study(spec, options, study_attrs), "opening the study", mask=lambda t: storage_lib.mask_text(t, spec.storage)
    )
    if options.on_study_open:
        options.on_study_open(study)
    start = time.monotonic()
    failures_in_row = 0
    while not options.stop.is_set():
        if spec.timeout is not None and time.monotonic() - start >= spec.timeout:
            log.info("%s: timeout of %ss reached", options.name, spec.timeout)
            break
        trial = call_with_retries(lambda: _claim(study, spec), "claiming a trial", mask=lambda t: storage_lib.mask_text(t, spec.storage))
        if trial is None:
            counts = count(study)
            if counts.finished >= spec.n_trials or counts.running == 0:
                break
            options.stop.wait(options.poll_interval)  # others may still fail and free a slot
            continue
        try:
            trial.set_user_attr("worker", options.name)  # which worker (and so which GPU) ran it
            if options.on_trial_start:
                options.on_trial_start(options.name, trial)
        except BaseException as exc:
            _give_back(study, compat.trial_id(trial), False, f"failed before the objective started: {_reason(exc)}")
            raise
        outcome = _run_one(study, trial, objective, spec, guard)
        frozen, ours = _record(study, trial, outcome, spec)
        reason = outcome.reason
        if ours and not outcome.retried:  # a retried trial's checkpoint is its retry's to resume
            _tidy_checkpoints(study, frozen, spec)
        if outcome.restart is not None and outcome.restart.lost_rank and ours:
            requeue(study, frozen, "a process of the trial was lost", spec)
        if reason in ("preempted", "interrupted"):
            if reason == "preempted" and ours:
                requeue(study, frozen, "preempted", spec)
            raise Preempted() if reason == "preempted" else KeyboardInterrupt()
        if options.on_trial_end:
            counts = count(study)
            options.on_trial_end(
                TrialEvent(options.name, frozen, counts, spec.n_trials, best_trial(study), time.monotonic() - start, reason)
            )
        if outcome.restart is not None:
            raise outcome.restart
        if outcome.fatal is not None:
            raise FatalTrialError(f"trial {trial.number} failed: {reason}; every trial would fail the same way") from outcome.fatal
        failures_in_row = failures_in_row + 1 if frozen.state == TrialState.FAIL else 0
        if failures_in_row >= options.max_consecutive_failures:
            raise TooManyFailures(f"{failures_in_row} trials in a row failed; the last one: {reason}")
    return count(study)
