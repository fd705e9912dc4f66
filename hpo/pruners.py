"""Building the Optuna pruner a study file names.

Trials report at step = training examples seen, so every pruner option
counted in steps (``n_warmup_steps``, ``interval_steps``, ``min_resource``)
is counted in examples. Successive halving without ``min_resource`` starts
at the first evaluation point (see HalvingFromFirstPoint).
"""

from __future__ import annotations

import inspect
from typing import Any

import optuna

from hpo.errors import SpecError
from hpo.spec import StudySpec


def _classes() -> dict[str, Any]:
    return {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }


class HalvingFromFirstPoint(optuna.pruners.BasePruner):
    """Successive halving whose first rung is a trial's first evaluation point.

    Optuna's ``min_resource="auto"`` is a hundredth of the longest finished
    trial; with steps counted in examples that puts several rungs before the
    first evaluation, so a trial's first report is judged at all of them at
    once. The first evaluation point is the earliest a trial can be judged
    fairly. Its size is known only once a trial reports, so the inner pruner
    is made then; every worker finds the same one (it depends only on the
    training-set size and ``evaluation.points_per_epoch``).
    """

    def __init__(self, **options: Any):
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, **options)  # bad options fail here, at build time
        self._options = options
        self._inner: optuna.pruners.SuccessiveHalvingPruner | None = None

    def prune(self, study, trial) -> bool:
        if self._inner is None:
            if not trial.intermediate_values:
                return False
            self._inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min(trial.intermediate_values), **self._options)
        return self._inner.prune(study, trial)


def build_pruner(spec: StudySpec):
    cls = _classes()[spec.pruner.type]
    accepted = set(inspect.signature(cls).parameters) - {"self"}
    options = spec.pruner.options
    unknown = [k for k in options if k not in accepted]
    if unknown:
        names = ", ".join(sorted(accepted)) or "none"
        raise SpecError(
            "study file", [f"pruner.{k}: is not an option of {cls.__name__} (options: {names})" for k in unknown]
        )
    try:
        if cls is optuna.pruners.SuccessiveHalvingPruner and "min_resource" not in options:
            return HalvingFromFirstPoint(**options)
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise SpecError("study file", [f"pruner: {exc}"]) from None
