"""Building the Optuna pruner a study file names.

Trials report at step = training examples seen, so every pruner option
counted in steps (``n_warmup_steps``, ``interval_steps``, ``min_resource``)
is counted in examples. Successive halving without ``min_resource`` starts
at the first evaluation point (see HalvingFromFirstPoint). Trials report
``pruner.metric`` when the spec names one; when it runs the other way from the
study's metric (validation loss in a study that maximizes accuracy), the
pruner judges it through ``_Oriented``.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.errors import SpecError
from hpo.options import problems as check_options
from hpo.spec import METRICS, StudySpec


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


class _StudyAs:
    """The study with another direction, as the wrapped pruner reads it; everything else is the study's."""

    def __init__(self, study, direction: optuna.study.StudyDirection):
        self._study = study
        self.direction = direction
        self.directions = [direction]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _Oriented(optuna.pruners.BasePruner):
    """Judges reports that run the other way from the study's objective.

    Optuna's pruners take "better" from ``study.direction``, which belongs to
    the final metric; the reported one (loss, say) may run the other way.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, direction: str):
        self.inner = inner
        self.direction = optuna.study.StudyDirection[direction.upper()]

    def prune(self, study, trial) -> bool:
        return self.inner.prune(_StudyAs(study, self.direction), trial)


def build_pruner(spec: StudySpec):
    pruner = _build(spec)
    reported = METRICS[spec.pruning_metric]
    return pruner if reported == spec.direction else _Oriented(pruner, reported)


def _build(spec: StudySpec):
    cls = _classes()[spec.pruner.type]
    options = spec.pruner.options
    problems = check_options("pruner", cls, options)
    if problems:
        raise SpecError("study file", problems)
    try:
        if cls is optuna.pruners.SuccessiveHalvingPruner and "min_resource" not in options:
            return HalvingFromFirstPoint(**options)
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise SpecError("study file", [f"pruner: {cls.__name__} refuses these options: {exc}"]) from None
