"""What a person watching a study wants to know, read from the shared storage.

Everything here is computed from the study's trials alone (states,
intermediate values, the ``examples_seen`` / ``examples_total`` user attributes
an objective leaves on a running trial), never from the worker that runs them,
so one reader sees every worker of a study, on any machine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from hpo.runner import Counts


@dataclass(frozen=True)
class RunningTrial:
    number: int
    params: dict
    seconds: float  # since the trial started
    examples: int  # training examples seen so far
    total: int | None  # examples the trial will see if it is not pruned
    latest: float | None  # its latest validation score

    @property
    def fraction(self) -> float | None:
        return min(self.examples / self.total, 1.0) if self.total else None


@dataclass(frozen=True)
class Snapshot:
    counts: Counts
    n_trials: int
    best: FrozenTrial | None
    running: list[RunningTrial]
    elapsed: float  # seconds since the watcher started
    eta: float | None  # seconds until the budget is spent; None until there is a basis

    @property
    def remaining(self) -> int:
        return max(self.n_trials - self.counts.finished, 0)


def running_trial(trial: FrozenTrial, now: dt.datetime) -> RunningTrial:
    steps = trial.intermediate_values
    last = max(steps) if steps else None
    seen = max(int(trial.user_attrs.get("examples_seen") or 0), last or 0)
    total = trial.user_attrs.get("examples_total")
    return RunningTrial(
        number=trial.number,
        params=dict(trial.params),
        seconds=(now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0,
        examples=seen,
        total=int(total) if total else None,
        latest=steps[last] if last is not None else None,
    )


def best_of(trials: list[FrozenTrial], maximize: bool) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    return (max if maximize else min)(complete, key=lambda t: t.value)


def estimate_left(trials: list[FrozenTrial], running: list[RunningTrial], n_trials: int, since: dt.datetime, elapsed: float) -> float | None:
    """Seconds until the budget is spent, from the work done since the watcher started.

    Work is counted in trials: each finished trial is one, each running trial
    the fraction of its examples it has seen. With several workers the rate
    already includes their parallelism. Pruned trials end early, so this is
    an estimate and shown as one.
    """
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    done_here = sum(1 for t in finished if t.datetime_complete and t.datetime_complete >= since)
    partial = sum(r.fraction or 0.0 for r in running)
    work = done_here + partial
    if work <= 0.05 or elapsed <= 0:
        return None
    left = max(n_trials - len(finished) - partial, 0.0)
    return elapsed / work * left


def take(trials: list[FrozenTrial], n_trials: int, maximize: bool, since: dt.datetime, now: dt.datetime | None = None) -> Snapshot:
    """A snapshot of the study; ``since`` is when the watcher started (local time, as Optuna stores it)."""
    now = now or dt.datetime.now()
    running = [running_trial(t, now) for t in trials if t.state == TrialState.RUNNING]
    elapsed = max((now - since).total_seconds(), 0.0)
    counts = Counts.of(trials)
    eta = estimate_left(trials, running, n_trials, since, elapsed) if counts.finished < n_trials else 0.0
    return Snapshot(
        counts=counts,
        n_trials=n_trials,
        best=best_of(trials, maximize),
        running=sorted(running, key=lambda r: r.number),
        elapsed=elapsed,
        eta=eta,
    )
