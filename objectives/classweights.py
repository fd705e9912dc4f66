"""Loss weights per class, from the study's ``class_weights``.

``balanced`` gives each class the weight rows / (classes x class rows) over
the train split (scikit-learn's definition), so every class contributes the
same total to the loss however rare it is. Explicit weights are given by label
name because ids depend on how labels sort.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from objectives.errors import ObjectiveError


def class_weights(setting: str | dict[str, float] | None, train_labels: Sequence[int], label_names: list[str]) -> list[float] | None:
    if setting is None:
        return None
    if setting == "balanced":
        counts = Counter(int(label) for label in train_labels)
        total = sum(counts.values())
        return [total / (len(label_names) * counts[i]) if counts[i] else 1.0 for i in range(len(label_names))]
    unknown = sorted(set(setting) - set(label_names))
    if unknown:
        raise ObjectiveError(f"class_weights.{unknown[0]}: not a label of the train split (labels: {', '.join(label_names)})")
    return [float(setting.get(name, 1.0)) for name in label_names]
