"""Reading prompt/completion and chat data for ``task: causal-lm``, with the same hygiene as every task.

Rows without a completion (or a chat without an assistant turn) are counted
and dropped; exact repeats within a split and validation rows that also occur
in train are counted and, as the study says, dropped; the test split is read
only by retrain. A chat turn without a role, or a column that is not there,
is an error naming the field before any trial runs.
"""

from __future__ import annotations

import json
from typing import Any

from hpo.spec import DataSpec
from objectives.data import Splits, _random_carve, _read, _subsample
from objectives.errors import ObjectiveError
from objectives.hygiene import DataReport, SplitReport, duplicate_rows, leaking_rows

ROLES = ("system", "user", "assistant", "tool")


def _columns(data: DataSpec) -> list[tuple[str, str]]:
    if data.format == "messages":
        return [("messages_column", data.messages_column)]
    return [("prompt_column", data.prompt_column), ("completion_column", data.completion_column)]


def _check_columns(dataset, data: DataSpec, split: str) -> None:
    for key, column in _columns(data):
        if column not in dataset.column_names:
            raise ObjectiveError(
                f"data.{key}: column {column!r} not in the {split} split (columns: {', '.join(dataset.column_names)})"
            )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _check_turns(turns: Any, split: str, row: int) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise ObjectiveError(f"data.{split}: row {row}: messages must be a list of turns, got {type(turns).__name__}")
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not turn.get("role"):
            raise ObjectiveError(f"data.{split}: row {row}, turn {number}: a turn needs a 'role' ({', '.join(ROLES)})")
        if turn["role"] not in ROLES:
            raise ObjectiveError(f"data.{split}: row {row}, turn {number}: role {turn['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(turn.get("content"), str):
            raise ObjectiveError(f"data.{split}: row {row}, turn {number}: a turn needs a 'content' string")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def _rows(dataset, data: DataSpec, split: str, counts: SplitReport) -> list[dict[str, Any]]:
    """The usable rows as plain dicts, counting what was dropped and why."""
    rows = []
    if data.format == "messages":
        for index, turns in enumerate(dataset[data.messages_column]):
            turns = _check_turns(turns, split, index)
            if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
                counts.empty_completion += 1
            else:
                rows.append({"messages": turns})
        return rows
    for prompt, completion in zip(dataset[data.prompt_column], dataset[data.completion_column]):
        if _blank(completion):
            counts.empty_completion += 1
        elif prompt is None:
            counts.empty_text += 1
        else:
            rows.append({"prompt": str(prompt), "completion": str(completion)})
    return rows


def row_key(row: dict[str, Any]) -> str:
    """What makes two rows the same example: the whole prompt and completion, or the whole chat."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _deduplicate(rows: list[dict], data: DataSpec, counts: SplitReport) -> list[dict]:
    repeats, _ = duplicate_rows([row_key(r) for r in rows], [None] * len(rows))
    counts.duplicates = len(repeats)
    if not repeats or not data.drop_duplicates:
        return rows
    dropped = set(repeats)
    return [r for i, r in enumerate(rows) if i not in dropped]


def _drop_leaks(rows: list[dict], train_keys: set, drop: bool, counts: SplitReport) -> list[dict]:
    leaks = set(leaking_rows([row_key(r) for r in rows], train_keys))
    counts.leaking = len(leaks)
    return [r for i, r in enumerate(rows) if i not in leaks] if drop else rows


def _load(data: DataSpec, split: str, where: str, report: DataReport):
    import datasets

    dataset = _read(data, split, where)
    _check_columns(dataset, data, split)
    counts = report.split(split)
    counts.read = len(dataset)
    rows = _deduplicate(_rows(dataset, data, split, counts), data, counts)
    if not rows:
        raise ObjectiveError(f"data.{split}: the split is empty after dropping rows without a completion")
    return datasets.Dataset.from_list(rows)


def load_lm_splits(data: DataSpec, seed: int) -> Splits:
    """Train and validation, cleaned and checked for leaks. Never touches the test split."""
    report = DataReport(drop_duplicates=data.drop_duplicates, drop_leaking=data.drop_leaking)
    train = _load(data, "train", data.train, report)
    if data.validation:
        validation = _load(data, "validation", data.validation, report)
    else:
        carve = _random_carve(len(train), data.validation_fraction, seed)
        train, validation = train.select(carve[0]), train.select(carve[1])
        report.carved = True
        report.split("validation").read = len(validation)
    train_keys = {row_key(r) for r in train}
    kept = _drop_leaks(list(validation), train_keys, data.drop_leaking, report.split("validation"))
    if not kept:
        raise ObjectiveError("data.validation: every validation row also occurs in train (data.drop_leaking)")
    validation = validation.from_list(kept)
    train = _subsample(train, data.max_train_samples, seed)
    validation = _subsample(validation, data.max_validation_samples, seed + 1)
    for name, dataset in (("train", train), ("validation", validation)):
        report.split(name).used = len(dataset)
    dropped = {name: s.read - s.used for name, s in report.splits.items() if not (name == "validation" and report.carved)}
    return Splits(train=train, validation=validation, label_names=[], dropped=dropped, report=report, train_keys=train_keys)


def load_lm_test(data: DataSpec, train_keys: set | None = None):
    """The held-out split, read once by retrain; rows seen in train are dropped with drop_leaking."""
    if data.test is None:
        raise ObjectiveError("data.test: no test split is named; add one to retrain and test the winner")
    report = DataReport(drop_duplicates=data.drop_duplicates, drop_leaking=data.drop_leaking)
    test = _load(data, "test", data.test, report)
    if train_keys is not None:
        kept = _drop_leaks(list(test), train_keys, data.drop_leaking, report.split("test"))
        test = test.from_list(kept)
    return test


def count_lm_test_leaks(data: DataSpec, train_keys: set) -> dict[str, Any]:
    """How many test rows also occur in train (``hpo validate``)."""
    if data.test is None:
        return {"checked": False, "why": "no test split named"}
    try:
        report = DataReport(drop_duplicates=False, drop_leaking=False)
        test = _load(data, "test", data.test, report)
    except ObjectiveError as exc:
        return {"checked": False, "why": str(exc)}
    return {"checked": True, "read": len(test), "leaking": len(leaking_rows([row_key(r) for r in test], train_keys))}


class PromptRows:
    """Prompts and completions, or chats: the rows of ``task: causal-lm``."""

    def splits(self, data: DataSpec, seed: int, numeric_labels: bool) -> Splits:
        return load_lm_splits(data, seed)

    def test_split(self, data: DataSpec, label_names: list[str], numeric_labels: bool, train_keys: set):
        return load_lm_test(data, train_keys)

    def test_leaks(self, data: DataSpec, train_keys: set) -> dict[str, Any]:
        return count_lm_test_leaks(data, train_keys)
