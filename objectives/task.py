"""A task is a kind of inputs composed with a head: everything that differs between tasks.

The one ``Objective`` and the one training loop take a ``Task`` and never ask
which it is. Text classification and text regression share their inputs and
differ by head; image classification shares the classification head and
differs by inputs. A new task is one module that composes (or adds) these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hpo.spec import DataSpec
from objectives.heads import Head


class Batches(Protocol):
    """A split ready to train on: ``lengths`` for grouping, ``labels`` for metrics, batches by index."""

    lengths: Any
    labels: Any

    def __len__(self) -> int: ...

    def batch(self, indices, device) -> dict[str, Any]: ...


class Inputs(Protocol):
    """How raw rows become model inputs, and which model class reads them."""

    def auto_model(self) -> Any: ...  # a transformers Auto class, e.g. AutoModelForSequenceClassification

    def preprocessor(self, path: str) -> Any: ...  # tokenizer or image processor, saved beside the model

    def batches(self, dataset, preprocessor, data: DataSpec, *, training: bool) -> Batches: ...


@dataclass(frozen=True)
class Task:
    name: str
    inputs: Inputs
    head: Head
