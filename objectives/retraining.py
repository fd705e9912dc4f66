"""The model work behind ``hpo retrain``: more validation runs, retraining, the one test, saving.

The search side decides what to run (which configuration, which seeds, for
how long) and what to keep; these functions run it with the same training
loop as the trials, so a retrained model is trained exactly as the winner
was. The test split is evaluated here and only here, after the search side
has finished choosing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hpo.params import TrainingParams
from objectives.config import Hooks
from objectives.trial_notes import release_memory
from objectives.training import EvalPoint

if TYPE_CHECKING:
    from objectives.objective import Objective

log = logging.getLogger("objectives.retrain")


@dataclass(frozen=True)
class SeedResult:
    seed: int
    test: dict[str, float]  # every metric on the test split
    validation: dict[str, float] | None  # on train: the kept point's validation metrics
    train_examples: int  # size of the set trained on
    examples_seen: int
    epochs: float  # examples seen / train examples
    seconds: float


class _Progress:
    """Logs each quarter of a run and each epoch boundary, so a long retrain shows it is alive."""

    def __init__(self, what: str, n_train: int):
        self.what = what
        self.n_train = max(n_train, 1)
        self.quarter = 0
        self.epoch = 0

    def __call__(self, seen: int, total: int) -> None:
        quarter, epoch = 4 * seen // max(total, 1), seen // self.n_train
        if quarter > self.quarter or epoch > self.epoch:
            self.quarter, self.epoch = quarter, epoch
            log.info("%s: epoch %.2f, %d examples seen (stops at %d)", self.what, seen / self.n_train, seen, total)


class _BestWeights:
    """Keeps a CPU copy of what training changes (trainable weights and buffers) at the best
    validation point (retraining on train); a frozen base is not copied again and again."""

    def __init__(self, model: torch.nn.Module, metric: str, maximize: bool):
        self.model, self.metric, self.maximize = model, metric, maximize
        self.value: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def __call__(self, point: EvalPoint) -> None:
        value = point.metrics[self.metric]
        if self.value is None or (value > self.value if self.maximize else value < self.value):
            self.value = value
            changing = {n for n, p in self.model.named_parameters() if p.requires_grad}
            changing |= {n for n, _ in self.model.named_buffers()}
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items() if k in changing}

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state, strict=False)


def validation_run(objective: Objective, params: TrainingParams, seed: int) -> EvalPoint:
    """The configuration trained on train with another seed; its best validation point."""
    model = objective.new_model(params, seed)
    progress = _Progress(f"seed {seed} on train", len(objective.train))
    try:
        result = objective.train_model(model, params, seed, validation=objective.validation, hooks=Hooks(on_batch=progress))
    finally:
        objective.release(model)
        del model
        release_memory(objective.runtime)
    return result.best


def retrain(objective: Objective, params: TrainingParams, seed: int, *, on: str, epochs: float, directory: Path) -> SeedResult:
    """Train one seed, test it, save it with its tokenizer and label mapping into ``directory``.

    On train + validation, training stops after ``epochs`` (the winner's best
    point) and the learning-rate schedule ends there. On train, the full run
    is validated as in the search and the best point's weights are kept.
    """
    start = time.perf_counter()
    model = objective.new_model(params, seed)
    try:
        if on == "train+validation":
            train = type(objective.train).concat(objective.train, objective.validation)  # text or image batches
            limit = min(max(1, round(epochs * len(train))), len(train) * params.epochs)
            progress = _Progress(f"seed {seed} on train+validation", len(train))
            result = objective.train_model(model, params, seed, train=train, max_examples=limit, hooks=Hooks(on_batch=progress))
            kept = None
        else:
            train = objective.train
            evaluation = objective.eval_config()
            keeper = _BestWeights(model, evaluation.metric, evaluation.maximize)
            progress = _Progress(f"seed {seed} on train", len(train))
            result = objective.train_model(
                model, params, seed, validation=objective.validation, hooks=Hooks(on_eval=keeper, on_batch=progress)
            )
            keeper.restore()
            kept = dict(result.best.metrics) if result.best else None
        # In full precision even where training ran in bf16 autocast: the recorded test score is then
        # exactly what the exported (fp32) model scores as users load it.
        test = objective.evaluate(model, objective.test, fp32=True)
        objective.save(model, directory)
    finally:
        objective.release(model)
        del model
        release_memory(objective.runtime)
    seen = result.best.examples if kept is not None and result.best else result.examples_seen
    return SeedResult(
        seed=seed,
        test=test,
        validation=kept,
        train_examples=len(train),
        examples_seen=seen,
        epochs=round(seen / len(train), 4),
        seconds=round(time.perf_counter() - start, 2),
    )
