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
from dataclasses import dataclass

import numpy as np
import torch

from hpo.params import TrainingParams
from objectives import loop_state, sharding
from objectives.batching import batch_order
from objectives.config import EvalConfig, Hooks, TrainConfig
from objectives.heads import Head
from objectives.results import EvalPoint, TrainResult
from objectives.runtime import Runtime


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
    so that trials searching label smoothing or class weights are compared on the same scale.

    Every process of a trial evaluates the whole split, in the same batches: under FSDP each forward
    gathers the weights from all of them, and generation runs until every process is done (synced)."""
    model.eval()
    order = np.argsort(batches.lengths)  # similar lengths together: less padding
    evaluator = head.evaluator(batches.labels, config.num_labels)
    for start in range(0, len(order), config.batch_size):
        indices = order[start : start + config.batch_size]
        batch = batches.batch(indices, runtime.device)
        labels = batch.pop("labels")
        with _autocast(runtime):
            logits = model(**batch).logits
        evaluator.add(indices, logits, labels)
    metrics = evaluator.metrics()
    with _autocast(runtime):
        metrics.update(head.extra_metrics(model, batches, runtime.device, config.batch_size, synced=runtime.fsdp))
    model.train()
    return metrics


def units_per_epoch(batches) -> int:
    """An epoch in the task's budget unit: examples, or (language models) completion tokens."""
    return int(batches.units.sum())


@dataclass
class _Schedule:
    """How long a run is, in budget units and optimizer steps, and where it is evaluated.

    The budget unit is what trials are compared by: examples for classifiers,
    completion tokens for language models, whose examples differ in length.
    Optimizer steps count batches of rows, so the learning-rate schedule is
    planned from the share of rows the unit budget covers.
    """

    per_epoch: int
    total: int
    total_steps: int
    steps_per_epoch: int
    targets: list[int]

    @classmethod
    def of(cls, train, config: TrainConfig, evaluated: bool) -> "_Schedule":
        params = config.params
        per_epoch = units_per_epoch(train)
        total = per_epoch * params.epochs
        if config.max_examples is not None:
            total = min(total, config.max_examples)
        rows = -(-total * len(train) // max(per_epoch, 1))  # integer ceil: rows == total when a row is a unit
        steps = max(1, math.ceil(rows / (params.batch_size * params.gradient_accumulation_steps)))
        targets = [t for t in eval_targets(per_epoch, params.epochs, config.points_per_epoch) if t <= total] if evaluated else []
        return cls(per_epoch, total, steps, math.ceil(len(train) / params.batch_size), targets)


def fine_tune(
    model: torch.nn.Module,
    train,
    validation,
    head: Head,
    config: TrainConfig,
    evaluation: EvalConfig,
    hooks: Hooks = Hooks(),
    result: TrainResult | None = None,
    resume: dict | None = None,
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

    ``hooks.checkpoint`` is offered the run's state at every optimizer-step
    boundary (it saves when due); ``resume`` is such a state (objectives.loop_state),
    from which the run goes on exactly as it would have without the stop.
    """
    from transformers import get_scheduler, set_seed

    params, runtime = config.params, config.runtime
    set_seed(config.seed)
    sharding.place(model, runtime).train()  # under FSDP: sharded here, before the optimizer sees its parameters
    schedule = _Schedule.of(train, config, validation is not None)
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
    position = loop_state.Position()
    if resume is not None:
        restored = loop_state.restore(resume, model, optimizer, scheduler, result, rank=runtime.rank,
                                      sharded=runtime.fsdp)
        position, scorer.stalled, schedule.targets = restored.position, restored.stalled, restored.targets
        losses.extend(torch.tensor(x) for x in restored.losses)

    def capture() -> dict:
        return loop_state.capture(model, optimizer, scheduler, position, losses, result, scorer.stalled, schedule.targets,
                                  sharded=runtime.fsdp)

    accumulate = params.gradient_accumulation_steps
    seen, micro = position.seen, 0  # micro: batches since the last optimizer step
    point_passed = False  # an evaluation point since the last boundary offered to hooks.checkpoint
    train_start = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # DDP wraps the model for the training forward; an FSDP model is already the sharded one.
    forward = _data_parallel(model, runtime.device) if runtime.sharded and not runtime.fsdp else model
    for epoch in range(position.epoch, params.epochs):
        if seen >= schedule.total or result.stopped_early:
            break
        if epoch == position.epoch and position.epoch_rng is not None:
            rng.bit_generator.state = position.epoch_rng  # the resumed epoch's batches, in the same order
        else:
            position = loop_state.Position(epoch=epoch, batch=0, epoch_rng=rng.bit_generator.state, seen=seen)
        batches = batch_order(train.lengths, params.batch_size, rng, config.group_by_length)
        for indices in batches[position.batch:]:
            local, share = _shard(indices, train.units, runtime)
            batch = train.batch(local, runtime.device)
            labels = batch.pop("labels")
            with _autocast(runtime):
                logits = forward(**batch).logits
            loss = head.loss(logits, labels, weights, params.label_smoothing)
            (loss * share / accumulate).backward()
            seen += int(train.units[indices].sum())
            micro += 1
            if micro == accumulate or seen >= schedule.total:
                sharding.clip_grad_norm(trainable, params.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                micro = 0
            losses.append(loss.detach())
            position.batch, position.seen = position.batch + 1, seen
            if hooks.on_batch:
                hooks.on_batch(seen, schedule.total)
            while schedule.targets and seen >= schedule.targets[0] and not result.stopped_early:
                result.train_seconds += time.perf_counter() - train_start
                result.examples_seen = seen
                scorer.score(model, schedule.targets.pop(0), schedule.per_epoch, result, last=not schedule.targets)
                point_passed = True
                train_start = time.perf_counter()
            if hooks.checkpoint is not None and micro == 0:
                result.train_seconds += time.perf_counter() - train_start
                result.examples_seen = seen
                hooks.checkpoint.boundary(point_passed, capture)  # may raise: a preempted trial, once saved
                point_passed = False
                train_start = time.perf_counter()
            if seen >= schedule.total or result.stopped_early:
                break
    result.train_seconds += time.perf_counter() - train_start
    result.examples_seen = seen
    result.train_loss = float(torch.stack(list(losses)).float().mean()) if losses else float("nan")
    return result


def _data_parallel(model, device):
    """DistributedDataParallel around the model for the training forward (gradients averaged across the
    trial's processes in backward); evaluation uses the bare model, the same on every rank."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _shard(indices: np.ndarray, units: np.ndarray, runtime: Runtime) -> tuple[np.ndarray, float]:
    """This process's part of a global batch, and the weight that makes the mean of the processes'
    gradients (DDP's all-reduce, FSDP's reduce-scatter) the gradient of the whole batch's loss.

    Each process takes every world-th row; its loss (a mean over its budget units:
    examples, or completion tokens) is scaled by world x its share of the batch's
    units, so unequal shares weigh what they hold. A batch with fewer rows than
    processes is trained whole by each (the mean of equal gradients is that gradient).
    """
    if not runtime.sharded or len(indices) < runtime.world:
        return indices, 1.0
    local = indices[runtime.rank :: runtime.world]
    return local, runtime.world * float(units[local].sum()) / float(units[indices].sum())


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

    def score(self, model, target: int, per_epoch: int, result: TrainResult, last: bool = False) -> None:
        start = time.perf_counter()
        metrics = evaluate(model, self.validation, self.head, self.runtime, self.config)
        result.eval_seconds += time.perf_counter() - start
        point = EvalPoint(examples=target, epoch=round(target / per_epoch, 4), metrics=metrics, last=last)
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
