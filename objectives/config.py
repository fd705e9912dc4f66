"""Typed settings of one training run, built once from the study and the trial's parameters.

The loop takes these three objects instead of a long list of keywords, so a
new setting is one field here and one line where it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from hpo.params import TrainingParams
from objectives.runtime import Runtime


@dataclass(frozen=True)
class TrainConfig:
    params: TrainingParams
    runtime: Runtime
    seed: int
    points_per_epoch: int = 2  # evaluation points per epoch, placed by examples seen
    group_by_length: bool = True
    class_weights: tuple[float, ...] | None = None
    max_examples: int | None = None  # stop after this much data (retraining on train + validation)


@dataclass(frozen=True)
class EvalConfig:
    metric: str  # which metric picks the best point
    maximize: bool
    num_labels: int
    batch_size: int = 64


class Checkpointing(Protocol):
    def boundary(self, at_point: bool, capture: Callable[[], dict]) -> None:
        """An optimizer-step boundary (``at_point``: an evaluation point came since the last one);
        calls ``capture`` and saves when a checkpoint is due; may raise to stop (preemption)."""


@dataclass(frozen=True)
class Hooks:
    """What the caller wants to hear while training: the search reports and prunes, retrain logs."""

    on_eval: Callable | None = None  # called with each EvalPoint; may raise to stop (a pruned trial)
    on_batch: Callable[[int, int], None] | None = None  # (examples seen, examples in all)
    checkpoint: Checkpointing | None = None  # offered the run's state at each optimizer step
