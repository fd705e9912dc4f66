"""The data report as text: rows per split, what was dropped and why, labels, leaks.

The report itself is built by the objective (it reads the data); here it is
only a dict, as stored on the study, so ``hpo validate`` and any later view
print it the same way without reading the data again.
"""

from __future__ import annotations

from typing import Any

from hpo.fmt import table

_COUNTS = ("read", "empty_text", "missing_label", "duplicates", "conflicting", "leaking", "used")


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    if all(isinstance(v, int) for v in labels.values()):
        total = sum(labels.values()) or 1
        return ", ".join(f"{name} {count} ({100 * count / total:.0f}%)" for name, count in labels.items())
    return ", ".join(f"{name} {value:g}" for name, value in labels.items())


def format_report(report: dict[str, Any]) -> str:
    """Rows per split, then labels per split, then test leakage, warnings and what the options did."""
    splits = report.get("splits", {})
    counts = _COUNTS if not report.get("language_model") else (
        "read", "empty_text", "empty_completion", "duplicates", "leaking", "too_long", "used")
    rows = [[name, *(split.get(c, 0) for c in counts)] for name, split in splits.items()]
    lines = ["data report", table(["split", *counts], rows), ""]
    what = "tokens" if report.get("language_model") else "labels"
    lines += [f"{what:<9} {name}: {_labels(split.get('labels', {}))}" for name, split in splits.items()]
    test = report.get("test")
    if test:
        if test.get("checked"):
            lines.append(f"test      {test['leaking']} of {test['read']} test rows also occur in train"
                         + (" (dropped at retrain)" if report.get("drop_leaking") and test["leaking"] else ""))
        else:
            lines.append(f"test      leakage not checked: {test.get('why')}")
    options = [
        "duplicates " + ("dropped" if report.get("drop_duplicates") else "kept"),
        "leaking rows " + ("dropped" if report.get("drop_leaking") else "kept"),
    ]
    if report.get("validation_carved_from_train"):
        options.append("validation carved from train")
    lines.append("options   " + "; ".join(options))
    lines += [f"warning   {w}" for w in report.get("warnings", [])]
    lines += [f"note      {n}" for n in report.get("notes", [])]
    return "\n".join(lines)
