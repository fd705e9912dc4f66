"""Progress of a running study, in three voices.

- ``LineProgress``: one line per event, for logs, CI and anything that is not a terminal.
- ``hpo.live.LiveProgress``: a panel redrawn in place, for a person at a terminal.
- ``QuietProgress``: nothing; ``hpo launch --quiet`` prints errors and the final summary only.

``choose`` picks one. All three take the runner's callbacks and are context
managers, so ``hpo launch`` treats them alike.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.fmt import duration, format_params
from hpo.runner import TrialEvent
from hpo.spec import StudySpec


def outcome(trial: FrozenTrial, metric: str, reason: str | None = None, reported: str | None = None) -> str:
    """How a trial ended, in a few words: its value, where it was pruned (and the
    ``reported`` metric there, when ``pruner.metric`` differs), or why it failed."""
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return f"complete, {metric} {trial.value:.4f}"
    if trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None
        return f"pruned at {trial.last_step} examples" + (f" ({reported or metric} {last:.4f})" if last is not None else "")
    return f"{trial.state.name.lower()}: {reason or trial.user_attrs.get('fail_reason', '?')}"


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def trial_started(self, worker: str, trial: optuna.Trial) -> None:
        return None

    def trial_ended(self, event: TrialEvent) -> None:
        return None


class QuietProgress(_Quiet):
    """Says nothing while the study runs."""


class LineProgress(_Quiet):
    """One line per trial start and end, with study totals, best so far, elapsed time and an estimate."""

    def __init__(self, metric: str, stream: TextIO | None = None, reported: str | None = None):
        self.metric = metric
        self.reported = reported
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self.finished_here = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def trial_started(self, worker: str, trial: optuna.Trial) -> None:
        self._print(f"[{worker}] trial {trial.number} started")

    def trial_ended(self, event: TrialEvent) -> None:
        trial, counts = event.trial, event.counts
        best = f"best {event.best.value:.4f} (#{event.best.number})" if event.best else "no best yet"
        self.finished_here += 1
        elapsed = time.monotonic() - self.started
        left = max(event.n_trials - counts.finished, 0)
        eta = f", ~{duration(elapsed / self.finished_here * left)} left" if left and self.finished_here else ""
        self._print(
            f"[{event.worker}] trial {trial.number} {outcome(trial, self.metric, event.reason, self.reported)} | {best} | "
            f"{counts.finished}/{event.n_trials} finished ({counts.complete} complete, {counts.pruned} pruned, "
            f"{counts.failed} failed, {counts.running} running) | {duration(elapsed)} elapsed{eta} | "
            f"{format_params(trial.params)}"
        )


def is_terminal(stream: TextIO) -> bool:
    """A person is watching: a TTY that can redraw (not TERM=dumb, as in Emacs shells)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


def choose(spec: StudySpec, quiet: bool = False, live: bool = True, stream: TextIO | None = None):
    """Quiet if asked, a live panel in a terminal (unless ``live`` is off: a worker process of
    several shares its parent's terminal), lines otherwise."""
    stream = stream or sys.stdout
    if quiet:
        return QuietProgress()
    if live and is_terminal(stream):
        from hpo.live import LiveProgress

        return LiveProgress(spec)
    return LineProgress(spec.metric, stream, spec.pruning_metric)
