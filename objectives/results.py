"""What a training run produced so far: its evaluation points and counters.

Kept apart from the loop so that a checkpoint (objectives.loop_state) can hold
and rebuild them without importing the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalPoint:
    examples: int  # nominal budget units seen (examples, or tokens): the step reported to the pruner
    epoch: float
    metrics: dict[str, float]
    last: bool = False  # no scheduled point follows: the training is done


@dataclass
class TrainResult:
    points: list[EvalPoint] = field(default_factory=list)
    best: EvalPoint | None = None
    examples_seen: int = 0
    train_loss: float = float("nan")
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped_early: bool = False

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0
