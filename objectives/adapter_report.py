"""What ``hpo validate`` says about a LoRA search space: trainable parameters at its extremes.

Counted from the model's config on the meta device (no weights read), for
each ``lora_target`` in the space at the smallest and largest ``lora_r``,
next to the full model's count, so a user sees what a rank of 64 on every
linear layer costs before launching.
"""

from __future__ import annotations

from typing import Any

from hpo.params import KNOBS
from hpo.spec import Choices, Range, StudySpec
from objectives import adapters
from objectives.model import skeleton


def _values(spec: StudySpec, name: str) -> list[Any]:
    dim = spec.search_space.get(name, KNOBS[name].default)
    if isinstance(dim, Choices):
        return list(dim.choices)
    if isinstance(dim, Range):
        return [dim.low, dim.high]
    return [dim]


def check_targets(spec: StudySpec, model) -> None:
    """Every ``lora_target`` the space can draw has layers to adapt (else ObjectiveError, naming it)."""
    for target in _values(spec, "lora_target"):
        adapters.targets(model, target)
    if "freeze_depth" in spec.search_space:
        adapters.targets(model, "all-linear", max(_values(spec, "freeze_depth")))


def table(spec: StudySpec, task) -> list[list[Any]] | None:
    """Rows of (lora_target, lora_r, trainable parameters, % of the model); None offline without the config."""
    model = skeleton(spec.model, task)
    if model is None:
        return None
    check_targets(spec, model)
    total = sum(p.numel() for p in model.parameters())
    heads = adapters.head_modules(model, [])
    head = adapters.head_parameters(model, heads)
    ranks = sorted({min(_values(spec, "lora_r")), max(_values(spec, "lora_r"))})
    skip = min(_values(spec, "freeze_depth")) if "freeze_depth" in spec.search_space else 0
    rows = [["full fine-tuning", "-", total, 100.0]]
    for target in _values(spec, "lora_target"):
        found = adapters.targets(model, target, skip)
        for rank in ranks:
            trainable = adapters.lora_parameters(found, int(rank)) + head
            rows.append([target, int(rank), trainable, round(100 * trainable / total, 3)])
    return rows
