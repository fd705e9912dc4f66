"""``hpo report``: index.html and PNG figures from a real study, readable without a browser or network."""

from __future__ import annotations

import re
import shutil

import optuna
import pytest
from PIL import Image

from conftest import hpo, write_csv
from hpo.fmt import cell
from hpo.retrain import recorded

pytestmark = pytest.mark.slow

EXPECTED = ["history.png", "learning_curves.png", "parallel_coordinates.png", "freeze_depth_metric.png", "freeze_depth_seconds.png"]


def _valid_png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # the whole file, not just its header
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_report_writes_html_and_valid_images(launched_study, tmp_path):
    # A copy of the launched study, retrained for real so it holds test results; the shared one stays as launched.
    shutil.copy(launched_study.folder / "hpo.db", tmp_path / "hpo.db")
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    retrained = hpo("retrain", str(launched_study.path), "--storage", storage, "--seeds", "0", "1", cwd=tmp_path)
    assert retrained.returncode == 0, retrained.stderr
    study = optuna.load_study(study_name=launched_study.name, storage=storage)
    test = recorded(study).test
    out = tmp_path / "report"
    result = hpo("report", str(launched_study.path), "--storage", storage, "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    index = out / "index.html"
    assert f"wrote {index}" in result.stdout
    html = index.read_text()
    best = study.best_trial

    assert f"<h1>{launched_study.name}</h1>" in html
    assert f"Trial <b>#{best.number}</b>" in html and f"{best.value:.4f}" in html
    assert "Top trials" in html and html.count('<tr class="best">') == 1
    assert "Test results" in html and f"({test.examples} examples)" in html and "with 2 seeds" in html
    assert f"<td>accuracy</td><td class=\"num\">{cell(test.mean['accuracy'])}</td>" in html
    assert str(tmp_path) not in html  # where the model was saved stays off a shared page
    assert "hpo.db" not in html and "sqlite" not in html  # a shared report does not name the database
    linked = re.findall(r'<img src="([^"]+)"', html)
    for name in EXPECTED:
        assert name in linked, (name, result.stdout)
    for name in linked:
        width, height = _valid_png(out / name)
        assert width > 300 and height > 200
    assert not re.search(r'(src|href)="https?://', html), "the report must not need the network"


def test_report_without_a_study_is_a_clear_error(make_study, tmp_path):
    path = make_study(name="nothing-here")
    result = hpo("report", str(path), "-o", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("hpo: error: no study named 'nothing-here'")
    assert not (tmp_path / "r").exists()


def test_one_title_per_figure_and_curves_caption_names_what_is_plotted(launched_study, tmp_path):
    from optuna.visualization import matplotlib as ovm

    from hpo import plots
    from hpo.spec import load_spec

    study = optuna.load_study(study_name=launched_study.name, storage=launched_study.storage)
    axes = ovm.plot_param_importances(study)
    plots.retitle(axes, "Parameter importances")
    assert [axes.get_title(loc) for loc in ("left", "center", "right")] == ["", "Parameter importances", ""]

    spec = load_spec(launched_study.path)
    on_loss = spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"metric": "loss"})})
    captions = [(spec, "Validation accuracy against"),
                (on_loss, "Validation loss (what trials report and the pruner judges; trials are ranked by validation accuracy)")]
    for which, caption in captions:
        drawn = dict((f[0], f[2]) for f in plots.figures(which))
        assert drawn["learning_curves.png"].startswith(caption)
        axes = plots.learning_curves(study, which)
        assert axes.get_ylabel() == f"validation {which.pruning_metric}"


def test_report_on_a_study_whose_only_trial_failed_is_refused(make_study, tmp_path):
    long_rows = [(" ".join(["good"] * 100), "pos"), (" ".join(["bad"] * 100), "neg")] * 10
    train = write_csv(tmp_path / "long.csv", long_rows)  # longer than the model's 64 positions: the trial fails
    data = {"source": "csv", "train": str(train), "validation": str(train), "max_length": 128, "drop_duplicates": False, "drop_leaking": False}
    path = make_study(name="failed-only", n_trials=1, data=data)
    hpo("launch", str(path), cwd=tmp_path)
    study = optuna.load_study(study_name="failed-only", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.FAIL}
    result = hpo("report", str(path), "-o", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("hpo: error: study 'failed-only' has no complete or pruned trial yet (")
    assert "failed" in result.stderr and not (tmp_path / "r").exists()
