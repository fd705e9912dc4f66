"""Checks that run before anything touches the database or a GPU.

All of them together, so a user sees every problem of a study file in one
run: the spec itself (done while loading), sampler and pruner options, the
storage URL, and the cheap model and data checks of the objective.
"""

from __future__ import annotations

from typing import Any

from hpo import resume, storage
from hpo.errors import SpecError, UserError
from hpo.pruners import build_pruner
from hpo.samplers import check_sampler_options
from hpo.spec import StudySpec


def check_search_options(spec: StudySpec, source: str = "study file") -> None:
    problems: list[str] = []
    for check in (check_sampler_options, build_pruner):
        try:
            check(spec)
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(source, problems)


def check_storage(spec: StudySpec) -> None:
    """URL well formed, host reachable, no study of that name optimising the other way."""
    storage.check_reachable(spec.storage)
    storage.check_direction(spec.storage, spec.name, spec.direction)


def check_objective(spec: StudySpec) -> dict[str, Any]:
    import objectives

    return objectives.check(spec)


def check_resume(spec: StudySpec, allow_changes: bool = False, reading: bool = False) -> list[str]:
    """Refuse a study file that changed what an existing study's trials mean (see hpo/resume.py).

    Returns the changes that go ahead, for the log. ``allow_changes`` lets any
    change through except those Optuna itself refuses mid-study. ``reading``
    is for status, export, report, retrain and dashboard, which would rank the
    trials by the new metric or show them in the new space.
    """
    stored = resume.stored_spec(spec.storage, spec.name)
    if stored is None:
        return []
    refused, allowed = resume.changes(stored, spec)
    impossible = [line for line in refused if resume.optuna_refuses(line.split(":", 1)[0], stored, spec)]
    if impossible and not reading:
        raise UserError(
            f"study {spec.name!r} exists with another search space: {'; '.join(impossible)}; Optuna cannot change "
            "a dimension's choices, kind or log scale within a study: give the study a new name"
        )
    if refused and reading:
        raise UserError(
            f"study {spec.name!r} was launched with another study file: {'; '.join(refused)}; its trials are "
            "read under the stored values: restore them in the study file"
        )
    if refused and not allow_changes:
        raise UserError(
            f"study {spec.name!r} was launched with another study file: {'; '.join(refused)}; its trials ran under "
            "the stored values: restore them, give the study a new name, or launch with --allow-changes to resume anyway"
        )
    return refused + allowed
