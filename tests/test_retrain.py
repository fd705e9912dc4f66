"""Retrain the winner, test it once, export it: a real tiny model end to end through the CLI.

One study is launched and retrained once for the module (top 2 trials, seeds
0 and 1, on train + validation) and the tests read it; the export tests
write their own folders. Its test file is unreadable as a test split during
the search (no label column) and holds the real test split only from the
retrain on: the search cannot have opened it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import stat
import statistics
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import hpo, study_dict, write_csv
from hpo.records import TrainedOn
from hpo.retrain import Candidate, Run, pick, recorded
from hpo.spec import load_spec

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Retrained:
    path: Path
    storage: str
    folder: Path
    test_csv: Path
    launch: subprocess.CompletedProcess
    early_export: subprocess.CompletedProcess  # before any retrain, into folder / "early"
    broken_retrain: subprocess.CompletedProcess  # while the test file is still unusable
    retrain: subprocess.CompletedProcess

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="winner", storage=self.storage)


def _one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, tiny_model, tiny_data) -> Retrained:
    folder = tmp_path_factory.mktemp("retrain")
    test_csv = write_csv(folder / "test.csv", [("fine", "x")], header=("text", "stars"))  # not a usable test split
    data = {"source": "csv", "train": str(tiny_data["train"]), "validation": str(tiny_data["validation"]),
            "test": str(test_csv), "max_length": 32}
    storage = f"sqlite:///{folder / 'hpo.db'}"
    study = study_dict(tiny_model, tiny_data, name="winner", n_trials=3, storage=storage, data=data,
                       pruner={"type": "none"}, retrain={"top_k": 2, "seeds": [0, 1]})
    path = folder / "winner.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    launched = hpo("launch", str(path), cwd=folder)
    assert launched.returncode == 0, launched.stderr
    early = hpo("export", str(path), "-o", str(folder / "early"), cwd=folder)
    broken = hpo("retrain", str(path), cwd=folder)
    shutil.copyfile(tiny_data["test"], test_csv)  # the held-out split appears only now
    result = hpo("retrain", str(path), cwd=folder)
    assert result.returncode == 0, result.stderr
    return Retrained(path, storage, folder, test_csv, launched, early, broken, result)


def test_retrain_records_the_winner_and_its_test_results(retrained):
    study = retrained.study()
    record = recorded(study)
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)

    # Top-2 re-evaluation: the two best trials, the trial itself as seed 0, one more run with seed 1.
    assert [c.trial for c in record.selection] == [t.number for t in complete[:2]]
    for candidate, trial in zip(record.selection, complete):
        assert [(r.seed, r.from_search) for r in candidate.runs] == [(0, True), (1, False)]
        assert candidate.runs[0].value == trial.value
        assert candidate.mean == pytest.approx(statistics.fmean(r.value for r in candidate.runs))
    best_mean = max(record.selection, key=lambda c: c.mean)
    assert record.winner.trial == best_mean.trial

    # Retrained on train + validation (160 + 48), stopping at the winner's best point.
    assert record.trained_on == TrainedOn(split="train+validation", examples=208)
    assert [s.seed for s in record.seeds] == [0, 1]
    stop = round(record.winner.best_epoch * 208)
    for seed in record.seeds:
        assert stop <= seed.examples_seen < stop + record.winner.training_params["batch_size"]
        assert set(seed.test) >= {"accuracy", "f1", "loss"}
    accuracies = [s.test["accuracy"] for s in record.seeds]
    assert record.test.examples == 48
    assert record.test.mean["accuracy"] == pytest.approx(statistics.fmean(accuracies))
    assert record.test.std["accuracy"] == pytest.approx(statistics.stdev(accuracies))
    assert record.test.mean["accuracy"] >= 0.75, record.seeds  # the task is learnable
    assert record.model.seed in (0, 1)
    assert Path(record.model.path) == retrained.folder / "retrained" / "winner" / "model"
    assert study.user_attrs["retrain"]["schema_version"] == 1
    assert study.user_attrs["retrain_summary"].startswith("accuracy ")

    # What the user saw: progress on stderr, tables on stdout.
    assert "retraining seed 1 (2 of 2) on train+validation" in retrained.retrain.stderr
    assert "examples seen" in retrained.retrain.stderr and "epoch" in retrained.retrain.stderr
    out = retrained.retrain.stdout
    assert f"*#{record.winner.trial}" in out
    assert any(line.startswith("mean ") for line in out.splitlines()) and "std" in out


def test_status_shows_the_retrain(retrained):
    result = hpo("status", str(retrained.path), cwd=retrained.folder)
    assert result.returncode == 0, result.stderr
    record = recorded(retrained.study())
    assert f"retrain winner #{record.winner.trial}" in result.stdout
    assert f"accuracy {record.test.mean['accuracy']:.4f} ± {record.test.std['accuracy']:.4f}" in result.stdout


def test_retrain_again_with_the_same_settings_adds_nothing(retrained):
    before = retrained.study()
    model = Path(recorded(before).model.path)
    files = _tree(model)
    again = hpo("retrain", str(retrained.path), "--top-k", "2", "--seeds", "0", "1", cwd=retrained.folder)
    assert again.returncode == 0, again.stderr
    assert "already retrained with these settings" in again.stdout
    after = retrained.study()
    assert after.user_attrs == before.user_attrs
    assert len(after.trials) == len(before.trials) == 3
    assert _tree(model) == files


def test_a_retrain_record_of_another_hpo_version_is_refused_in_one_line(retrained, tmp_path):
    """Export and retrain refuse it naming the remedy; status still shows the trials; --force replaces it."""
    with sqlite3.connect(retrained.folder / "hpo.db") as source, sqlite3.connect(tmp_path / "hpo.db") as copy:
        source.backup(copy)  # the write-ahead log included
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.load_study(study_name="winner", storage=storage)
    study.set_user_attr("retrain", {**study.user_attrs["retrain"], "schema_version": 7})
    why = "study attribute 'retrain' was written by another hpo version (schema_version 7; this hpo reads 1): run `hpo retrain --force`"
    _one_line_error(hpo("export", str(retrained.path), "--storage", storage, "-o", str(tmp_path / "out"), cwd=tmp_path), why)
    assert not (tmp_path / "out").exists()
    _one_line_error(hpo("retrain", str(retrained.path), "--storage", storage, cwd=tmp_path), why)
    status = hpo("status", str(retrained.path), "--storage", storage, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"retrain {why}" in status.stdout and "best    #" in status.stdout
    forced = hpo("retrain", str(retrained.path), "--storage", storage, "--force", "--top-k", "1", "--seeds", "0", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert recorded(optuna.load_study(study_name="winner", storage=storage)).plan.seeds == [0]


def test_export_folder_reproduces_the_recorded_test_metric(retrained, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments
    import csv
    import torch

    out = tmp_path / "exports" / "winner"
    result = hpo("export", str(retrained.path), "-o", str(out), cwd=retrained.folder)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "best.yaml", "metrics.json", "model", "training_args.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # as mkdir makes it, not owner-only
    assert stat.S_IMODE((out / "best.yaml").stat().st_mode) == 0o666 & ~umask
    record = recorded(retrained.study())

    # model/ loads with the Auto classes and scores the test split exactly as recorded.
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert model.config.id2label == {0: "neg", 1: "pos"}
    with open(retrained.test_csv) as handle:
        rows = list(csv.DictReader(handle))
    with torch.no_grad():
        logits = model(**tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
    predicted = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    kept = next(s for s in record.seeds if s.seed == record.model.seed)
    assert accuracy == pytest.approx(kept.test["accuracy"], abs=1e-9)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["winner_trial"] == record.winner.trial
    assert metrics["test"]["mean"] == record.test.mean and len(metrics["test"]["per_seed"]) == 2
    assert len(metrics["validation"]["selection"]) == 2

    args = json.loads((out / "training_args.json").read_text())
    assert set(args["training_arguments"]) <= {f.name for f in fields(TrainingArguments)}
    winner = next(t for t in retrained.study().trials if t.number == record.winner.trial)
    assert args["training_arguments"]["learning_rate"] == winner.params["learning_rate"]
    assert args["training_arguments"]["per_device_train_batch_size"] == winner.params["batch_size"]
    assert args["training_arguments"]["num_train_epochs"] == record.winner.best_epoch
    assert args["freeze_depth"] == winner.params["freeze_depth"]
    assert args["training_arguments"].get("bf16", False) == (winner.user_attrs["precision"] == "bf16")

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"trial #{winner.number}" in card and "train+validation" in card
    assert f"{record.test.mean['accuracy']:.4f} ± {record.test.std['accuracy']:.4f}" in card
    assert "3 completed, 0 pruned, 0 failed" in card

    # best.yaml validates, and launching it reproduces the winner's validation score.
    best = out / "best.yaml"
    assert yaml.safe_load(best.read_text())["retrain"]["seeds"] == [0, 1]
    validated = hpo("validate", str(best), cwd=retrained.folder)
    assert validated.returncode == 0, validated.stderr
    relaunched = hpo("launch", str(best), cwd=retrained.folder)
    assert relaunched.returncode == 0, relaunched.stderr
    rerun = optuna.load_study(study_name="winner-best", storage=retrained.storage).best_trial
    assert rerun.value == pytest.approx(winner.value, abs=1e-6)


def _limited_export(study_path: Path, out: Path, cwd: Path, max_file_bytes: int) -> subprocess.CompletedProcess:
    """``hpo export`` in a process that cannot write a file past ``max_file_bytes`` (a full disk, for real)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "hpo", "export", str(study_path), "-o", str(out)], cwd=cwd,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=300, preexec_fn=limit)


def test_failed_export_leaves_the_previous_export_intact(retrained, tmp_path):
    out = tmp_path / "export"
    first = hpo("export", str(retrained.path), "-o", str(out), cwd=retrained.folder)
    assert first.returncode == 0, first.stderr
    before = _tree(out)
    weights = out / "model" / "model.safetensors"
    assert weights.stat().st_size > 40_000  # the write that fails below, after the small files were staged

    failed = _limited_export(retrained.path, out, retrained.folder, max_file_bytes=40_000)
    _one_line_error(failed, f"cannot write the export to {out}", "File too large", "previous export there is unchanged")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"], "no staging folder is left behind"

    into_foreign = tmp_path / "mine"
    into_foreign.mkdir()
    (into_foreign / "notes.txt").write_text("keep me")
    refused = hpo("export", str(retrained.path), "-o", str(into_foreign), cwd=retrained.folder)
    _one_line_error(refused, "not part of an export", "notes.txt")
    assert _tree(into_foreign) == {"notes.txt": b"keep me"}


def test_export_before_retrain_writes_the_configuration_and_says_no_model_exists(retrained):
    result, out = retrained.early_export, retrained.folder / "early"
    assert result.returncode == 0, result.stderr
    assert "no model exists yet" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "best.yaml", "metrics.json", "training_args.json"]
    assert json.loads((out / "metrics.json").read_text())["test"] is None
    assert "No model exists yet" in (out / "README.md").read_text()


def test_retrain_reads_the_test_split_first_and_stops_on_a_broken_one(retrained):
    """The search never opened the test file (it would have failed); retrain does, before any training."""
    _one_line_error(retrained.broken_retrain, "data.label_column", "test split")
    assert "retraining seed" not in retrained.broken_retrain.stderr
    assert "top-2 re-evaluation" not in retrained.broken_retrain.stderr


def test_retrain_without_a_completed_trial_is_a_clear_error(make_study, tmp_path):
    path = make_study(name="empty")
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    never = hpo("retrain", str(path), cwd=tmp_path)
    _one_line_error(never, "no study named 'empty'", "hpo launch")

    study = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    trial = study.ask()
    study.tell(trial, state=TrialState.PRUNED)
    result = hpo("retrain", str(path), cwd=tmp_path)
    _one_line_error(result, "study 'empty' has no completed trial yet")
    assert "retrain" not in optuna.load_study(study_name="empty", storage=storage).user_attrs
    exported = hpo("export", str(path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    _one_line_error(exported, "no completed trial")


def test_bad_retrain_settings_are_all_reported(make_study, tmp_path):
    path = make_study(retrain={"top_k": 0, "seeds": [1, 1], "train_on": "test", "epochs": 3})
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    _one_line_error(result, "retrain.top_k: must be >= 1", "retrain.seeds: must not repeat a seed",
                    "retrain.train_on: must be", "retrain.epochs: is not a known key")
    good = make_study(name="fine")
    flags = hpo("retrain", str(good), "--seeds", "3", "3", cwd=tmp_path)
    _one_line_error(flags, "--seeds: must not repeat a seed")
    assert not (tmp_path / "hpo.db").exists()

    # YAML 1.1 reads a bare `on:` key as true; it still means train_on.
    good.write_text(good.read_text() + "retrain:\n  on: train\n")
    assert load_spec(good).retrain.train_on == "train"


def test_retrain_on_train_keeps_each_seeds_best_point_on_postgres(make_study, tmp_path, postgres_url):
    """On train the retrain with the study's seed is the winning trial again, point for point."""
    path = make_study(n_trials=1, storage=postgres_url)
    assert hpo("launch", str(path), cwd=tmp_path).returncode == 0
    result = hpo("retrain", str(path), "--train-on", "train", "--seeds", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=yaml.safe_load(path.read_text())["name"], storage=postgres_url)
    try:
        record, trial = recorded(study), study.best_trial
        seed = record.seeds[0]
        assert record.trained_on == TrainedOn(split="train", examples=160)
        assert seed.validation["accuracy"] == pytest.approx(trial.value, abs=1e-6)
        assert seed.examples_seen == trial.user_attrs["best_examples"]
        assert record.test.std["accuracy"] == 0.0
        export = hpo("export", str(path), "-o", str(tmp_path / "out"), cwd=tmp_path)
        assert export.returncode == 0, export.stderr
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert metrics["validation"]["retrained"][0]["accuracy"] == pytest.approx(trial.value, abs=1e-6)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=postgres_url)


def _candidate(number: int, values: list[float]) -> Candidate:
    trial = optuna.trial.create_trial(value=values[0], params={}, distributions={})
    trial.number = number
    return Candidate(trial, [Run(seed, v, None, seed == 0) for seed, v in enumerate(values)])


def test_the_best_mean_wins_not_the_luckiest_seed():
    lucky = _candidate(0, [0.95, 0.70, 0.72])  # the single best trial of the search
    steady = _candidate(1, [0.90, 0.89, 0.91])
    assert pick([lucky, steady], maximize=True) is steady
    assert pick([_candidate(0, [0.2, 0.5]), _candidate(1, [0.3, 0.3])], maximize=False).trial.number == 1
    tie = [_candidate(4, [0.8, 0.9]), _candidate(2, [0.9, 0.8])]
    assert pick(tie, maximize=True).trial.number == 4  # ties go to the trial the search ranked higher
