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


class Head(Protocol):
    numeric_labels: bool  # labels are numbers (regression targets), not class names
    prediction_dtype: type

    def configure(self, config, label_names: list[str]): ...

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor: ...

    def predict(self, logits: torch.Tensor) -> torch.Tensor: ...

    def metrics(self, labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]: ...


@dataclass(frozen=True)
class ClassificationHead:
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


@dataclass(frozen=True)
class RegressionHead:
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
