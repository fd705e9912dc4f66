"""A real tiny transformer trained for real: freezing, pruning, evaluation points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.params import TrainingParams
from hpo.runner import WorkerOptions, run_worker
from hpo.spec import PrunerSpec, parse_spec
from objectives import build, freezing
from objectives.training import batch_order

from conftest import study_dict

pytestmark = pytest.mark.slow


@pytest.fixture
def spec(tmp_path, tiny_model, tiny_data):
    study = study_dict(tiny_model, tiny_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    study["search_space"]["learning_rate"]["high"] = 0.9
    return parse_spec(study)


def test_length_grouped_batches_change_from_epoch_to_epoch_on_a_small_set():
    """Under 50 batches, the whole set was one sorted chunk: every epoch trained on the
    same batches in a new order. Grouping must keep batches random yet cut padding."""
    rng = np.random.default_rng(0)
    lengths = rng.permutation(1000) % 500 + 8  # 1,000 texts: 32 batches of up to 32
    epochs = [batch_order(lengths, 32, rng, group_by_length=True) for _ in range(2)]
    assert all(sorted(np.concatenate(batches).tolist()) == list(range(1000)) for batches in epochs)
    same = {frozenset(b.tolist()) for b in epochs[0]} & {frozenset(b.tolist()) for b in epochs[1]}
    assert len(same) <= 1, f"{len(same)} of 32 batches repeat in the next epoch"

    def padded_tokens(batches):
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    assert padded_tokens(epochs[0]) < 0.7 * padded_tokens(batch_order(lengths, 32, rng, group_by_length=False))


def _cpu_multiplies_in_bf16() -> bool:
    """Read from the kernel, not from torch's probe that the product uses."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((line for line in lines if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_precision_auto_trains_in_bf16_exactly_where_the_cpu_multiplies_in_bf16(tmp_path, tiny_model, tiny_data):
    """bf16 autocast trains MiniLM about 1.5x faster on a CPU with AVX512-BF16 or AMX
    and slower on one without (emulated): auto must pick by the hardware, the trial
    must say what it ran in, and an explicit bf16 must train on any CPU."""
    precisions = {}
    for asked in ("auto", "fp32", "bf16"):
        study = study_dict(tiny_model, tiny_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", name=f"precision-{asked}", n_trials=1,
                           runtime={"num_threads": 1, "device": "cpu", "precision": asked})
        study["search_space"].update({"learning_rate": 5e-3, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
        spec = parse_spec(study)
        run_worker(spec, build(spec), WorkerOptions())
        (trial,) = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
        assert trial.state == TrialState.COMPLETE and trial.value >= 0.9, trial.intermediate_values
        precisions[asked] = trial.user_attrs["precision"]
    assert precisions == {"auto": "bf16" if _cpu_multiplies_in_bf16() else "fp32", "fp32": "fp32", "bf16": "bf16"}


def test_freezing_leaves_exactly_the_frozen_weights_unchanged(spec):
    objective = build(spec)
    params = TrainingParams(learning_rate=5e-3, batch_size=16, epochs=1, freeze_depth=1)
    model = objective.new_model(params, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    objective.train_model(model, params, seed=0)
    frozen_prefixes = ("bert.embeddings.", "bert.encoder.layer.0.")
    for name, parameter in model.named_parameters():
        unchanged = torch.equal(before[name], parameter.detach())
        if name.startswith(frozen_prefixes):
            assert unchanged, f"{name} is frozen but changed"
        else:
            assert not unchanged, f"{name} is trainable but did not change"


def test_freeze_depth_equal_to_depth_trains_only_the_head(spec):
    objective = build(spec)
    model = objective.new_model(TrainingParams(learning_rate=1e-3, batch_size=16, epochs=1, freeze_depth=2), seed=0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_trials_learn_the_task(spec):
    objective = build(spec)
    params = TrainingParams(learning_rate=5e-3, batch_size=16, epochs=2, freeze_depth=0)
    result = objective.train_model(objective.new_model(params, 0), params, 0, validation=objective.validation)
    assert result.best.metrics["accuracy"] >= 0.9, result.points
    assert [p.examples for p in result.points] == [80, 160, 240, 320]


def test_pruner_stops_a_weak_trial_early(spec):
    """A good configuration first, then one that cannot learn: the median pruner must stop it."""
    spec = spec.model_copy(update={"n_trials": 2})
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize")
    study.enqueue_trial({"learning_rate": 5e-3, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    # A learning rate this high wrecks the pretrained weights: the classic diverging trial.
    study.enqueue_trial({"learning_rate": 0.5, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    run_worker(spec, build(spec), WorkerOptions())
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED], [t.intermediate_values for t in trials]
    assert trials[1].user_attrs["examples_seen"] < 320, "the pruned trial must stop before its last epoch"


def test_successive_halving_judges_a_trial_at_its_first_point(spec):
    """Without min_resource, halving's first rung is the first evaluation point (Optuna's "auto" is
    a hundredth of a finished trial, far below it): the diverging trial stops after half an epoch."""
    spec = spec.model_copy(update={"n_trials": 2, "pruner": PrunerSpec(type="successive_halving")})
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize")
    study.enqueue_trial({"learning_rate": 5e-3, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    study.enqueue_trial({"learning_rate": 0.5, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    objective = build(spec)
    run_worker(spec, objective, WorkerOptions())
    good, bad = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    first_point = len(objective.train) // 2
    assert good.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED, bad.intermediate_values
    assert list(bad.intermediate_values) == [first_point]
    assert bad.system_attrs["completed_rung_0"] == bad.intermediate_values[first_point]


def test_pruning_on_validation_loss_in_a_study_that_maximizes_accuracy(spec):
    """pruner.metric: loss: trials report the loss (lower is better) while the study still maximizes
    accuracy; the diverging trial's loss is above the finished trial's, so it is stopped early."""
    spec = spec.model_copy(update={"n_trials": 2, "pruner": PrunerSpec(**{**spec.pruner.model_dump(), "metric": "loss"})})
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize")
    study.enqueue_trial({"learning_rate": 5e-3, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    study.enqueue_trial({"learning_rate": 0.5, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    run_worker(spec, build(spec), WorkerOptions())
    good, bad = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert good.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED, bad.intermediate_values
    assert good.value == max(good.user_attrs["curve"]["accuracy"]) >= 0.9  # the study's value stays accuracy
    assert [round(v, 5) for v in good.intermediate_values.values()] == good.user_attrs["curve"]["loss"]  # reports are the loss
    assert bad.intermediate_values[max(bad.intermediate_values)] > good.intermediate_values[max(bad.intermediate_values)]
    # A pruned trial keeps what it did: its curve, examples seen and speed.
    assert bad.user_attrs["curve"]["examples"] == list(bad.intermediate_values)
    assert bad.user_attrs["examples_seen"] == max(bad.intermediate_values)
    assert bad.user_attrs["examples_per_second"] > 0 and bad.user_attrs["best_metrics"]["accuracy"] > 0


class _AlwaysPrune(optuna.pruners.BasePruner):
    """A pruner that wants every trial stopped: shows where the objective asks it."""

    def prune(self, study, trial) -> bool:
        return True


def test_a_trial_is_never_pruned_at_its_last_point(spec):
    """Pruning after the last evaluation saves nothing and would throw a finished result away."""
    objective = build(spec)
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    study.enqueue_trial({"learning_rate": 5e-3, "batch_size": 16, "epochs": 1, "freeze_depth": 0})
    study.enqueue_trial({"learning_rate": 5e-3, "batch_size": 16, "epochs": 2, "freeze_depth": 0})
    study.optimize(objective, n_trials=2)
    one_epoch, two_epochs = study.trials
    # Two points per epoch: the 1-epoch trial is pruned at its first point (half an epoch), the
    # 2-epoch one too; neither is ever asked at its last point.
    assert one_epoch.state == two_epochs.state == TrialState.PRUNED
    assert max(one_epoch.intermediate_values) < len(objective.train)
    spec_one_point = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"points_per_epoch": 1})})
    single = build(spec_one_point)
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    study.enqueue_trial({"learning_rate": 5e-3, "batch_size": 16, "epochs": 1, "freeze_depth": 0})
    study.optimize(single, n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE, "the only point is the last: nothing to save by pruning"
    assert list(study.trials[0].intermediate_values) == [len(single.train)]


ARCHITECTURES = {
    "bert": ("BertConfig", "BertForSequenceClassification"),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification"),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification"),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification"),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification"),
    "gpt2": ("GPT2Config", "GPT2ForSequenceClassification"),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification"),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_layer_stack_is_found_in_every_family(arch):
    import transformers

    config_name, model_name = ARCHITECTURES[arch]
    small = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        n_embd=32, n_layer=3, n_head=2, dim=32, n_layers=3, n_heads=2, hidden_dim=64, num_labels=2,
        max_position_embeddings=64, n_positions=64, pad_token_id=0, embedding_size=32,
    )
    config = getattr(transformers, config_name)(**small)
    model = getattr(transformers, model_name)(config)
    assert freezing.depth(model) == 3
    embeddings = freezing.embedding_parameters(model)
    assert any(p is model.get_input_embeddings().weight for p in embeddings)
    freezing.freeze(model, 3)
    head_trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert head_trainable and not any(".0." in n or ".2." in n for n in head_trainable), head_trainable
