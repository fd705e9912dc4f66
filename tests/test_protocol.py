"""The fine-tuning protocol beyond the four knobs, trained for real on the tiny BERT:
class weights, optimizers, schedulers, dropout, label smoothing, accumulation, early stopping,
and the conditional momentum dimension."""

from __future__ import annotations

import math
from dataclasses import replace

import optuna
import pytest
import torch

from hpo.params import SCHEDULERS, TrainingParams
from hpo.spec import parse_spec
from objectives import build
from objectives.model import set_dropout

from conftest import make_sentences, study_dict, write_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def objective(tmp_path_factory, tiny_model, tiny_data):
    folder = tmp_path_factory.mktemp("protocol")
    return build(parse_spec(study_dict(tiny_model, tiny_data, storage=f"sqlite:///{folder / 'hpo.db'}")))


def _params(**changes) -> TrainingParams:
    values = dict(learning_rate=5e-3, batch_size=16, epochs=1, freeze_depth=0)
    values.update(changes)
    return TrainingParams(**values)


def test_class_weights_balanced_and_explicit_weigh_the_loss(tmp_path, tiny_model, tiny_data):
    rows = [(t, "pos") for t, _ in make_sentences(30, 31)] + [(t, "neg") for t, _ in make_sentences(200, 32) if "bad" in t][:10]
    files = {**tiny_data, "train": write_csv(tmp_path / "skewed.csv", rows)}
    study = study_dict(tiny_model, files, class_weights="balanced")
    balanced = build(parse_spec(study))
    counts = {"neg": balanced.data_report["splits"]["train"]["labels"]["neg"], "pos": balanced.data_report["splits"]["train"]["labels"]["pos"]}
    total = sum(counts.values())
    assert balanced.class_weights == pytest.approx([total / (2 * counts["neg"]), total / (2 * counts["pos"])])
    assert balanced.describe()["class_weights"] == balanced.class_weights

    # The weighted loss is the weighted mean of per-example losses, so the rare class counts more.
    loss = balanced.task.head.loss
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([3.0, 1.0])
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_example * weights[labels]).sum() / weights[labels].sum()
    assert float(loss(logits, labels, weights)) == pytest.approx(float(expected))
    assert float(loss(logits, labels, weights)) != pytest.approx(float(loss(logits, labels)))
    smoothed = float(loss(logits, labels, None, 0.2))
    assert smoothed != pytest.approx(float(loss(logits, labels)))

    explicit = build(parse_spec(study_dict(tiny_model, files, class_weights={"neg": 4.0})))
    assert explicit.class_weights == [4.0, 1.0]


@pytest.mark.parametrize(
    "changes",
    [{"optimizer": "adamw"}, {"optimizer": "sgd", "momentum": 0.9, "learning_rate": 0.05}, {"optimizer": "adafactor"}]
    + [{"lr_scheduler": name} for name in SCHEDULERS],
    ids=lambda c: "-".join(str(v) for v in c.values()),
)
def test_every_optimizer_and_scheduler_trains(objective, changes):
    params = _params(epochs=2, **changes)
    model = objective.new_model(params, 0)
    result = objective.train_model(model, params, 0, validation=objective.validation)
    assert math.isfinite(result.train_loss)
    first, best = result.points[0].metrics["loss"], min(p.metrics["loss"] for p in result.points)
    assert best < first or result.best.metrics["accuracy"] >= 0.9, result.points


def test_gradient_accumulation_matches_a_larger_batch(objective):
    """Two accumulated batches of 16 take the same optimizer steps as one batch of 32 (same data order)."""
    common = dict(optimizer="sgd", momentum=0.0, learning_rate=0.05, lr_scheduler="constant", warmup_ratio=0.0, max_grad_norm=1e9, dropout=0.0)
    trained = []
    spec, runtime = objective.spec, objective.runtime
    objective.spec = spec.model_copy(update={"data": spec.data.model_copy(update={"group_by_length": False})})
    # In fp32: under bf16 autocast (the default on CPUs with native bf16) one batch of 32 and two of
    # 16 round differently, by more than this tolerance; the identity is the loop's, not the precision's.
    objective.runtime = replace(runtime, autocast_dtype=None)
    try:
        for params in (_params(batch_size=32, **common), _params(batch_size=16, gradient_accumulation_steps=2, **common)):
            model = objective.new_model(params, 0)
            objective.train_model(model, params, 0, train=_same_widths(objective.train))
            trained.append(dict(model.named_parameters()))
    finally:
        objective.spec, objective.runtime = spec, runtime
    before = dict(objective.new_model(_params(), 0).named_parameters())
    assert not torch.equal(trained[0]["classifier.weight"], before["classifier.weight"]), "it trained"
    for name, parameter in trained[0].items():
        torch.testing.assert_close(parameter, trained[1][name], rtol=1e-4, atol=1e-5)


def _same_widths(batcher):
    """Every batch padded to the same width, so a batch of 32 is exactly two batches of 16."""
    import copy

    import numpy as np

    flat = copy.copy(batcher)
    flat.lengths = np.full_like(batcher.lengths, int(batcher.lengths.max()))
    return flat


def test_patience_ends_a_stalled_trial_and_keeps_its_best(objective):
    # A learning rate this small changes nothing: every point after the first is no better.
    params = _params(learning_rate=1e-12, epochs=3, patience=2)
    result = objective.train_model(objective.new_model(params, 0), params, 0, validation=objective.validation)
    assert result.stopped_early
    assert [p.examples for p in result.points] == [80, 160, 240]
    assert result.examples_seen < 3 * 160
    assert result.best is result.points[0]


def test_dropout_sets_every_dropout_of_the_body(objective):
    model = objective.new_model(_params(dropout=0.0), 0)
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    batch = objective.validation.batch(list(range(8)), torch.device("cpu"))
    batch.pop("labels")
    model.train()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits), "no dropout: train mode is deterministic"
    set_dropout(model, 0.5)
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, model(**batch).logits)
    assert objective.new_model(_params(), 0).config.hidden_dropout_prob == 0.1, "absent: the checkpoint's own"


def test_momentum_is_drawn_only_with_sgd(tiny_model, tiny_data):
    study = study_dict(tiny_model, tiny_data)
    study["search_space"].update({"optimizer": {"choices": ["adamw", "sgd"]}, "momentum": {"low": 0.5, "high": 0.99}})
    spec = parse_spec(study)
    drawn = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn.optimize(lambda trial: spec.sample(trial).momentum, n_trials=12)
    optimizers = [t.params["optimizer"] for t in drawn.trials]
    assert set(optimizers) == {"adamw", "sgd"}
    for trial in drawn.trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd"), trial.params


def test_new_dimensions_are_searched_recorded_and_exported(make_study, tmp_path):
    import yaml

    from conftest import hpo

    path = make_study(name="knobs", n_trials=2, sampler={"type": "random", "seed": 3}, class_weights="balanced")
    study = yaml.safe_load(path.read_text())
    study["search_space"].update({
        "epochs": 1, "optimizer": {"choices": ["sgd"]}, "momentum": {"low": 0.5, "high": 0.9},
        "dropout": {"low": 0.0, "high": 0.2}, "label_smoothing": {"choices": [0.0, 0.1]},
        "gradient_accumulation_steps": {"choices": [1, 2]}, "patience": 1, "lr_scheduler": {"choices": ["cosine", "constant"]},
    })
    path.write_text(yaml.safe_dump(study))
    validated = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert "float [0.5, 0.9] (only when optimizer is sgd)" in validated.stdout, validated.stdout + validated.stderr
    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    best = optuna.load_study(study_name="knobs", storage=storage).best_trial
    assert set(best.params) >= {"optimizer", "momentum", "dropout", "label_smoothing", "gradient_accumulation_steps", "lr_scheduler"}
    assert "stopped_early" in best.user_attrs

    exported = hpo("export", str(path), "-o", str(tmp_path / "best.yaml"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    pinned = yaml.safe_load((tmp_path / "best.yaml").read_text())["search_space"]
    for name, value in best.params.items():
        assert pinned[name] == value
    assert pinned["patience"] == 1
