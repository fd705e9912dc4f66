"""The fine-tuning loop: optimizer, warmup + decay, evaluation by examples seen.

Evaluation points sit at fixed numbers of training examples (for example
every half epoch), not at optimizer steps, so a batch-32 trial and a batch-16
trial are compared after the same amount of data. The loop knows nothing of
Optuna: it calls ``hooks.on_eval`` at each point, and the objective decides
what a point means for the search (report, prune). Retraining reuses it as is.

The loss comes from the task's head rather than from the model, so that class
weights and label smoothing apply to every architecture.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from hpo.params import TrainingParams
from objectives.batching import batch_order
from objectives.config import EvalConfig, Hooks, TrainConfig
from objectives.heads import Head
from objectives.runtime import Runtime


@dataclass(frozen=True)
class EvalPoint:
    examples: int  # nominal examples seen: the step reported to the pruner
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


def _optimizer(model: torch.nn.Module, params: TrainingParams, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, SGD with momentum or Adafactor; no weight decay on biases and norms, as in the BERT recipe.

    Adafactor runs with an external learning rate (relative_step off), so the
    searched learning rate and the scheduler mean the same for all three.
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.learning_rate, momentum=params.momentum)
    if params.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=params.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(groups, lr=params.learning_rate, fused=device.type == "cuda")


def eval_targets(n_train: int, epochs: int, points_per_epoch: int) -> list[int]:
    """Examples-seen counts at which to evaluate: evenly spaced within every epoch."""
    return [round(n_train * (e + p / points_per_epoch)) for e in range(epochs) for p in range(1, points_per_epoch + 1)]


def _autocast(runtime: Runtime):
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None)


@torch.no_grad()
def evaluate(model, batches, head: Head, runtime: Runtime, config: EvalConfig) -> dict[str, float]:
    """Every metric of the task on one split; the loss is the plain (unweighted, unsmoothed) one,
    so that trials searching label smoothing or class weights are compared on the same scale."""
    model.eval()
    order = np.argsort(batches.lengths)  # similar lengths together: less padding
    predictions = np.empty(len(batches), dtype=head.prediction_dtype)
    loss_sum = 0.0
    for start in range(0, len(order), config.batch_size):
        indices = order[start : start + config.batch_size]
        batch = batches.batch(indices, runtime.device)
        labels = batch.pop("labels")
        with _autocast(runtime):
            logits = model(**batch).logits
        loss_sum += float(head.loss(logits, labels)) * len(indices)
        predictions[indices] = head.predict(logits).cpu().numpy()
    metrics = head.metrics(batches.labels, predictions, config.num_labels)
    metrics["loss"] = loss_sum / max(len(batches), 1)
    model.train()
    return metrics


@dataclass
class _Schedule:
    """How long a run is, in examples and optimizer steps, and where it is evaluated."""

    total_examples: int
    total_steps: int
    steps_per_epoch: int
    targets: list[int]

    @classmethod
    def of(cls, n_train: int, config: TrainConfig, evaluated: bool) -> "_Schedule":
        params = config.params
        total = n_train * params.epochs
        if config.max_examples is not None:
            total = min(total, config.max_examples)
        steps = max(1, math.ceil(total / (params.batch_size * params.gradient_accumulation_steps)))
        targets = [t for t in eval_targets(n_train, params.epochs, config.points_per_epoch) if t <= total] if evaluated else []
        return cls(total, steps, math.ceil(n_train / params.batch_size), targets)


def fine_tune(
    model: torch.nn.Module,
    train,
    validation,
    head: Head,
    config: TrainConfig,
    evaluation: EvalConfig,
    hooks: Hooks = Hooks(),
    result: TrainResult | None = None,
) -> TrainResult:
    """Train in place; evaluate at each target and remember the best point.

    ``result``, when given, is filled as training goes: a trial pruned from
    ``on_eval`` ends with an exception, and its caller still has its points,
    examples seen and seconds to record.

    ``config.max_examples`` stops training early at a fixed amount of data
    (retraining on train + validation stops where the winning trial was best).
    ``params.patience`` ends training after that many evaluation points
    without a new best (``stopped_early``); the best point stays the result.
    With ``gradient_accumulation_steps`` > 1 the optimizer steps once per that
    many batches, and the schedule counts optimizer steps.
    """
    from transformers import get_scheduler, set_seed

    params, runtime = config.params, config.runtime
    set_seed(config.seed)
    model.to(runtime.device).train()
    schedule = _Schedule.of(len(train), config, validation is not None)
    weights = torch.as_tensor(config.class_weights, dtype=torch.float32, device=runtime.device) if config.class_weights else None
    optimizer = _optimizer(model, params, runtime.device)
    scheduler = get_scheduler(
        params.lr_scheduler, optimizer, num_warmup_steps=round(params.warmup_ratio * schedule.total_steps),
        num_training_steps=schedule.total_steps,
    )
    scorer = _Scorer(validation, head, runtime, evaluation, hooks.on_eval, params.patience)
    rng = np.random.default_rng(config.seed)
    result = result if result is not None else TrainResult()
    # Per-step losses stay tensors: float() on each would wait for the GPU every step.
    losses: deque[torch.Tensor] = deque(maxlen=max(1, schedule.steps_per_epoch))
    accumulate = params.gradient_accumulation_steps
    seen = micro = 0  # micro: batches since the last optimizer step
    train_start = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for _ in range(params.epochs):
        for indices in batch_order(train.lengths, params.batch_size, rng, config.group_by_length):
            batch = train.batch(indices, runtime.device)
            labels = batch.pop("labels")
            with _autocast(runtime):
                logits = model(**batch).logits
            loss = head.loss(logits, labels, weights, params.label_smoothing)
            (loss / accumulate).backward()
            seen += len(indices)
            micro += 1
            if micro == accumulate or seen >= schedule.total_examples:
                torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                micro = 0
            losses.append(loss.detach())
            if hooks.on_batch:
                hooks.on_batch(seen, schedule.total_examples)
            while schedule.targets and seen >= schedule.targets[0] and not result.stopped_early:
                result.train_seconds += time.perf_counter() - train_start
                result.examples_seen = seen
                scorer.score(model, schedule.targets.pop(0), len(train), result, last=not schedule.targets)
                train_start = time.perf_counter()
            if seen >= schedule.total_examples or result.stopped_early:
                break
        if seen >= schedule.total_examples or result.stopped_early:
            break
    result.train_seconds += time.perf_counter() - train_start
    result.examples_seen = seen
    result.train_loss = float(torch.stack(list(losses)).float().mean()) if losses else float("nan")
    return result


@dataclass
class _Scorer:
    """Evaluates at one point, keeps the best point, and tells the caller."""

    validation: object
    head: Head
    runtime: Runtime
    config: EvalConfig
    on_eval: object = None
    patience: int | None = None
    stalled: int = 0  # evaluation points since the last new best

    def score(self, model, target: int, n_train: int, result: TrainResult, last: bool = False) -> None:
        start = time.perf_counter()
        metrics = evaluate(model, self.validation, self.head, self.runtime, self.config)
        result.eval_seconds += time.perf_counter() - start
        point = EvalPoint(examples=target, epoch=round(target / n_train, 4), metrics=metrics, last=last)
        result.points.append(point)
        if result.best is None or self._better(metrics[self.config.metric], result.best.metrics[self.config.metric]):
            result.best = point
            self.stalled = 0
        else:
            self.stalled += 1
        if self.on_eval:
            self.on_eval(point)  # may raise: a pruned trial ends here
        if self.patience is not None and self.stalled >= self.patience:
            result.stopped_early = True

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.config.maximize else value < best
