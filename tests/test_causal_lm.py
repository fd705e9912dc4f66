"""``task: causal-lm`` on a tiny Llama-style decoder, pre-trained here and fine-tuned for real.

What a user relies on: the loss is on completion (assistant) tokens only;
chat rows are rendered with the tokenizer's template; packing scores exactly
as unpacked rows; trials are compared by completion tokens seen; retrain and
export give a model that reloads to the recorded test loss; bad data is one
line naming the field, before anything is written.
"""

from __future__ import annotations

import json

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from hpo.params import TrainingParams
from hpo.runner import WorkerOptions, run_worker
from hpo.spec import parse_spec
from objectives import build
from objectives.heads import IGNORE
from objectives.lm_inputs import encode_row

from conftest import hpo, lm_study, make_sentences, sentiment_prompt, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def objective(tmp_path_factory, tiny_decoder, lm_data):
    folder = tmp_path_factory.mktemp("lm")
    return build(parse_spec(lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{folder / 'hpo.db'}")))


def _params(**values) -> TrainingParams:
    return TrainingParams.from_values({"learning_rate": 1e-2, "batch_size": 8, "epochs": 1, "freeze_depth": 0, **values})


def test_only_completion_tokens_are_scored(objective):
    tokenizer = objective.pretrained.tokenizer
    row = {"prompt": "the tea was great . sentiment :", "completion": "yes"}
    ids, labels, status = encode_row(row, tokenizer, objective.spec.data)
    prompt = [tokenizer.bos_token_id] + tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    assert status == 0 and ids[: len(prompt)] == prompt, "a prompt starts a sequence: BOS, no end-of-sequence token"
    assert labels == [IGNORE] * len(prompt) + ids[len(prompt):]
    assert tokenizer.decode(ids[len(prompt):]) == "yes [SEP]", "the completion and the end-of-sequence token"

    # Changing what the model predicts at prompt positions changes nothing; at a completion position it does.
    batch = objective.validation.batch([0, 1], torch.device("cpu"))
    labels = batch.pop("labels")
    logits = torch.randn(*labels.shape, len(tokenizer))
    loss = objective.task.head.loss(logits, labels)
    scored = (labels[:, 1:] != IGNORE)  # position t predicts token t + 1
    prompt_positions = torch.zeros_like(logits[..., 0], dtype=torch.bool)
    prompt_positions[:, :-1] = ~scored
    assert torch.equal(objective.task.head.loss(logits + 5 * torch.randn_like(logits) * prompt_positions[..., None], labels), loss)
    completion_positions = torch.zeros_like(prompt_positions)
    completion_positions[:, :-1] = scored
    assert objective.task.head.loss(logits + 5 * torch.randn_like(logits) * completion_positions[..., None], labels) != loss


def test_the_loss_is_the_shifted_cross_entropy_and_the_models_own(objective):
    # Shifting the labels (not copying the logits, bench/sft_throughput.py) must not move the value:
    # the same as the logits shifted, and as transformers' own loss on a real batch, to 1e-6.
    batch = objective.validation.batch([0, 1, 2], torch.device("cpu"))
    labels = batch.pop("labels")
    model = objective.pretrained.model
    with torch.no_grad():
        logits = model(**batch).logits
        own = model(**batch, labels=labels).loss
    loss = objective.task.head.loss(logits, labels)
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                ignore_index=IGNORE)
    assert float(loss) == pytest.approx(float(shifted), abs=1e-6)
    assert float(loss) == pytest.approx(float(own), abs=1e-6)


def test_packing_scores_exactly_as_unpacked_rows(tmp_path, tiny_decoder, lm_data):
    unpacked = build(parse_spec(lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'a.db'}",
                                         data={**lm_study(tiny_decoder, lm_data)["data"], "packing": False})))
    packed = build(parse_spec(lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'b.db'}")))
    assert len(packed.validation) < len(unpacked.validation), "several examples per packed row"
    assert packed.validation.units.sum() == unpacked.validation.units.sum()
    model = unpacked.new_model(_params(), 0)
    one = unpacked.evaluate(model, unpacked.validation)
    other = packed.evaluate(model, packed.validation)
    assert other["loss"] == pytest.approx(one["loss"], abs=1e-6)


def test_trials_are_compared_by_completion_tokens_seen(tmp_path, tiny_decoder, lm_data):
    spec = parse_spec(lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2, pruner={"type": "none"}))
    created = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="minimize")
    for batch_size in (4, 8):
        created.enqueue_trial({"learning_rate": 5e-3, "batch_size": batch_size})
    objective = build(spec)
    run_worker(spec, objective, WorkerOptions(), objective.describe())
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    tokens = int(objective.train.units.sum())
    assert tokens == 160 * 2, "one answer word and the end-of-sequence token per row"
    for trial in trials:
        assert sorted(trial.intermediate_values) == [tokens // 2, tokens]
        assert trial.user_attrs["budget_unit"] == "tokens" and trial.user_attrs["examples_seen"] == tokens
        assert trial.value < trial.user_attrs["curve"]["loss"][0] or trial.value < 1.0
    assert optuna.load_study(study_name=spec.name, storage=spec.storage).user_attrs["budget_unit"] == "tokens"


def test_chat_rows_score_the_assistant_turns_only(tmp_path, tiny_decoder):
    rows = []
    for text, label in make_sentences(60, 5):
        answer = "yes" if label == "pos" else "no"
        rows.append({"messages": [{"role": "system", "content": "sentiment"}, {"role": "user", "content": text},
                                  {"role": "assistant", "content": answer}, {"role": "user", "content": "sentiment ."},
                                  {"role": "assistant", "content": answer}]})
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows[:40]), "validation": write_jsonl(tmp_path / "validation.jsonl", rows[40:]),
             "test": write_jsonl(tmp_path / "test.jsonl", rows[40:])}
    study = lm_study(tiny_decoder, files, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    study["data"].update(format="messages", max_length=64)
    objective = build(parse_spec(study))
    tokenizer = objective.pretrained.tokenizer
    ids, labels, _ = encode_row(rows[0], tokenizer, objective.spec.data)
    spans = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    answer = rows[0]["messages"][2]["content"]
    assert spans == f"{answer} [SEP] {answer} [SEP]", "each assistant reply and its end of turn, nothing else"
    model = objective.new_model(_params(), 0)
    result = objective.train_model(model, _params(), 0, validation=objective.validation)
    assert result.best is not None and result.best.metrics["loss"] < result.points[0].metrics["loss"] + 1.0


def test_a_lora_sft_study_launches_retrains_exports_and_reloads_to_the_recorded_test_loss(tmp_path, tiny_decoder, lm_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    study = lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", name="sft", n_trials=3,
                     adapter={"type": "lora"}, retrain={"seeds": [0]})
    study["search_space"] = {"learning_rate": {"low": 5.0e-3, "high": 3.0e-2, "log": True}, "batch_size": 4, "epochs": 1,
                             "lora_r": {"choices": [4, 8]}, "lora_target": {"choices": ["attention", "all-linear"]}}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(study))
    validated = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "tokens    train: min" in validated.stdout, validated.stdout
    assert "imbalanced" not in validated.stdout, "token lengths are not classes"
    for command in (["launch", str(path)], ["retrain", str(path)], ["export", str(path), "-o", str(tmp_path / "out"), "--merge"]):
        result = hpo(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    stored = optuna.load_study(study_name="sft", storage=study["storage"])
    assert all(t.user_attrs["adapter"]["trained_head_modules"] == [] for t in stored.trials), "the LM head is tied: not copied"
    recorded = stored.user_attrs["retrain"]["seeds"][0]["test"]
    assert set(recorded) == {"loss", "perplexity"}

    objective = build(parse_spec({**study, "name": "sft-reload"}))
    objective.load_test()
    base = AutoModelForCausalLM.from_pretrained(tiny_decoder)
    adapter = PeftModel.from_pretrained(base, tmp_path / "out" / "model").eval()
    assert objective.evaluate(adapter, objective.test)["loss"] == pytest.approx(recorded["loss"], abs=1e-6)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged").eval()
    assert objective.evaluate(merged, objective.test)["loss"] == pytest.approx(recorded["loss"], abs=1e-4)
    assert (tmp_path / "out" / "merged" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize(
    "rows, data, message",
    [
        ([{"question": "a", "completion": "yes"}] * 3, {}, "data.prompt_column: column 'prompt' not in the train split"),
        ([{"messages": [{"content": "hi"}]}] * 3, {"format": "messages"}, "data.train: row 0, turn 0: a turn needs a 'role'"),
        ([{"prompt": "a b", "completion": " "}] * 3, {}, "data.train: the split is empty after dropping rows without a completion"),
        ([{"prompt": "good " * 40, "completion": "yes " * 40}], {"max_length": 16}, "data.max_length: 16 tokens cannot hold a completion"),
    ],
    ids=["no-prompt-column", "turn-without-role", "empty-completions", "completion-over-max-length"],
)
def test_bad_language_model_data_exits_2_with_one_line(tmp_path, tiny_decoder, lm_data, rows, data, message):
    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    study = lm_study(tiny_decoder, {**lm_data, "train": train}, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    study["data"].update(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("launch", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not optuna.get_all_study_names(study["storage"])


def test_a_tokenizer_without_a_chat_template_is_named(tmp_path, tiny_model, lm_data):
    def chat(word):
        return [{"messages": [{"role": "user", "content": word}, {"role": "assistant", "content": "b"}]}] * 4

    files = {**lm_data, "train": write_jsonl(tmp_path / "chat.jsonl", chat("a")),
             "validation": write_jsonl(tmp_path / "chat-validation.jsonl", chat("c"))}
    from transformers import LlamaConfig, LlamaForCausalLM
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model, folder)  # the BERT tokenizer: no chat template
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2)).save_pretrained(folder)
    study = lm_study(folder, files, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    study["data"]["format"] = "messages"
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert result.returncode == 2 and "data.format: messages needs a tokenizer with a chat template" in result.stderr, result.stderr


def test_language_model_settings_are_checked_at_validation(tmp_path, tiny_decoder, lm_data):
    study = lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", metric="accuracy")
    study["data"].pop("format")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert result.returncode == 2
    assert "metric: accuracy does not apply to causal-lm (use loss, perplexity, exact_match, rouge_l)" in result.stderr
    assert "data.format: is required with task causal-lm" in result.stderr


def test_generation_metrics_decode_a_fixed_subset_greedily(tmp_path, tiny_decoder, lm_data):
    from objectives.generation import exact_match, normalise, rouge_l

    assert normalise("  Paris. ") == "paris" and normalise("New  York!") == "new york"
    assert exact_match(["Paris.", "rome"], ["paris", "Madrid"]) == 0.5
    assert rouge_l(["the cat sat"], ["the cat sat down"]) == pytest.approx(2 * 3 / 7)

    study = lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", metric="exact_match")
    study["data"].update(max_generation_samples=12, max_new_tokens=2)
    spec = parse_spec(study)
    assert spec.direction == "maximize"
    objective = build(spec)
    params = _params(learning_rate=2e-2, epochs=2)
    model = objective.new_model(params, 0)
    result = objective.train_model(model, params, 0, validation=objective.validation)
    assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(result.best.metrics)
    assert result.best.metrics["exact_match"] >= 0.5, [p.metrics for p in result.points]  # it answers yes/no

    bad = dict(study, data={**study["data"], "max_generation_samples": 0})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    refused = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert refused.returncode == 2 and "data.max_generation_samples: must be > 0 for exact_match" in refused.stderr



@pytest.mark.parametrize(
    "adapter, message",
    [({"type": "lora", "quantize": "4bit"}, "adapter.quantize: 4bit needs a CUDA GPU (bitsandbytes); this worker has none"),
     ({"type": "none", "quantize": "4bit"}, "adapter.quantize: applies only with type lora (QLoRA)")],
    ids=["no-gpu", "without-lora"],
)
def test_qlora_is_refused_where_it_cannot_run(tmp_path, tiny_decoder, lm_data, adapter, message):
    if torch.cuda.is_available() and adapter["type"] == "lora":
        pytest.skip("this machine has a CUDA GPU: QLoRA can run here")
    study = lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", adapter=adapter)
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump(study))
    result = hpo("launch", str(path), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not optuna.get_all_study_names(study["storage"])


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path, tiny_decoder, lm_data):
    """Recomputing activations changes memory, not the result."""
    losses = []
    for checkpointing in (False, True):
        study = lm_study(tiny_decoder, lm_data, storage=f"sqlite:///{tmp_path / 'hpo.db'}", adapter={"type": "lora"},
                         runtime={"num_threads": 1, "precision": "fp32", "gradient_checkpointing": checkpointing})
        objective = build(parse_spec(study))
        assert objective.pretrained.model.is_gradient_checkpointing == checkpointing
        params = _params(lora_r=4)
        model = objective.new_model(params, 0)
        losses.append(objective.train_model(model, params, 0, validation=objective.validation).best.metrics["loss"])
        objective.release(model)
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
