"""What sits on top of the body: how a head is configured, its loss, its predictions, its metrics.

A task composes one head with one kind of inputs (``objectives.task``). The
training loop and the evaluation call the head and never ask which task they
run, so a new head (token-level language modelling, say) is one class here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from objectives.metrics import classification_metrics, regression_metrics


class Evaluator(Protocol):
    """Collects one split's outputs batch by batch; the head's metrics come out at the end."""

    def add(self, indices: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None: ...

    def metrics(self) -> dict[str, float]: ...


class Head(Protocol):
    numeric_labels: bool  # labels are numbers (regression targets), not class names
    prediction_dtype: type

    def new_modules(self, missing: list[str]) -> list[str]: ...  # modules to initialise from the trial's seed

    def trained_modules(self, model, missing: list[str]) -> list[str]: ...  # trained in full beside an adapter

    def evaluator(self, labels: np.ndarray, num_labels: int) -> Evaluator: ...

    # Beyond the forward pass; synced: the model is sharded, and every process must run the same forwards.
    def extra_metrics(self, model, batches, device, batch_size: int, synced: bool = False) -> dict[str, float]: ...

    def configure(self, config, label_names: list[str]): ...

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor: ...

    def predict(self, logits: torch.Tensor) -> torch.Tensor: ...

    def metrics(self, labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]: ...


class _PerExample:
    """One prediction per example, scored at the end; the loss is the plain mean over examples."""

    def __init__(self, head, labels: np.ndarray, num_labels: int):
        self.head, self.labels, self.num_labels = head, labels, num_labels
        self.predictions = np.empty(len(labels), dtype=head.prediction_dtype)
        self.loss_sum = 0.0

    def add(self, indices, logits, labels) -> None:
        self.loss_sum += float(self.head.loss(logits, labels)) * len(indices)
        self.predictions[indices] = self.head.predict(logits).cpu().numpy()

    def metrics(self) -> dict[str, float]:
        metrics = self.head.metrics(self.labels, self.predictions, self.num_labels)
        metrics["loss"] = self.loss_sum / max(len(self.labels), 1)
        return metrics


class _NewHead:
    """A head the checkpoint does not have: initialised per trial, trained in full beside an adapter."""

    def extra_metrics(self, model, batches, device, batch_size: int, synced: bool = False) -> dict[str, float]:
        return {}

    def new_modules(self, missing: list[str]) -> list[str]:
        return list(missing)

    def trained_modules(self, model, missing: list[str]) -> list[str]:
        """Modules outside the base model (the task head), and any the checkpoint lacked (a
        pooler that a sentence encoder has no weights for)."""
        base = getattr(model, "base_model", model)
        outside = [name for name, child in model.named_children() if child is not base and any(True for _ in child.parameters())]
        return sorted(set(outside) | set(missing))


@dataclass(frozen=True)
class ClassificationHead(_NewHead):
    """Cross-entropy over classes, optionally weighted per class and smoothed."""

    numeric_labels: bool = False
    prediction_dtype: type = np.int64

    def configure(self, config, label_names: list[str]):
        """Attributes set one by one: a config validates each change, and a checkpoint
        trained for regression would refuse the pair if set together."""
        config.problem_type = None  # the training loop decides the loss
        config.num_labels = len(label_names)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
        return config

    def loss(self, logits, labels, weights=None, label_smoothing=0.0):
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=weights, label_smoothing=label_smoothing)

    def predict(self, logits):
        return logits.argmax(dim=-1)

    def metrics(self, labels, predictions, num_labels):
        return classification_metrics(labels, predictions, num_labels)

    def evaluator(self, labels, num_labels):
        return _PerExample(self, labels, num_labels)


@dataclass(frozen=True)
class RegressionHead(_NewHead):
    """One output and mean squared error; ``problem_type: regression`` tells a saved model's users."""

    numeric_labels: bool = True
    prediction_dtype: type = np.float64

    def configure(self, config, label_names: list[str]):
        config.problem_type = "regression"
        config.num_labels = 1
        return config

    def loss(self, logits, labels, weights=None, label_smoothing=0.0):
        return torch.nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())

    def predict(self, logits):
        return logits.squeeze(-1).float()

    def metrics(self, labels, predictions, num_labels):
        return regression_metrics(labels, predictions)

    def evaluator(self, labels, num_labels):
        return _PerExample(self, labels, num_labels)


IGNORE = -100  # the label of a token that is not scored (prompt, system turn, padding)


class _TokenMean:
    """Cross-entropy summed over scored tokens, divided by their count at the end."""

    def __init__(self):
        self.total, self.tokens = 0.0, 0

    def add(self, indices, logits, labels) -> None:
        loss, count = _token_losses(logits, labels)
        self.total += float(loss)
        self.tokens += int(count)

    def metrics(self) -> dict[str, float]:
        mean = self.total / max(self.tokens, 1)
        return {"loss": mean, "perplexity": float(np.exp(min(mean, 50.0)))}


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, scored tokens): position t predicts token t + 1, as a causal model is trained.

    The labels are shifted, not the logits: a slice of the logits would be copied whole (a batch
    of 8 x 128 tokens over a 30k vocabulary is 125 MB), and its gradient again.
    """
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE).reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, ignore_index=IGNORE,
                                             reduction="sum")
    return loss, (targets != IGNORE).sum()


@dataclass(frozen=True)
class LanguageModelHead:
    """The model's own next-token head: nothing new to initialise, the loss on completion tokens only.

    The loss is the mean over every scored token of the batch (not of each
    example), so a long completion weighs by its length, as in TRL's SFT.
    """

    numeric_labels: bool = False
    prediction_dtype: type = np.int64

    def configure(self, config, label_names: list[str]):
        return config

    def new_modules(self, missing: list[str]) -> list[str]:
        return []  # a tied output layer shows as missing; it is the embeddings, not a new head

    def trained_modules(self, model, missing: list[str]) -> list[str]:
        return []

    def loss(self, logits, labels, weights=None, label_smoothing=0.0):
        total, count = _token_losses(logits, labels)
        return total / count.clamp(min=1)

    def evaluator(self, labels, num_labels):
        return _TokenMean()

    def extra_metrics(self, model, batches, device, batch_size: int, synced: bool = False) -> dict[str, float]:
        """exact_match and rouge_l on the split's decoding samples (``data.max_generation_samples``)."""
        samples = getattr(batches, "samples", None)
        if samples is None or not samples.prompts:
            return {}
        from objectives import generation

        predictions = generation.generate(model, samples, batches.decode, device, batch_size, synced)
        return generation.scores(predictions, samples.references)
