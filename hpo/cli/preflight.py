"""Checks that run before anything touches the database or a GPU.

All of them together, so a user sees every problem of a study file in one
run: the spec itself (done while loading), sampler and pruner options, the
storage URL, and the cheap model and data checks of the objective.
"""

from __future__ import annotations

from typing import Any

from hpo import storage
from hpo.errors import SpecError
from hpo.pruners import build_pruner
from hpo.samplers import check_sampler_options
from hpo.spec import StudySpec


def check_search_options(spec: StudySpec) -> None:
    problems: list[str] = []
    for check in (check_sampler_options, build_pruner):
        try:
            check(spec)
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError("study file", problems)


def check_storage(spec: StudySpec) -> None:
    """URL well formed, host reachable, no study of that name optimising the other way."""
    storage.check_reachable(spec.storage)
    storage.check_direction(spec.storage, spec.name, spec.direction)


def check_objective(spec: StudySpec) -> dict[str, Any]:
    import objectives

    return objectives.check(spec)
