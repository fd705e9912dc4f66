"""The parent's side of ``--workers-per-gpu auto``: read what finished, start or retire workers per GPU.

``hpo.gpu_share`` decides from finished trials; this keeps, per GPU, when its
worker count changed, so that each trial is credited to the count it ran
under from start to end (one that straddled a change says nothing about
either), and turns the decisions into workers to start and workers to retire.
A retired worker is asked (SIGUSR1) to stop after its current trial, so no
work is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from hpo import gpu_share

log = logging.getLogger("hpo.workers")

LOOK_EVERY = 10.0  # seconds between reads of the study


@dataclass
class GpuShare:
    gpu: str
    workers: list[str] = field(default_factory=list)  # worker names on this GPU now, oldest first
    ever: set[str] = field(default_factory=set)  # and every one it had: a retired worker's trials still count
    changes: list[tuple[dt.datetime, int]] = field(default_factory=list)  # (when, worker count from then)
    settled: bool = False

    def sharing(self, start: dt.datetime, end: dt.datetime) -> int | None:
        """The worker count throughout [start, end], or None if it changed meanwhile."""
        level = None
        for when, count in self.changes:
            if when <= start:
                level = count
            elif when < end:
                return None
        return level


class AutoShare:
    """Workers per GPU for one launch; ``look`` returns what to change."""

    def __init__(self, study: optuna.Study, gpus: list[str], now=lambda: dt.datetime.now()):
        self.study, self.now = study, now
        self.gpus = {gpu: GpuShare(gpu) for gpu in gpus}

    def started(self, gpu: str, name: str) -> None:
        share = self.gpus[gpu]
        share.workers.append(name)
        share.ever.add(name)
        share.changes.append((self.now(), len(share.workers)))

    def retired(self, gpu: str, name: str) -> None:
        share = self.gpus[gpu]
        share.workers.remove(name)
        share.changes.append((self.now(), len(share.workers)))

    def look(self) -> tuple[list[str], list[str]]:
        """(GPUs to start one more worker on, names of workers to retire after their trial)."""
        by_worker = self._finished_by_worker()
        more, retire = [], []
        for share in self.gpus.values():
            if share.settled or not share.workers:
                continue
            decision = gpu_share.decide(self._finished_on(share, by_worker), len(share.workers))
            if decision.workers > len(share.workers):
                more.append(share.gpu)
            elif decision.workers < len(share.workers):
                retire.append(share.workers[-1])
            if decision.workers != len(share.workers) or decision.settled:
                log.info("gpu %s: %s", share.gpu, decision.why)
            share.settled = decision.settled
        return more, retire

    def _finished_by_worker(self) -> dict[str, list[optuna.trial.FrozenTrial]]:
        found: dict[str, list[optuna.trial.FrozenTrial]] = {}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            worker = trial.user_attrs.get("worker")
            if worker and trial.user_attrs.get("device_memory_mb"):
                found.setdefault(worker, []).append(trial)
        return found

    def _finished_on(self, share: GpuShare, by_worker) -> list[gpu_share.Finished]:
        finished = []
        for name in share.ever:
            for trial in by_worker.get(name, []):
                level = share.sharing(trial.datetime_start, trial.datetime_complete)
                attrs = trial.user_attrs
                if level is not None:
                    finished.append(gpu_share.Finished(level, float(attrs.get("examples_per_second") or 0.0),
                                                       float(attrs.get("peak_reserved_mb") or attrs["peak_memory_mb"]),
                                                       float(attrs["device_memory_mb"])))
        return finished
