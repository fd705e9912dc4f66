"""What a trial leaves on itself for whoever reads the study: its record, and how far it has got.

The record is written even for a pruned or failed trial (whatever it did),
one user attribute per fact so the dashboard lists them.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import optuna
import torch

from hpo.records import AdapterFacts, TrialRecord
from objectives import freezing
from objectives.runtime import Runtime
from objectives.training import TrainResult


def record_trial(trial: optuna.Trial, result: TrainResult, model, runtime: Runtime, wall: float,
                 adapter: dict[str, Any] | None, unit: str = "examples", devices: list[str] | None = None) -> None:
    trainable, total = freezing.count_parameters(model)
    best = result.best
    TrialRecord(
        wall_seconds=round(wall, 2),
        train_seconds=round(result.train_seconds, 2),
        eval_seconds=round(result.eval_seconds, 2),
        examples_seen=result.examples_seen,
        examples_per_second=round(result.examples_per_second, 2),
        train_loss=round(result.train_loss, 5) if result.train_loss == result.train_loss else None,
        trainable_parameters=trainable,
        trainable_fraction=round(trainable / total, 4),
        device=str(runtime.device),
        precision=runtime.precision,
        peak_memory_mb=peak_memory_mb(runtime.device),
        **gpu_memory(runtime.device),
        stopped_early=result.stopped_early,
        best_examples=best.examples if best else None,
        best_epoch=best.epoch if best else None,
        best_metrics={k: round(v, 5) for k, v in best.metrics.items()} if best else None,
        # Every metric at every point (the pruner sees one): to compare pruning
        # signals afterwards, or plot the validation loss beside the metric.
        curve={"examples": [p.examples for p in result.points],
               **{name: [round(p.metrics[name], 5) for p in result.points] for name in result.points[0].metrics}}
        if result.points else None,
        adapter=AdapterFacts(**adapter) if adapter else None,
        budget_unit=unit,
        processes=runtime.world,
        devices=devices,
        strategy=runtime.strategy if runtime.sharded else None,
    ).write(trial)


class ProgressNotes:
    """Leaves how far a running trial has got on the trial itself, for whoever watches the storage.

    ``examples_total`` once and ``examples_seen`` at most every few seconds, so
    a live view (``hpo launch`` in a terminal, the dashboard) shows a trial
    moving between evaluation points without the objective knowing who watches.
    """

    def __init__(self, trial: optuna.Trial, every: float = 5.0):
        self.trial = trial
        self.every = every
        self.seen = 0
        self.total: int | None = None
        self.last = time.monotonic()

    def batch(self, seen: int, total: int) -> None:
        self.seen = seen
        if total != self.total:
            self.total = total
            self.trial.set_user_attr("examples_total", total)
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.trial.set_user_attr("examples_seen", seen)

    def close(self, recorded: int) -> None:
        if self.seen > recorded:
            self.trial.set_user_attr("examples_seen", self.seen)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS


def gpu_memory(device: torch.device) -> dict[str, float]:
    """What ``--workers-per-gpu auto`` sizes a GPU's share by: the process's peak hold and the device's size."""
    if device.type != "cuda":
        return {}
    return {"peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "device_memory_mb": round(torch.cuda.get_device_properties(device).total_memory / 2**20, 1)}


def release_memory(runtime: Runtime) -> None:
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
