"""Building the Optuna pruner a study file names.

Trials report at step = training examples seen, so every pruner option
counted in steps (``n_warmup_steps``, ``interval_steps``, ``min_resource``)
is counted in examples.
"""

from __future__ import annotations

import inspect
from typing import Any

from hpo.errors import SpecError
from hpo.spec import StudySpec


def _classes() -> dict[str, Any]:
    import optuna

    return {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }


def build_pruner(spec: StudySpec):
    cls = _classes()[spec.pruner.type]
    accepted = set(inspect.signature(cls).parameters) - {"self"}
    unknown = [k for k in spec.pruner.options if k not in accepted]
    if unknown:
        options = ", ".join(sorted(accepted)) or "none"
        raise SpecError(
            "study file", [f"pruner.{k}: is not an option of {cls.__name__} (options: {options})" for k in unknown]
        )
    try:
        return cls(**spec.pruner.options)
    except (TypeError, ValueError) as exc:
        raise SpecError("study file", [f"pruner: {exc}"]) from None
