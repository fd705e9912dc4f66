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


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Errors in the label's own units (rmse, mae), explained variance (r2) and rank agreement
    (spearman, the STS-B convention): a model can rank pairs well while its scale is off."""
    labels = np.asarray(labels, dtype=float)
    predictions = np.asarray(predictions, dtype=float)
    errors = predictions - labels
    variance = float(((labels - labels.mean()) ** 2).sum()) if labels.size else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))) if labels.size else 0.0,
        "mae": float(np.mean(np.abs(errors))) if labels.size else 0.0,
        "r2": 1.0 - float((errors**2).sum()) / variance if variance > 0 else 0.0,
        "spearman": _pearson(_ranks(labels), _ranks(predictions)),
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a**2).sum() * (b**2).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0
