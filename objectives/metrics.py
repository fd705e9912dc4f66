"""Classification metrics, in numpy, so the objective does not need scikit-learn.

Macro averages treat every class alike, which is what a user with an
imbalanced label set wants from ``f1``, ``precision`` and ``recall``.
"""

from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]:
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_pos = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    present = actual > 0  # classes absent from this split do not drag macro averages down
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "accuracy": float(true_pos.sum() / max(len(labels), 1)),
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "mcc": _mcc(confusion),
    }


def _mcc(confusion: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin 2004)."""
    total = confusion.sum()
    correct = np.trace(confusion)
    pred = confusion.sum(axis=0)
    true = confusion.sum(axis=1)
    cov_ytyp = correct * total - np.dot(pred, true)
    cov_ypyp = total**2 - np.dot(pred, pred)
    cov_ytyt = total**2 - np.dot(true, true)
    denom = np.sqrt(float(cov_ytyt) * float(cov_ypyp))
    return float(cov_ytyp / denom) if denom > 0 else 0.0
