"""Fine-tuning objectives, one module per task, behind a small registry.

The CLI looks a task up here and hands the built objective to the runner,
which never imports this package. A new task is one module with a class
taking a ``StudySpec`` (the objective) and a ``check(spec)`` function (cheap
checks for ``hpo validate``), plus one line below.
"""

from __future__ import annotations

import importlib
from typing import Any

TASKS = {
    "text-classification": "objectives.text_classification:TextClassification",
    "text-regression": "objectives.text_regression:TextRegression",
    "image-classification": "objectives.image_classification:ImageClassification",
}


def _module_and_class(task: str):
    module_name, class_name = TASKS[task].split(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, class_name)


def build(spec) -> Any:
    """The objective for the study's task, prepared (data read, model loaded)."""
    _, cls = _module_and_class(spec.task)
    return cls(spec)


def check(spec) -> dict[str, Any]:
    """Cheap checks of model and data for ``hpo validate``; raises ObjectiveError."""
    module, _ = _module_and_class(spec.task)
    return module.check(spec)
