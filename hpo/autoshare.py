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
from typing import Callable

import optuna
from optuna.trial import TrialState

from hpo import gpu_share
from hpo.workers import WorkerSlot, pinned

log = logging.getLogger("hpo.workers")


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


def first_slots(gpus: list[str]) -> list[WorkerSlot]:
    """One worker per GPU to begin with, named for its GPU and its place there (gpu0-0)."""
    return [slot_on(gpu, 0, i) for i, gpu in enumerate(gpus)]


def slot_on(gpu: str, place: int, index: int) -> WorkerSlot:
    return pinned(index, f"gpu{gpu}-{place}", [gpu])


class AutoShare:
    """Workers per GPU for one launch; ``look`` says what to change, ``tend`` (hpo.workers.run's hook) does it.

    ``open_study`` opens the study, or returns None while no worker has created it yet.
    """

    def __init__(self, open_study: Callable[[], optuna.Study | None], gpus: list[str], now=lambda: dt.datetime.now()):
        self.open, self.now = open_study, now
        self.study: optuna.Study | None = None
        self.gpus = {gpu: GpuShare(gpu) for gpu in gpus}
        self.next_index = len(gpus)

    def tend(self, running: list[WorkerSlot]) -> tuple[list[WorkerSlot], list[WorkerSlot]]:
        """hpo.workers.run's hook: slots to start, and running slots to retire after their trial."""
        for slot in running:  # the first ones, started by the caller
            if slot.gpu in self.gpus and slot.name not in self.gpus[slot.gpu].ever:
                self.started(slot.gpu, slot.name)
        more, retire = self.look()
        new = []
        for gpu in more:
            slot = slot_on(gpu, len(self.gpus[gpu].ever), self.next_index)
            self.next_index += 1
            self.started(gpu, slot.name)
            new.append(slot)
        leaving = [slot for slot in running if slot.name in retire]
        for slot in leaving:
            self.retired(slot.gpu, slot.name)
        return new, leaving

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
        self.study = self.study or self.open()
        if self.study is None:
            return [], []
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
