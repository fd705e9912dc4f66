"""Mistakes in the protocol's options (tasks, metrics, class weights, knobs, image data):
exit 2, one line naming every field, nothing written."""

from __future__ import annotations

import yaml

from test_bad_input import _launch_writes_nothing


def test_task_metric_knob_and_image_mistakes_are_reported_together(make_study, tmp_path):
    path = make_study(task="text-regression", metric="accuracy", class_weights="balanced")
    study = yaml.safe_load(path.read_text())
    study["search_space"].update({"optimizer": {"choices": ["adamw", "rmsprop"]}, "dropout": {"low": 0.1, "high": 1.5},
                                  "patience": 0, "gradient_accumulation_steps": 1.5})
    path.write_text(yaml.safe_dump(study))
    _launch_writes_nothing(
        path, tmp_path,
        "search_space.optimizer.choices[1]: must be one of adamw, sgd, adafactor",
        "search_space.dropout.high: must be < 1",
        "search_space.patience: must be >= 1",
        "search_space.gradient_accumulation_steps: must be an integer",
    )
    study["search_space"] = yaml.safe_load(make_study().read_text())["search_space"]
    path.write_text(yaml.safe_dump(study))
    _launch_writes_nothing(path, tmp_path, "metric: accuracy does not apply to text-regression (use rmse, mae, r2, spearman, loss)")


def test_class_weight_for_an_unknown_label(make_study, tmp_path):
    path = make_study(class_weights={"pos": 2.0, "neutral": 3.0})
    _launch_writes_nothing(path, tmp_path, "class_weights.neutral: not a label of the train split (labels: neg, pos)")


def test_missing_image_folder_and_images_for_a_text_task(make_study, tmp_path):
    path = make_study(task="image-classification", data={"source": "imagefolder", "train": str(tmp_path / "photos")})
    _launch_writes_nothing(path, tmp_path, "data.train: folder not found")
    path = make_study(data={"source": "imagefolder", "train": str(tmp_path)})
    _launch_writes_nothing(path, tmp_path, "data.source: imagefolder holds images: use task image-classification")

