"""LoRA as search dimensions, on a real tiny BERT and a tiny Llama-style decoder, trained for real.

The base model is loaded once per worker and shared by every trial; each
trial attaches a fresh adapter and removes it. What a user relies on: the
drawn adapter settings are recorded, only adapter and head weights train, the
base is bit-for-bit the loaded one after any number of trials, and memory
does not grow with the trial count.
"""

from __future__ import annotations

import gc

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.params import TrainingParams
from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec
from objectives import build, task_for
from objectives.model import load_pretrained

from conftest import hpo, study_dict

pytestmark = pytest.mark.slow

LORA_SPACE = {
    "learning_rate": {"low": 5.0e-3, "high": 2.0e-2, "log": True},
    "batch_size": 16,
    "epochs": 2,
    "lora_r": {"choices": [2, 8]},
    "lora_alpha_ratio": {"choices": [1, 2]},
    "lora_dropout": {"low": 0.0, "high": 0.1},
    "lora_target": {"choices": ["attention", "mlp", "all-linear"]},
}


def lora_study(model, data, tmp_path, **overrides):
    study = study_dict(model, data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", adapter={"type": "lora"}, **overrides)
    study["search_space"] = dict(LORA_SPACE)
    return study


def _params(**values) -> TrainingParams:
    return TrainingParams.from_values({"learning_rate": 1e-2, "batch_size": 16, "epochs": 1, "lora_r": 4, **values})


def _tensor_elements() -> int:
    """Elements of every tensor the collector can reach outside the frozen generation (the worker's base)."""
    gc.collect()
    return sum(t.numel() for t in gc.get_objects() if isinstance(t, torch.Tensor))


def test_lora_trials_record_their_adapter_and_leave_the_base_as_loaded(tmp_path, tiny_model, tiny_data):
    spec = parse_spec(lora_study(tiny_model, tiny_data, tmp_path, n_trials=4))
    objective = build(spec)
    run_worker(spec, objective, WorkerOptions())
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert [t.state for t in trials].count(TrialState.COMPLETE) >= 3, [t.user_attrs.get("fail_reason") for t in trials]
    assert max(t.value for t in trials if t.value is not None) >= 0.9
    for trial in trials:
        adapter = trial.user_attrs["adapter"]
        assert {"lora_r", "lora_alpha_ratio", "lora_dropout", "lora_target"} <= set(trial.params)
        assert adapter["r"] == trial.params["lora_r"] and adapter["alpha"] == trial.params["lora_r"] * trial.params["lora_alpha_ratio"]
        expected = {"attention": {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"},
                    "mlp": {"intermediate.dense", "output.dense"}}
        expected["all-linear"] = expected["attention"] | expected["mlp"]
        assert set(adapter["target_modules"]) == expected[trial.params["lora_target"]]
        assert adapter["trained_head_modules"] == ["classifier"] and adapter["size_mb"] > 0
        assert 0 < trial.user_attrs["trainable_fraction"] < 0.2, "the base is frozen"
    fresh = load_pretrained(spec.model, task_for(spec.task), objective.label_names).model.state_dict()
    shared = objective.pretrained.model.state_dict()
    assert set(shared) == set(fresh)
    for name, value in shared.items():
        if not name.startswith("classifier."):  # the head of a fresh load is random; ours must be as we loaded it
            assert torch.equal(value, fresh[name]), name


def test_only_the_adapter_and_the_head_train_and_the_base_comes_back_bit_identical(tmp_path, tiny_model, tiny_data):
    objective = build(parse_spec(lora_study(tiny_model, tiny_data, tmp_path)))
    loaded = {k: v.clone() for k, v in objective.pretrained.model.state_dict().items()}
    params = _params(lora_target="all-linear", dropout=0.0)
    model = objective.new_model(params, 0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    objective.train_model(model, params, 0)
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed and all(".lora_B." in n or ".lora_A." in n or "modules_to_save" in n for n in changed), changed
    assert any("lora_B" in n for n in changed) and any("modules_to_save" in n for n in changed)
    objective.release(model)
    after = objective.pretrained.model.state_dict()
    assert set(after) == set(loaded) and all(torch.equal(loaded[k], after[k]) for k in loaded)
    assert all(p.requires_grad for p in objective.pretrained.model.parameters()), "trainable flags put back"
    assert all(m.p == 0.1 for m in objective.pretrained.model.modules() if isinstance(m, torch.nn.Dropout)), "dropout put back"


def test_a_trial_attaches_in_constant_memory_and_time(tmp_path, tiny_model, tiny_data):
    """No copy of the base per trial: tensors alive after trial N equal those after trial 1."""
    objective = build(parse_spec(lora_study(tiny_model, tiny_data, tmp_path)))
    sizes = []
    for seed in range(5):
        params = _params(lora_r=8, lora_target="all-linear")
        model = objective.new_model(params, seed)
        objective.train_model(model, params, seed, validation=objective.validation)
        objective.release(model)
        del model
        sizes.append(_tensor_elements())
    assert sizes[1:] == sizes[:1] * 4, sizes


def test_the_same_seed_gives_the_same_adapter_and_head(tmp_path, tiny_model, tiny_data):
    objective = build(parse_spec(lora_study(tiny_model, tiny_data, tmp_path)))
    results = []
    for seed in (0, 0, 1):
        params = _params(lora_target="attention")
        model = objective.new_model(params, seed)
        results.append(objective.train_model(model, params, seed, validation=objective.validation).best.metrics["loss"])
        objective.release(model)
    assert results[0] == results[1] and results[0] != results[2], results


def test_a_llama_decoder_gets_adapters_on_its_projections(tmp_path, tiny_llama, tiny_data):
    objective = build(parse_spec(lora_study(tiny_llama, tiny_data, tmp_path)))
    loaded = {k: v.clone() for k, v in objective.pretrained.model.state_dict().items()}
    for target, expected in (("attention", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
                             ("mlp", {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})):
        params = _params(lora_target=target)
        model = objective.new_model(params, 0)
        assert set(objective.models.facts(model, params)["target_modules"]) == expected
        assert objective.models.facts(model, params)["trained_head_modules"] == ["score"]
        objective.train_model(model, params, 0, validation=objective.validation)
        objective.release(model)
    assert all(torch.equal(loaded[k], v) for k, v in objective.pretrained.model.state_dict().items())


def test_freeze_depth_keeps_adapters_out_of_the_bottom_layers(tmp_path, tiny_model, tiny_data):
    objective = build(parse_spec(lora_study(tiny_model, tiny_data, tmp_path)))
    params = _params(lora_target="all-linear", freeze_depth=1)
    model = objective.new_model(params, 0)
    adapted = {name for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted and all(".layer.1." in name for name in adapted), adapted
    objective.release(model)


def test_validate_shows_trainable_parameters_per_target_and_rank(tmp_path, tiny_model, tiny_data):
    import yaml

    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(lora_study(tiny_model, tiny_data, tmp_path)))
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "adapter   lora" in result.stdout
    table = result.stdout.split("trainable parameters with adapter lora")[1]
    assert "full fine-tuning" in table
    for target in ("attention", "mlp", "all-linear"):
        assert table.count(target) >= 2, table  # the smallest and the largest rank
    # Counted from the config; a trial's record counts the attached model: they agree.
    spec = parse_spec(lora_study(tiny_model, tiny_data, tmp_path))
    objective = build(spec)
    params = _params(lora_target="mlp", lora_r=8)
    model = objective.new_model(params, 0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    objective.release(model)
    row = next(line for line in table.splitlines() if line.split()[:2] == ["mlp", "8"])
    assert int(row.split()[2].replace(",", "")) == trainable, (row, trainable)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("adapter"), "search_space.lora_r: applies only with adapter.type lora"),
        (lambda s: s["search_space"].update(lora_r={"choices": [0, 8]}), "search_space.lora_r.choices[0]: must be >= 1"),
        (lambda s: s["search_space"].update(lora_target={"choices": ["attention", "ffn"]}), "search_space.lora_target.choices[1]: must be one of"),
        (lambda s: s["search_space"].update(lora_dropout={"low": 0.0, "high": 1.5}), "search_space.lora_dropout.high: must be < 1"),
        (lambda s: s["search_space"].update(lora_alpha=16), "give lora_alpha or lora_alpha_ratio"),
        (lambda s: s.update(adapter={"type": "lora", "rank": 8}), "adapter.rank: is not a known key"),
        (lambda s: s.update(adapter={"type": "qlora"}), "adapter.type:"),
    ],
    ids=["no-adapter", "rank-0", "unknown-target", "dropout-range", "alpha-and-ratio", "unknown-key", "unknown-type"],
)
def test_bad_lora_settings_exit_2_with_one_line_and_write_nothing(tmp_path, tiny_model, tiny_data, change, message):
    import yaml

    study = lora_study(tiny_model, tiny_data, tmp_path)
    change(study)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("launch", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "hpo.db").exists() or not optuna.get_all_study_names(f"sqlite:///{tmp_path / 'hpo.db'}")


def test_lora_study_retrains_exports_and_reloads_to_the_recorded_test_metric(tmp_path, tiny_model, tiny_data):
    """As a user runs it: launch, retrain, export --merge; the adapter (PEFT) and the merged model
    (Auto classes) both score the test split as recorded; best.yaml relaunches to the same value."""
    import json

    import yaml
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    study = lora_study(tiny_model, tiny_data, tmp_path, name="lora-winner", n_trials=3)
    study["retrain"] = {"seeds": [0]}
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(study))
    for command in (["launch", str(path)], ["retrain", str(path)], ["export", str(path), "-o", str(tmp_path / "out"), "--merge"]):
        result = hpo(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "model").iterdir()}
    assert (out / "merged" / "config.json").is_file()
    stored = optuna.load_study(study_name="lora-winner", storage=study["storage"])
    record = stored.user_attrs["retrain"]
    recorded = record["seeds"][0]["test"]

    spec = parse_spec({**study, "name": "lora-reload"})
    objective = build(spec)
    objective.load_test()
    base_path = PeftConfig.from_pretrained(out / "model").base_model_name_or_path
    config = AutoConfig.from_pretrained(base_path, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config)
    adapter = PeftModel.from_pretrained(base, out / "model").eval()
    scored = objective.evaluate(adapter, objective.test, fp32=True)
    assert scored["accuracy"] == recorded["accuracy"] and scored["loss"] == pytest.approx(recorded["loss"], abs=1e-6)
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    scored = objective.evaluate(merged, objective.test, fp32=True)
    assert scored["accuracy"] == recorded["accuracy"] and scored["loss"] == pytest.approx(recorded["loss"], abs=1e-4)

    args = json.loads((out / "training_args.json").read_text())
    winner = next(t for t in stored.trials if t.number == record["winner"]["trial"])
    assert args["adapter"]["r"] == winner.params["lora_r"]
    assert args["adapter"]["target_modules"] == winner.user_attrs["adapter"]["target_modules"]
    assert not any(k.startswith("lora_") for k in args["other_hyperparameters"])
    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and f"rank {winner.params['lora_r']}" in card

    relaunched = hpo("launch", str(out / "best.yaml"), cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stderr
    rerun = optuna.load_study(study_name="lora-winner-best", storage=study["storage"]).best_trial
    assert rerun.value == pytest.approx(winner.value, abs=1e-6)


def test_a_convolutional_model_without_linear_layers_is_a_clear_error(tmp_path, tiny_model, tiny_data):
    """ResNet's blocks are convolutions: LoRA on linear layers has nowhere to go; say so at validate."""
    import yaml
    from transformers import ResNetConfig, ResNetModel

    folder = tmp_path / "resnet"
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)).save_pretrained(folder)
    study = lora_study(folder, tiny_data, tmp_path, task="image-classification")
    path = tmp_path / "conv.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "search_space.lora_target: ResNetForImageClassification has no attention linear layers" in result.stderr
    assert "Traceback" not in result.stderr
