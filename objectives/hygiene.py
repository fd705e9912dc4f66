"""Data hygiene: what was read, what was dropped and why, and what leaks between splits.

A search tuned on a validation split that repeats training examples rewards
memorising, and a test score on texts seen in training is not a test score.
These functions work on plain per-row keys (the text or text pair, or an
image's content hash) and labels, so every task shares them; the counts end up
in one ``DataReport`` that ``hpo validate`` prints and the study keeps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

# Warn when the most frequent class outnumbers the rarest by this factor.
IMBALANCE_RATIO = 3.0


def duplicate_rows(keys: Sequence[Hashable], labels: Sequence[Any]) -> tuple[list[int], int]:
    """Indices of exact repeats (same key and label) after their first occurrence, and how many
    distinct keys carry more than one label (conflicts are reported, never silently resolved)."""
    seen: set[tuple[Hashable, Any]] = set()
    repeats = []
    labels_of: dict[Hashable, set] = {}
    for index, (key, label) in enumerate(zip(keys, labels)):
        labels_of.setdefault(key, set()).add(label)
        if (key, label) in seen:
            repeats.append(index)
        else:
            seen.add((key, label))
    conflicts = sum(1 for values in labels_of.values() if len(values) > 1)
    return repeats, conflicts


def leaking_rows(keys: Sequence[Hashable], train_keys: set) -> list[int]:
    """Indices of rows whose key also occurs in train, whatever their label."""
    return [i for i, key in enumerate(keys) if key in train_keys]


@dataclass
class SplitReport:
    read: int = 0  # rows in the source
    empty_text: int = 0  # dropped: no text (or no image)
    missing_label: int = 0  # dropped: no label
    empty_completion: int = 0  # dropped (language models): no completion, or no assistant turn
    too_long: int = 0  # language models: rows over max_length, truncated or dropped (data.truncation)
    duplicates: int = 0  # exact repeats of a row of the same split (dropped if drop_duplicates)
    conflicting: int = 0  # distinct texts that carry more than one label (kept)
    leaking: int = 0  # rows whose text also occurs in train (dropped if drop_leaking)
    used: int = 0  # rows the search trains or scores on (after max_*_samples)
    labels: dict[str, int] = field(default_factory=dict)  # class -> rows, or a numeric summary

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DataReport:
    drop_duplicates: bool
    drop_leaking: bool
    splits: dict[str, SplitReport] = field(default_factory=dict)
    carved: bool = False  # validation carved from train
    notes: list[str] = field(default_factory=list)
    language_model: bool = False  # rows are prompts and completions: token lengths instead of labels

    def split(self, name: str) -> SplitReport:
        return self.splits.setdefault(name, SplitReport())

    def warnings(self) -> list[str]:
        """Imbalance and leaks a user should act on."""
        out = []
        for name, split in self.splits.items():
            counts = {k: v for k, v in split.labels.items() if isinstance(v, int)}
            if name == "train" and len(counts) >= 2 and min(counts.values()) > 0 and not self.language_model:
                big = max(counts, key=counts.get)
                small = min(counts, key=counts.get)
                ratio = counts[big] / counts[small]
                if ratio >= IMBALANCE_RATIO:
                    out.append(
                        f"imbalanced labels in {name}: {big!r} has {ratio:.1f}x the rows of {small!r}; "
                        "consider class_weights: balanced and metric f1 or balanced_accuracy"
                    )
            if split.leaking and not self.drop_leaking:
                out.append(f"{split.leaking} {name} rows also occur in train and were kept (data.drop_leaking: false)")
            if split.conflicting:
                out.append(f"{split.conflicting} texts in {name} carry more than one label")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "drop_duplicates": self.drop_duplicates,
            "drop_leaking": self.drop_leaking,
            "validation_carved_from_train": self.carved,
            **({"language_model": True} if self.language_model else {}),
            "splits": {name: split.as_dict() for name, split in self.splits.items()},
            "warnings": self.warnings(),
            "notes": list(self.notes),
        }


def label_counts(labels: Sequence[Any], names: list[str] | None) -> dict[str, int]:
    """Rows per class, by name, in the order of the class ids."""
    counts = Counter(labels)
    if names:
        return {name: int(counts.get(i, 0)) for i, name in enumerate(names)}
    return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def numeric_summary(values: Sequence[float]) -> dict[str, float]:
    """For a regression target: enough to see its scale and spread."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {}
    return {
        "min": round(float(array.min()), 4),
        "mean": round(float(array.mean()), 4),
        "std": round(float(array.std()), 4),
        "max": round(float(array.max()), 4),
    }
