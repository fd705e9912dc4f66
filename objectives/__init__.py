"""Fine-tuning objectives: one ``Objective``, composed with a task, behind a small registry.

The CLI looks a task up here and hands the built objective to the runner,
which never imports this package. A new task is one module exposing
``TASK`` (inputs composed with a head, ``objectives.task``), plus one line below.
"""

from __future__ import annotations

import importlib
from typing import Any

TASKS = {
    "text-classification": "objectives.text_classification",
    "text-regression": "objectives.text_regression",
    "image-classification": "objectives.image_classification",
}


def task_for(name: str):
    return importlib.import_module(TASKS[name]).TASK


def build(spec) -> Any:
    """The objective for the study's task, prepared (data read, model loaded)."""
    from objectives.objective import Objective

    return Objective(spec, task_for(spec.task))


def check(spec) -> dict[str, Any]:
    """Cheap checks of model and data for ``hpo validate``; raises ObjectiveError."""
    from objectives.objective import check as check_objective

    return check_objective(spec, task_for(spec.task))
