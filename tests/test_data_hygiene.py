"""The data report: exact counts on planted empty texts, missing labels, duplicates and leaks."""

from __future__ import annotations

import pytest

from hpo.spec import parse_spec
from objectives.data import load_splits, load_test_report

from conftest import hpo, make_sentences, study_dict, write_csv


@pytest.fixture
def planted(tmp_path):
    """Train with 2 empty texts, 1 missing label, 3 exact repeats (one row thrice, one twice) and a
    conflicting label; validation with 4 texts from train; test with 1 text from train."""
    base = _unique(make_sentences(80, 11), set())[:60]
    train = list(base)
    train += [("", "pos"), ("   ", "neg"), ("good coffee tea", "")]
    train += [base[0], base[0], base[1]]  # 3 exact repeats
    train += [(base[2][0], "neg" if base[2][1] == "pos" else "pos")]  # same text, other label: kept
    seen = {text for text, _ in base}
    validation = _unique(make_sentences(40, 12), seen)[:20] + [base[3], base[4], base[5], (base[6][0], "pos")]
    test = _unique(make_sentences(30, 13), seen)[:10] + [base[7]]
    return {
        "train": write_csv(tmp_path / "train.csv", train),
        "validation": write_csv(tmp_path / "validation.csv", validation),
        "test": write_csv(tmp_path / "test.csv", test),
    }


def _unique(rows, exclude: set):
    """Rows whose texts occur once and not in ``exclude``: the planted counts are then exact."""
    out, seen = [], set(exclude)
    for text, label in rows:
        if text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


def _spec(tiny_model, files, **data):
    study = study_dict(tiny_model, files)
    study["data"].update(data)
    return parse_spec(study)


def test_counts_are_exact_and_printed_by_validate(tiny_model, planted, tmp_path):
    spec = _spec(tiny_model, planted)
    splits = load_splits(spec.data, spec.seed)
    report = splits.report.as_dict()["splits"]
    assert report["train"]["read"] == 67
    assert report["train"]["empty_text"] == 2
    assert report["train"]["missing_label"] == 1
    assert report["train"]["duplicates"] == 3
    assert report["train"]["conflicting"] == 1
    assert report["train"]["used"] == 61
    assert report["validation"]["leaking"] == 4  # the relabelled one leaks too: same text
    assert report["validation"]["used"] == 20
    assert not set(splits.validation["text"]) & set(splits.train["text"])
    assert sum(report["train"]["labels"].values()) == len(splits.train)

    _, test = load_test_report(spec.data, splits.label_names, train_keys=splits.train_keys)
    assert (test.read, test.leaking, test.used) == (11, 1, 10)

    path = tmp_path / "study.yaml"
    import yaml

    path.write_text(yaml.safe_dump(study_dict(tiny_model, planted, storage=f"sqlite:///{tmp_path / 'hpo.db'}")))
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data report" in result.stdout
    train_row = next(line.split() for line in result.stdout.splitlines() if line.startswith("train "))
    assert train_row[1:] == ["67", "2", "1", "3", "1", "0", "61"]
    assert "1 of 11 test rows also occur in train" in result.stdout
    assert not (tmp_path / "hpo.db").exists()


def test_options_keep_duplicates_and_leaks_but_still_count_them(tiny_model, planted):
    spec = _spec(tiny_model, planted, drop_duplicates=False, drop_leaking=False)
    splits = load_splits(spec.data, spec.seed)
    report = splits.report.as_dict()
    train, validation = report["splits"]["train"], report["splits"]["validation"]
    assert (train["duplicates"], train["used"]) == (3, 64)
    assert (validation["leaking"], validation["used"]) == (4, 24)
    assert any("also occur in train and were kept" in w for w in report["warnings"])


def test_imbalance_is_warned(tiny_model, tmp_path, tiny_data):
    rows = [(t, "pos") for t, _ in make_sentences(40, 21)] + [("bad awful tea", "neg"), ("bad poor box", "neg")]
    files = {**tiny_data, "train": write_csv(tmp_path / "skewed.csv", rows)}
    report = load_splits(_spec(tiny_model, files).data, 0).report.as_dict()
    assert any("imbalanced labels in train" in w for w in report["warnings"]), report["warnings"]
