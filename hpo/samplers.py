"""Building the Optuna sampler a study file names.

Options other than ``type`` are passed to the sampler's constructor, so any
Optuna option works without us mirroring it; a misspelled one is reported
with its YAML path before anything runs.
"""

from __future__ import annotations

import inspect
from typing import Any

from hpo import options
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
    """Refuse options the sampler does not take or cannot take from YAML, naming each; then let it judge the values."""
    cls = _classes()[spec.sampler.type]
    problems = options.problems("sampler", cls, spec.sampler.options, skip={"search_space"})
    if problems:
        raise SpecError("study file", problems)
    grid = _grid(spec) if spec.sampler.type == "grid" else None
    try:
        cls(grid, **spec.sampler.options) if grid is not None else cls(**spec.sampler.options)
    except ImportError as exc:
        raise SpecError("study file", [f"sampler.type: {spec.sampler.type} needs a package that is not installed ({exc})"]) from None
    except Exception as exc:  # noqa: BLE001 - whatever the constructor refuses, the user fixes in the file
        raise SpecError("study file", [f"sampler: {cls.__name__} refuses these options: {exc}"]) from None


def build_sampler(spec: StudySpec, seed: int):
    """The sampler for one worker. ``seed`` differs per worker and per launch so
    that parallel workers and resumed launches do not replay the same draws; it
    replaces a ``sampler.seed`` from the study file (the runner derives it from that)."""
    check_sampler_options(spec)
    kwargs = dict(spec.sampler.options)
    cls = _classes()[spec.sampler.type]
    if "seed" in inspect.signature(cls).parameters:
        kwargs["seed"] = seed
    try:
        if spec.sampler.type == "grid":
            return cls(_grid(spec), **kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError, ImportError, ModuleNotFoundError) as exc:
        raise SpecError("study file", [f"sampler: {exc}"]) from None
