"""Building the Optuna sampler a study file names.

Options other than ``type`` are passed to the sampler's constructor, so any
Optuna option works without us mirroring it; a misspelled one is reported
with its YAML path before anything runs.
"""

from __future__ import annotations

import inspect
from typing import Any

from hpo.errors import SpecError
from hpo.spec import Choices, StudySpec


def _classes() -> dict[str, Any]:
    import optuna

    return {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }


def _grid(spec: StudySpec) -> dict[str, list[Any]]:
    import numpy as np

    grid: dict[str, list[Any]] = {}
    problems = []
    for name, dim in spec.searched.items():
        if isinstance(dim, Choices):
            grid[name] = list(dim.choices)
        elif dim.is_int:
            grid[name] = list(range(dim.low, dim.high + 1, dim.step or 1))
        elif dim.step:
            grid[name] = [float(v) for v in np.arange(dim.low, dim.high + dim.step / 2, dim.step)]
        else:
            problems.append(f"search_space.{name}: a grid needs choices or a step for float ranges")
    if problems:
        raise SpecError("sampler", problems)
    return grid


def check_sampler_options(spec: StudySpec) -> None:
    """Reject options the sampler does not take, naming each one."""
    cls = _classes()[spec.sampler.type]
    accepted = set(inspect.signature(cls).parameters) - {"self", "search_space"}
    unknown = [k for k in spec.sampler.options if k not in accepted]
    if unknown:
        raise SpecError(
            "study file",
            [f"sampler.{k}: is not an option of {cls.__name__} (options: {', '.join(sorted(accepted))})" for k in unknown],
        )
    if spec.sampler.type == "grid":
        _grid(spec)


def build_sampler(spec: StudySpec, seed: int):
    """The sampler for one worker. ``seed`` differs per worker and per launch so
    that parallel workers and resumed launches do not replay the same draws; it
    replaces a ``sampler.seed`` from the study file (the runner derives it from that)."""
    check_sampler_options(spec)
    options = dict(spec.sampler.options)
    cls = _classes()[spec.sampler.type]
    if "seed" in inspect.signature(cls).parameters:
        options["seed"] = seed
    try:
        if spec.sampler.type == "grid":
            return cls(_grid(spec), **options)
        return cls(**options)
    except (TypeError, ValueError, ImportError, ModuleNotFoundError) as exc:
        raise SpecError("study file", [f"sampler: {exc}"]) from None
