"""Progress lines for long studies: one line per event, readable in a terminal and in a log file."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import optuna

from hpo.fmt import duration, format_params
from hpo.runner import TrialEvent


class LineProgress:
    """Prints trial starts and ends with study totals, best so far, elapsed time and an estimate."""

    def __init__(self, metric: str, stream: TextIO = sys.stdout):
        self.metric = metric
        self.stream = stream
        self.started = time.monotonic()
        self.finished_here = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def trial_started(self, worker: str, trial: optuna.Trial) -> None:
        self._print(f"[{worker}] trial {trial.number} started")

    def trial_ended(self, event: TrialEvent) -> None:
        trial, counts = event.trial, event.counts
        state = trial.state.name.lower()
        if trial.value is not None and trial.state.name == "COMPLETE":
            outcome = f"{state}, {self.metric} {trial.value:.4f}"
        elif trial.state.name == "PRUNED":
            last = trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None
            outcome = f"pruned at {trial.last_step} examples" + (f" ({self.metric} {last:.4f})" if last is not None else "")
        else:
            outcome = f"{state}: {event.reason or trial.user_attrs.get('fail_reason', '?')}"
        best = f"best {event.best.value:.4f} (#{event.best.number})" if event.best else "no best yet"
        self.finished_here += 1
        elapsed = time.monotonic() - self.started
        left = max(event.n_trials - counts.finished, 0)
        eta = f", ~{duration(elapsed / self.finished_here * left)} left" if left and self.finished_here else ""
        self._print(
            f"[{event.worker}] trial {trial.number} {outcome} | {best} | "
            f"{counts.finished}/{event.n_trials} finished ({counts.complete} complete, {counts.pruned} pruned, "
            f"{counts.failed} failed, {counts.running} running) | {duration(elapsed)} elapsed{eta}\n"
            f"    {format_params(trial.params)}"
        )
