"""A task composes how rows are read, how they become model inputs, and a head.

The one ``Objective`` and the one training loop take a ``Task`` and never ask
which it is. Text classification and text regression share their rows and
inputs and differ by head; image classification shares the labelled rows and
the classification head and differs by inputs; a language model reads prompts
and completions. A new task is one module that composes (or adds) these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hpo.spec import DataSpec
from objectives.heads import Head


class Batches(Protocol):
    """A split ready to train on: ``lengths`` for grouping, ``labels`` for metrics, batches by index."""

    lengths: Any  # tokens per row, for grouping by length
    labels: Any
    units: Any  # budget units per row (1 per example; completion tokens for language models)

    def __len__(self) -> int: ...

    def batch(self, indices, device) -> dict[str, Any]: ...


class Rows(Protocol):
    """How a study's splits are read and cleaned: labelled rows, or prompts and completions."""

    def splits(self, data: DataSpec, seed: int, numeric_labels: bool) -> Any: ...  # objectives.data.Splits

    def test_split(self, data: DataSpec, label_names: list[str], numeric_labels: bool, train_keys: set) -> Any: ...

    def test_leaks(self, data: DataSpec, train_keys: set) -> dict[str, Any]: ...  # for hpo validate


class Inputs(Protocol):
    """How raw rows become model inputs, and which model class reads them."""

    unit: str  # what the budget counts: "examples", or "tokens" (completion tokens, language models)

    def auto_model(self) -> Any: ...  # a transformers Auto class, e.g. AutoModelForSequenceClassification

    def preprocessor(self, path: str) -> Any: ...  # tokenizer or image processor, saved beside the model

    def annotate(self, report, split: str, dataset, preprocessor, data: DataSpec) -> None: ...  # data report extras

    def batches(self, dataset, preprocessor, data: DataSpec, *, training: bool) -> Batches: ...

    def check(self, model, batches: Batches) -> None: ...  # what only the loaded model can tell; ObjectiveError


@dataclass(frozen=True)
class Task:
    name: str
    rows: Rows
    inputs: Inputs
    head: Head
