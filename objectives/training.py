"""The fine-tuning loop: optimizer, warmup + decay, padding per batch, evaluation by examples seen.

Evaluation points sit at fixed numbers of training examples (for example
every half epoch), not at optimizer steps, so a batch-32 trial and a batch-16
trial are compared after the same amount of data. The loop knows nothing of
Optuna: it calls ``on_eval`` at each point, and the objective decides what a
point means for the search (report, prune). Retraining reuses it as is.

The loss is computed here from the logits rather than taken from the model,
so that class weights and label smoothing apply to every architecture, and a
model whose config says ``problem_type: regression`` gets mean squared error.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from hpo.params import TrainingParams
from objectives.metrics import classification_metrics, regression_metrics


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full fp32

    @property
    def precision(self) -> str:
        """As the study file spells it, for the trial's record."""
        return "fp32" if self.autocast_dtype is None else "bf16"


def pick_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = torch.device(device)
    if precision == "bf16" and not bf16_runs(dev):
        raise ValueError(f"runtime.precision bf16 is not supported on {dev}")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_is_faster(dev))
    return Runtime(device=dev, autocast_dtype=torch.bfloat16 if use_bf16 else None)


def bf16_runs(dev: torch.device) -> bool:
    """Whether bf16 autocast works at all here (on a CPU it always does, if slowly without native support)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu"


def bf16_is_faster(dev: torch.device) -> bool:
    """Whether ``precision: auto`` should pick bf16: only where the hardware multiplies in bf16.

    On a CPU with AVX512-BF16 or AMX, bf16 autocast trains MiniLM about 1.5x
    faster than fp32 (bench/precision.py); on one without, oneDNN emulates bf16
    and is slower than fp32, so auto keeps fp32 there. The CPU probes are
    private torch functions, hence the guarded lookups: a torch without them
    gets fp32.
    """
    if dev.type != "cpu":
        return bf16_runs(dev)  # a GPU that runs bf16 runs it natively
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


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


class Batcher:
    """Pads each batch to its own longest sequence, not to ``max_length``."""

    def __init__(self, dataset, pad_token_id: int):
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
        data = dataset.with_format(None)
        self.inputs = {c: data[c] for c in columns}
        self.labels = np.asarray(data["labels"])
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        self.lengths = np.asarray([len(ids) for ids in self.inputs["input_ids"]])

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, first: "Batcher", second: "Batcher") -> "Batcher":
        """Two tokenized splits as one training set (retraining on train + validation)."""
        joined = cls.__new__(cls)
        joined.inputs = {c: list(first.inputs[c]) + list(second.inputs[c]) for c in first.inputs}
        joined.labels = np.concatenate([first.labels, second.labels])
        joined.pad = dict(first.pad)
        joined.lengths = np.concatenate([first.lengths, second.lengths])
        return joined

    def _padded(self) -> dict[str, np.ndarray]:
        """Every row padded once to the longest, so that a batch is one slice.

        Building each batch row by row from Python lists cost about 5% of a
        CPU training step (bench/throughput.py); int32 halves the memory.
        """
        if getattr(self, "_matrices", None) is None:
            width = int(self.lengths.max()) if len(self.lengths) else 0
            self._matrices = {}
            for column, rows in self.inputs.items():
                matrix = np.full((len(rows), width), self.pad[column], dtype=np.int32)
                for i, row in enumerate(rows):
                    matrix[i, : len(row)] = row
                self._matrices[column] = matrix
        return self._matrices

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        width = int(self.lengths[indices].max())
        out = {
            column: to_device(matrix[indices, :width], device).long() for column, matrix in self._padded().items()
        }
        out["labels"] = label_tensor(self.labels[indices], device)
        return out


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy through pinned memory on CUDA, so the copy does not stall the CPU.

    A copy from ordinary (pageable) memory makes the CPU wait until the GPU has
    finished every step queued so far, so the CPU cannot queue the next step
    while the GPU runs this one. Pinning costs a memcpy into PyTorch's cached
    pinned buffers. The int32 -> long cast runs on the device, after the copy
    (casting first would make a pageable temporary again).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def label_tensor(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class ids as long, regression targets as float."""
    dtype = np.float32 if labels.dtype.kind == "f" else np.int64
    return to_device(np.asarray(labels, dtype=dtype), device)


def is_regression(model) -> bool:
    return getattr(getattr(model, "config", None), "problem_type", None) == "regression"


def task_loss(model, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy (optionally weighted and smoothed) for classes, mean squared error for regression."""
    if is_regression(model):
        return torch.nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
    return torch.nn.functional.cross_entropy(logits.float(), labels, weight=class_weights, label_smoothing=label_smoothing)


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


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_by_length: bool) -> list[np.ndarray]:
    """Shuffled batches; with grouping, each batch holds examples of similar length.

    Grouping sorts within random chunks ("megabatches") and then shuffles the
    batches, so padding shrinks while every epoch still sees different batches.
    A chunk is 50 batches, or fewer so that there are at least 4 chunks, as in
    Hugging Face's LengthGroupedSampler: with one chunk for the whole set (any
    set under 50 batches, the demo's included) every epoch got the same
    batches (each of texts of about one length) in a new order.
    """
    order = rng.permutation(len(lengths))
    if group_by_length:
        chunk = batch_size * max(1, min(len(order) // (batch_size * 4), 50))
        order = np.concatenate([part[np.argsort(-lengths[part], kind="stable")] for part in _slices(order, chunk)] or [order])
    batches = _slices(order, batch_size)
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _slices(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive slices of ``size``, the last may be shorter: batches, and chunks
    of whole batches (so that no batch straddles two sorted chunks)."""
    return [order[i : i + size] for i in range(0, len(order), size)]


def eval_targets(n_train: int, epochs: int, points_per_epoch: int) -> list[int]:
    """Examples-seen counts at which to evaluate: evenly spaced within every epoch."""
    return [round(n_train * (e + p / points_per_epoch)) for e in range(epochs) for p in range(1, points_per_epoch + 1)]


@torch.no_grad()
def evaluate(model, batcher: Batcher, runtime: Runtime, batch_size: int, num_labels: int) -> dict[str, float]:
    """Every metric of the task on one split; the loss is the plain (unweighted, unsmoothed) one,
    so that trials searching label smoothing or class weights are compared on the same scale."""
    model.eval()
    regression = is_regression(model)
    order = np.argsort(batcher.lengths)  # similar lengths together: less padding
    predictions = np.empty(len(batcher), dtype=np.float64 if regression else np.int64)
    loss_sum = 0.0
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = batcher.batch(indices, runtime.device)
        labels = batch.pop("labels")
        with torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None):
            logits = model(**batch).logits
        loss_sum += float(task_loss(model, logits, labels)) * len(indices)
        if regression:
            predictions[indices] = logits.squeeze(-1).float().cpu().numpy()
        else:
            predictions[indices] = logits.argmax(dim=-1).cpu().numpy()
    if regression:
        metrics = regression_metrics(batcher.labels, predictions)
    else:
        metrics = classification_metrics(batcher.labels, predictions, num_labels)
    metrics["loss"] = loss_sum / max(len(batcher), 1)
    model.train()
    return metrics


def fine_tune(
    model: torch.nn.Module,
    train: Batcher,
    validation: Batcher | None,
    params: TrainingParams,
    *,
    runtime: Runtime,
    seed: int,
    metric: str,
    maximize: bool,
    num_labels: int,
    points_per_epoch: int = 2,
    eval_batch_size: int = 64,
    max_examples: int | None = None,
    group_by_length: bool = True,
    on_eval: Callable[[EvalPoint], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    class_weights: list[float] | None = None,
    result: TrainResult | None = None,
) -> TrainResult:
    """Train in place; evaluate at each target and remember the best point.

    ``result``, when given, is filled as training goes: a trial pruned from
    ``on_eval`` ends with an exception, and its caller still has its points,
    examples seen and seconds to record.

    ``max_examples`` stops training early at a fixed amount of data (retraining
    on train + validation stops where the winning trial was best).
    ``params.patience`` ends training after that many evaluation points
    without a new best (``stopped_early``); the best point stays the result.
    With ``gradient_accumulation_steps`` > 1 the optimizer steps once per that
    many batches, and the schedule counts optimizer steps.
    """
    from transformers import get_scheduler, set_seed

    set_seed(seed)
    model.to(runtime.device).train()
    total_examples = len(train) * params.epochs
    if max_examples is not None:
        total_examples = min(total_examples, max_examples)
    steps_per_epoch = math.ceil(len(train) / params.batch_size)
    accumulate = params.gradient_accumulation_steps
    total_steps = max(1, math.ceil(total_examples / (params.batch_size * accumulate)))
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=runtime.device) if class_weights else None
    optimizer = _optimizer(model, params, runtime.device)
    scheduler = get_scheduler(
        params.lr_scheduler, optimizer, num_warmup_steps=round(params.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    targets = [t for t in eval_targets(len(train), params.epochs, points_per_epoch) if t <= total_examples]
    if validation is None:
        targets = []
    scorer = _Scorer(validation, runtime, eval_batch_size, num_labels, metric, maximize, on_eval, params.patience)
    rng = np.random.default_rng(seed)
    result = result if result is not None else TrainResult()
    # Per-step losses stay tensors: float() on each would wait for the GPU every step.
    losses: deque[torch.Tensor] = deque(maxlen=max(1, steps_per_epoch))
    seen = 0
    micro = 0  # batches since the last optimizer step
    train_start = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(params.epochs):
        for indices in batch_order(train.lengths, params.batch_size, rng, group_by_length):
            batch = train.batch(indices, runtime.device)
            labels = batch.pop("labels")
            with torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None):
                logits = model(**batch).logits
            loss = task_loss(model, logits, labels, weights, params.label_smoothing)
            (loss / accumulate).backward()
            seen += len(indices)
            micro += 1
            if micro == accumulate or seen >= total_examples:
                torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                micro = 0
            losses.append(loss.detach())
            if on_batch:
                on_batch(seen, total_examples)
            while targets and seen >= targets[0] and not result.stopped_early:
                result.train_seconds += time.perf_counter() - train_start
                result.examples_seen = seen
                scorer.score(model, targets.pop(0), len(train), result, last=not targets)
                train_start = time.perf_counter()
            if seen >= total_examples or result.stopped_early:
                break
        if seen >= total_examples or result.stopped_early:
            break
    result.train_seconds += time.perf_counter() - train_start
    result.examples_seen = seen
    result.train_loss = float(torch.stack(list(losses)).float().mean()) if losses else float("nan")
    return result


@dataclass
class _Scorer:
    """Evaluates at one point, keeps the best point, and tells the caller."""

    validation: Batcher | None
    runtime: Runtime
    batch_size: int
    num_labels: int
    metric: str
    maximize: bool
    on_eval: Callable[[EvalPoint], None] | None
    patience: int | None = None
    stalled: int = 0  # evaluation points since the last new best

    def score(self, model, target: int, n_train: int, result: TrainResult, last: bool = False) -> None:
        start = time.perf_counter()
        metrics = evaluate(model, self.validation, self.runtime, self.batch_size, self.num_labels)
        result.eval_seconds += time.perf_counter() - start
        point = EvalPoint(examples=target, epoch=round(target / n_train, 4), metrics=metrics, last=last)
        result.points.append(point)
        if result.best is None or self._better(metrics[self.metric], result.best.metrics[self.metric]):
            result.best = point
            self.stalled = 0
        else:
            self.stalled += 1
        if self.on_eval:
            self.on_eval(point)  # may raise: a pruned trial ends here
        if self.patience is not None and self.stalled >= self.patience:
            result.stopped_early = True

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.maximize else value < best
