"""The study file, as typed objects.

``load_spec`` is called once, at the edge; everything below it receives a
``StudySpec`` and never a dict. Validation reports every problem at once, each
named by its YAML path, because a user fixing a file one error per run is a
user who gives up.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hpo.errors import SpecError
from hpo.params import CONDITIONS, KNOBS, LORA_KNOBS, REQUIRED, REQUIRED_WITH_ADAPTER, TrainingParams
from hpo.yamlio import read_yaml

# Metric name -> optimisation direction. The objective computes the metric;
# the search only needs to know which way is better.
METRICS: dict[str, str] = {
    "accuracy": "maximize",
    "f1": "maximize",  # macro-averaged
    "balanced_accuracy": "maximize",
    "precision": "maximize",  # macro-averaged
    "recall": "maximize",  # macro-averaged
    "mcc": "maximize",
    "loss": "minimize",  # cross-entropy, or mean squared error for regression
    # text-regression
    "rmse": "minimize",
    "mae": "minimize",
    "r2": "maximize",
    "spearman": "maximize",
    # causal-lm: token-mean cross-entropy on completion tokens is `loss`
    "perplexity": "minimize",
    # causal-lm, on up to data.max_generation_samples validation rows decoded greedily
    "exact_match": "maximize",  # normalised: case, surrounding space and punctuation, inner runs of space
    "rouge_l": "maximize",  # F-measure of the longest common subsequence of words
}
GENERATION_METRICS = ("exact_match", "rouge_l")

TASKS = ("text-classification", "text-regression", "image-classification", "causal-lm")
REGRESSION_METRICS = ("rmse", "mae", "r2", "spearman", "loss")
LANGUAGE_MODEL_METRICS = ("loss", "perplexity", "exact_match", "rouge_l")
CLASSIFICATION_METRICS = tuple(m for m in METRICS if m not in (*REGRESSION_METRICS, *LANGUAGE_MODEL_METRICS) or m == "loss")
TASK_METRICS = {
    "text-classification": CLASSIFICATION_METRICS,
    "image-classification": CLASSIFICATION_METRICS,
    "text-regression": REGRESSION_METRICS,
    "causal-lm": LANGUAGE_MODEL_METRICS,
}

DEFAULT_STORAGE = "sqlite:///hpo.db"
# The resolved spec is stored on the study (and every worker compares it): a few KB is usual.
MAX_SPEC_BYTES = 65536
# torch.distributed.run sends SIGKILL this many seconds after it forwards SIGTERM to the ranks (elastic pcontext.close).
TORCHRUN_KILL_AFTER = 30.0
FILE_SOURCES = ("csv", "json", "parquet", "imagefolder")


class Strict(BaseModel):
    # strict: YAML's `yes` is a boolean and "2" a string; neither becomes a number
    # (pydantic would read `n_trials: true` as 1). Integers still pass where a float is expected.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class Range(Strict):
    """A numeric interval; integers when both bounds are integers."""

    low: StrictInt | StrictFloat
    high: StrictInt | StrictFloat
    log: bool = False
    step: StrictInt | StrictFloat | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    @model_validator(mode="after")
    def _bounds(self) -> "Range":
        if self.low >= self.high:
            raise PydanticCustomError(
                "range", "low ({low}) must be < high ({high})", {"field": "low", "low": self.low, "high": self.high}
            )
        if self.log and self.low <= 0:
            raise PydanticCustomError("range", "must be > 0 on a log scale", {"field": "low"})
        if self.step is not None:
            if self.step <= 0:
                raise PydanticCustomError("range", "must be > 0", {"field": "step"})
            if self.log:
                raise PydanticCustomError("range", "cannot be combined with log: true", {"field": "step"})
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]


class Choices(Strict):
    """A categorical dimension."""

    choices: list[Scalar] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        if len(set(map(repr, value))) != len(value):
            raise ValueError("must not repeat a value")
        return value

    def values_to_check(self) -> list[Any]:
        return list(self.choices)


def _dimension_tag(value: Any) -> str:
    if isinstance(value, dict):
        return "<choices>" if "choices" in value else "<range>"
    if isinstance(value, Range):
        return "<range>"
    if isinstance(value, Choices):
        return "<choices>"
    return "<fixed>"


Dimension = Annotated[
    Union[Annotated[Range, Tag("<range>")], Annotated[Choices, Tag("<choices>")], Annotated[Scalar, Tag("<fixed>")]],
    Discriminator(_dimension_tag),
]
_DIMENSION = TypeAdapter(Dimension)


class DataSpec(Strict):
    """Where the examples come from and how they become model inputs."""

    source: Literal["demo", "hub", "csv", "json", "parquet", "imagefolder"]
    path: str | None = None  # hub dataset id, e.g. "glue" (source: hub only)
    name: str | None = None  # hub dataset configuration, e.g. "sst2"
    train: str = "train"  # split name (hub), file path (csv/json/parquet) or folder (imagefolder)
    validation: str | None = None  # None: carve validation_fraction out of train
    test: str | None = None  # read only by retrain, never during the search
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    text_column: str | list[str] = "text"  # one column, or two for text pairs
    label_column: str = "label"
    max_length: int = Field(128, ge=8, le=32768)
    max_train_samples: int | None = Field(None, ge=1)
    max_validation_samples: int | None = Field(None, ge=1)
    # Batch examples of similar length together (less padding, much faster on
    # varied texts); batches are still drawn in a new random order every epoch.
    group_by_length: bool = True
    # Hygiene: exact repeats of a row within a split, and validation (and, at
    # retrain, test) rows whose text also occurs in train. Counted always.
    drop_duplicates: bool = True
    drop_leaking: bool = True
    # Images (task: image-classification): the column of images (hub) or of
    # image paths, relative to the file that lists them (csv/json/parquet);
    # imagefolder reads one sub-folder per class. Duplicates and leaks are
    # found by file content. augment: random crop and flip of training images.
    image_column: str | None = None
    augment: bool = True
    # Language models (task: causal-lm). prompt-completion: a prompt and a completion
    # column; messages: one column of chat turns ({role, content}), rendered with the
    # tokenizer's chat template. The loss covers completion (assistant) tokens only.
    format: Literal["prompt-completion", "messages"] | None = None
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    # Several short examples per row of max_length tokens, each attending only to
    # itself (position ids restart per example): the same loss as one example per
    # row, with no padding. batch_size then counts packed rows.
    packing: bool = True
    # A row longer than max_length: keep its end and cut the prompt from the left
    # ("prompt"), or drop the row ("drop"). Either is counted in the data report.
    truncation: Literal["prompt", "drop"] = "prompt"
    # Generation metrics (exact_match, rouge_l) decode the first N validation rows greedily
    # at every evaluation point, up to max_new_tokens each; 0 computes none (loss only).
    max_generation_samples: int = Field(0, ge=0, le=100_000)
    max_new_tokens: int = Field(64, ge=1, le=32768)

    @field_validator("text_column")
    @classmethod
    def _one_or_two(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError("must be one column or a pair of columns")
        return value

    @model_validator(mode="after")
    def _source_fields(self) -> "DataSpec":
        if self.source == "hub" and not self.path:
            raise PydanticCustomError("data", "is required when source is hub (e.g. glue)", {"field": "path"})
        if self.source != "hub" and (self.path or self.name):
            raise PydanticCustomError("data", "is only used with source: hub", {"field": "path" if self.path else "name"})
        if self.source == "imagefolder" and not self.image_column:
            raise PydanticCustomError("data", "imagefolder holds images: use task image-classification", {"field": "source"})
        return self

    @property
    def grouped_by_length(self) -> bool:
        """Whether batches group rows of similar length: packed rows are all about max_length long,
        and grouping them would only make batches less random (bench/sft_peer.py: it cost hpo most of
        its small loss gap to TRL)."""
        return self.group_by_length and not (self.format is not None and self.packing)

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The columns that make one example, by what the study reads."""
        if self.format == "prompt-completion":
            return (self.prompt_column, self.completion_column)
        if self.format == "messages":
            return (self.messages_column,)
        return (self.image_column,) if self.image_column else self.text_columns

    @property
    def text_columns(self) -> tuple[str, ...]:
        return (self.text_column,) if isinstance(self.text_column, str) else tuple(self.text_column)

    @property
    def file_splits(self) -> dict[str, str]:
        """Split -> file path, for file sources."""
        if self.source not in FILE_SOURCES:
            return {}
        splits = {"train": self.train, "validation": self.validation, "test": self.test}
        return {split: path for split, path in splits.items() if path}


MAX_OPTIONS_BYTES = 8192  # a sampler's or pruner's options, as stored with the study


def _bounded_options(section: Any) -> Any:
    """Options are stored on the study as JSON: refuse what no constructor needs (an alias bomb stored 483 KB)."""
    try:
        size = len(json.dumps(section.model_extra or {}, default=str))
    except (TypeError, ValueError, RecursionError):
        raise PydanticCustomError("options", "options must be plain YAML values", {}) from None
    if size > MAX_OPTIONS_BYTES:
        raise PydanticCustomError(
            "options", "its options take {size} bytes; at most {limit} are stored with the study",
            {"size": f"{size:,}", "limit": f"{MAX_OPTIONS_BYTES:,}"},
        )
    return section


class SamplerSpec(BaseModel):
    """Which Optuna sampler; keys other than ``type`` go to its constructor."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    type: Literal["tpe", "random", "grid", "gp", "cmaes"] = "tpe"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _bounded(self):
        return _bounded_options(self)


class PrunerSpec(BaseModel):
    """Which Optuna pruner; keys other than ``type`` go to its constructor.

    Steps are training examples seen, so ``n_warmup_steps`` or hyperband's
    ``min_resource`` are counted in examples, not optimizer steps.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    type: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    # The validation metric trials report and the pruner judges; default: the
    # study's metric. `loss` moves from the first steps, while accuracy on small
    # data often sits at the majority-class rate for the first epoch, where
    # every trial ties and no pruner can act (docs/benchmarks.md, goal 4).
    metric: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _bounded(self):
        return _bounded_options(self)


class EvaluationSpec(Strict):
    # Evaluation points per epoch, placed by examples seen so that trials with
    # different batch sizes are compared after the same amount of data.
    points_per_epoch: int = Field(2, ge=1, le=100)
    batch_size: int = Field(64, ge=1)


class RetrainSpec(Strict):
    """What ``hpo retrain`` does with the winner once the search is over."""

    # Re-run the K best configurations on the validation split with every seed
    # below and pick the best mean: one lucky seed should not win the study.
    top_k: int = Field(1, ge=1)
    seeds: list[Annotated[StrictInt, Field(ge=0, lt=2**32)]] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    # train+validation: training stops at the winner's best point (there is no
    # validation split left to choose it); train: each seed keeps its best point.
    # Also accepted as `on` (which YAML 1.1 reads as the key true; mapped back below).
    train_on: Literal["train+validation", "train"] = Field(
        "train+validation", validation_alias=AliasChoices("train_on", "on")
    )
    # Retrained models go to <output_dir>/<study name>/model, relative to the
    # current directory like the default SQLite file; the path is kept on the study.
    output_dir: str = Field("retrained", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a seed")
        return value


class AdapterSpec(Strict):
    """Full fine-tuning (``none``) or low-rank adapters trained on a frozen base (``lora``, through PEFT).

    With ``lora`` the worker loads the base once and every trial attaches a
    fresh adapter to it and removes it afterwards; the ``lora_*`` dimensions
    of the search space shape the adapter, and ``freeze_depth`` (optional)
    keeps adapters out of the bottom k layers. The task's head always trains.
    """

    type: Literal["none", "lora"] = "none"
    # QLoRA: the frozen base loaded in 4 (or 8) bits through bitsandbytes, on CUDA only;
    # the adapter trains in bf16. A worker without a CUDA GPU refuses it (exit 2).
    quantize: Literal["4bit", "8bit"] | None = None

    @model_validator(mode="after")
    def _quantize_needs_lora(self) -> "AdapterSpec":
        if self.quantize and self.type != "lora":
            raise PydanticCustomError("adapter", "applies only with type lora (QLoRA)", {"field": "quantize"})
        return self


class RuntimeSpec(Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto: bf16 autocast on GPUs and CPUs that multiply in bf16 natively (CPUs with
    # AVX512-BF16 or AMX: about 1.5x faster on MiniLM), fp32 elsewhere.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # CPU threads per worker; None leaves torch's default.
    num_threads: int | None = Field(None, ge=1)
    # Recompute activations in the backward pass instead of keeping them: about a third
    # slower, much less memory (long sequences, large models on one GPU).
    gradient_checkpointing: bool = False
    # Processes one trial runs on (one per GPU; CPU processes with gloo where there is none), under
    # torchrun. batch_size stays the global batch, split across them. ddp: a whole replica per process;
    # fsdp: every transformer block and the rest of the model sharded across the processes (torch's
    # fully_shard), for models whose weights, gradients and optimizer state do not fit one GPU.
    # With one process the strategy changes nothing.
    processes_per_trial: int = Field(1, ge=1, le=4096)
    strategy: Literal["ddp", "fsdp"] = "ddp"


class HeartbeatSpec(Strict):
    """How dead workers are detected and their trials retried."""

    interval: int = Field(10, ge=1)  # seconds between heartbeats of a running trial
    # A trial silent for this long is failed and re-queued. Keep it well above
    # `interval` and above the database outages you want to ride out.
    grace_period: int = Field(60, ge=2)
    max_retry: int = Field(3, ge=0)  # re-queues of the same parameters after a lost worker

    @model_validator(mode="after")
    def _grace_above_interval(self) -> "HeartbeatSpec":
        if self.grace_period <= self.interval:
            raise PydanticCustomError("heartbeat", "must be greater than interval", {"field": "grace_period"})
        return self


class CheckpointSpec(Strict):
    """Where running trials keep what resuming needs, so a preempted or lost trial goes on from there.

    ``store`` is a folder every worker reaches (relative paths are relative to
    the study file) or ``s3://bucket/prefix``; Optuna's artifact stores do the
    writing. A checkpoint holds the trainable weights (the adapter, or the
    layers above ``freeze_depth``), optimizer, scheduler and RNG states and the
    position in the batch order; never the frozen base.
    """

    store: str = Field(min_length=1)
    # point: at every evaluation point; a number: also every that many seconds (at a batch boundary).
    every: Literal["point"] | float = "point"
    # running: a trial's checkpoint is deleted when it ends; best: the best complete trial's
    # final trainable weights stay (one at a time) for `hpo export --from-checkpoint`.
    keep: Literal["running", "best"] = "running"
    # After SIGTERM, the seconds a trial has to reach its next optimizer step and save there; past
    # them the worker stops anyway, keeping the last checkpoint. Keep it under the scheduler's grace
    # period (30 s on Kubernetes and Docker) minus the time a save takes.
    sigterm_wait: float = Field(20.0, gt=0, le=3600)

    @field_validator("every", mode="before")
    @classmethod
    def _point_or_seconds(cls, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value != "point" and not (number and value > 0):
            raise ValueError(f"must be point or a number of seconds > 0, got {_got(value)}")
        return value

    @field_validator("store")
    @classmethod
    def _store_kind(cls, value: str) -> str:
        if value.startswith("s3://") and not value[len("s3://"):].split("/", 1)[0]:
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        if "://" in value and not value.startswith("s3://"):
            raise ValueError("a folder path or s3://bucket/prefix")
        return value

    @property
    def seconds(self) -> float | None:
        return None if self.every == "point" else float(self.every)


class StudySpec(Strict):
    name: str = Field(min_length=1, max_length=200)  # also a folder name (retrained/<name>/model)
    storage: str = DEFAULT_STORAGE
    n_trials: int = Field(ge=1)  # global budget: finished trials across all launches and workers
    timeout: float | None = Field(None, gt=0)  # seconds, per launch
    trial_timeout: float | None = Field(None, gt=0)  # seconds one trial may run before it is failed
    seed: int = Field(0, ge=0, lt=2**32)  # numpy and torch take seeds in 0..2**32-1
    model: str = Field(min_length=1)  # hub id, local directory, or "demo"
    task: Literal[TASKS] = "text-classification"  # type: ignore[valid-type]
    data: DataSpec
    metric: Literal[tuple(METRICS)] = "accuracy"  # type: ignore[valid-type]
    # Loss weights per class: "balanced" (rows / (classes x class rows), from
    # train) or a weight per label name; absent classes weigh 1.
    class_weights: Literal["balanced"] | dict[str, Annotated[float, Field(gt=0)]] | None = None
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    retrain: RetrainSpec = RetrainSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    adapter: AdapterSpec = AdapterSpec()
    heartbeat: HeartbeatSpec = HeartbeatSpec()
    checkpoints: CheckpointSpec | None = None  # absent: a lost trial starts again from scratch
    search_space: dict[str, Dimension]

    @field_validator("name", "model")
    @classmethod
    def _one_clean_line(cls, value: str, info: Any) -> str:
        """A name is shown in tables and becomes a folder: one line, no blank, no path."""
        if not value.strip():
            raise ValueError("must not be blank")
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
            raise ValueError("must be one line without control characters")
        if value != value.strip():
            raise ValueError("must not start or end with spaces")
        if info.field_name == "name" and ("/" in value or "\\" in value or value in (".", "..")):
            raise ValueError("must not contain / or \\ (it names a folder)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        """No metric named: accuracy for classification, rmse for regression; images in column "image"."""
        if not isinstance(raw, dict):
            return raw
        if "metric" not in raw and raw.get("task") in ("text-regression", "causal-lm"):
            raw = {**raw, "metric": "rmse" if raw["task"] == "text-regression" else "loss"}
        data = raw.get("data")
        if raw.get("task") == "image-classification" and isinstance(data, dict) and "image_column" not in data:
            raw = {**raw, "data": {**data, "image_column": "image"}}
        return raw

    @model_validator(mode="after")
    def _fits_task(self) -> "StudySpec":
        """A metric or a loss option that the task cannot produce dooms every trial: say so now,
        every such problem at once (one error naming each path, joined)."""
        problems = self.task_problems()
        if problems:
            raise PydanticCustomError("task", "{problems}", {"problems": _JOIN.join(problems)})
        return self

    def task_problems(self) -> list[str]:
        regression = self.task == "text-regression"
        language = self.task == "causal-lm"
        allowed = TASK_METRICS[self.task]
        problems = []
        for field, metric in (("metric", self.metric), ("pruner.metric", self.pruner.metric)):
            if metric is not None and metric not in allowed:
                problems.append(f"{field}: {metric} does not apply to {self.task} (use {', '.join(allowed)})")
        if self.pruner.type == "hyperband" and self.pruning_metric in METRICS and METRICS[self.pruning_metric] != self.direction:
            problems.append(f"pruner.metric: hyperband judges with the study's direction; {self.pruning_metric} runs the other way "
                            "(use median, percentile or successive_halving)")
        if (regression or language) and self.class_weights is not None:
            problems.append("class_weights: applies to classification tasks only")
        if language and self.data.format is None:
            problems.append("data.format: is required with task causal-lm (prompt-completion or messages)")
        if not language and self.data.format is not None:
            problems.append("data.format: is only used with task causal-lm")
        generated = [m for m in (self.metric, self.pruner.metric) if m in GENERATION_METRICS]
        if generated and self.data.max_generation_samples == 0:
            problems.append(f"data.max_generation_samples: must be > 0 for {generated[0]} "
                            "(validation rows decoded at each evaluation point)")
        if self.data.image_column and self.task != "image-classification":
            problems.append("data.image_column: is only used with task image-classification")
        if (regression or language) and "label_smoothing" in self.search_space:
            problems.append("search_space.label_smoothing: applies to classification tasks only")
        if self.runtime.processes_per_trial > 1 and self.checkpoints is not None:
            if self.checkpoints.sigterm_wait >= TORCHRUN_KILL_AFTER:
                problems.append(f"checkpoints.sigterm_wait: must be under {TORCHRUN_KILL_AFTER:g} s with "
                                "runtime.processes_per_trial > 1 (torchrun kills the ranks that long after its SIGTERM)")
        if self.runtime.processes_per_trial > 1 and self.runtime.strategy == "fsdp" and self.adapter.quantize:
            problems.append("adapter.quantize: not with runtime.strategy fsdp (torch's fully_shard does not shard "
                            "bitsandbytes weights); use strategy ddp, or drop quantize")
        return problems

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def budget_unit(self) -> str:
        """What evaluation points, the pruner's steps and ``examples_seen`` count."""
        return "tokens" if self.task == "causal-lm" else "examples"

    @property
    def pruning_metric(self) -> str:
        """What trials report at each evaluation point: ``pruner.metric``, else the study's metric."""
        return self.pruner.metric or self.metric

    @property
    def fixed_params(self) -> dict[str, Any]:
        """Values that do not vary: fixed dimensions plus defaults of absent knobs."""
        fixed = {name: knob.default for name, knob in KNOBS.items() if not knob.required}
        fixed.update({k: v for k, v in self.search_space.items() if not isinstance(v, (Range, Choices))})
        return fixed

    @property
    def searched(self) -> dict[str, Range | Choices]:
        return {k: v for k, v in self.search_space.items() if isinstance(v, (Range, Choices))}

    def sample(self, trial: Any) -> TrainingParams:
        """Draw one configuration through the trial's ``suggest_*`` API.

        Conditional dimensions come last and are suggested only when their
        condition holds (define-by-run), so a trial's recorded parameters are
        exactly those that shaped it.
        """
        values = self.fixed_params
        searched = sorted(self.searched.items(), key=lambda item: item[0] in CONDITIONS)
        for name, dim in searched:
            if name in CONDITIONS:
                parent, enabling = CONDITIONS[name]
                if values.get(parent) != enabling:
                    continue
            if isinstance(dim, Choices):
                values[name] = trial.suggest_categorical(name, dim.choices)
            elif dim.is_int:
                values[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step or 1, log=dim.log)
            else:
                values[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
        return TrainingParams.from_values(values)

    def with_fixed(self, params: dict[str, Any]) -> "StudySpec":
        """The same study with the given parameters pinned (used by export)."""
        space = dict(self.search_space)
        space.update(params)
        return self.model_copy(update={"search_space": space})

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)


# --- loading -----------------------------------------------------------------

_FRIENDLY = {
    "missing": "is required",
    "extra_forbidden": "is not a known key",
    "union_tag_invalid": "has an unexpected form",
    "int_from_float": "must be an integer",
}


_JOIN = "\x1f"  # joins several problems inside one pydantic error (the task checks); split by _format_all


_EXPECTED = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
}


def _got(value: Any) -> str:
    """What the user wrote, as YAML read it, with the likely slip named."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (YAML reads yes, no, on, off, true and false as booleans)"
    if isinstance(value, str):
        try:
            float(value)
            return f"the string {value!r} (remove the quotes)"
        except ValueError:
            return f"the string {value!r}"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def _path(parts: Any, raw: Any, missing: bool = False) -> list[str]:
    """The YAML path of an error's location, without pydantic's union member names ("int", "list[str]").

    A part is a key of the document where the document has it, or the key
    found missing; the other parts name union members.
    """
    loc: list[str] = []
    node = raw
    for i, part in enumerate(parts):
        if isinstance(part, int) and isinstance(node, list) and loc:
            loc[-1] += f"[{part}]"
            node = node[part] if part < len(node) else None
        elif isinstance(node, dict) and part in node:
            loc.append(str(part))
            node = node[part]
        elif missing and i == len(parts) - 1:
            loc.append(str(part))
    return loc


def _format_all(errors: list[dict[str, Any]], raw: Any) -> list[str]:
    """One message per problem; a value matching no member of a union says every form it may take."""
    problems, expected = [], {}
    for error in errors:
        joined = (error.get("ctx") or {}).get("problems") if error["type"] == "task" else None
        if joined:
            problems.extend(joined.split(_JOIN))
            continue
        loc = error["loc"][: error["loc"].index("<fixed>")] if "<fixed>" in error["loc"] else error["loc"]
        path = ".".join(_path(loc, raw, missing=error["type"] == "missing"))
        if error["type"] in _EXPECTED and "<fixed>" not in error["loc"]:
            forms, _ = expected.setdefault(path, ([], error.get("input")))
            forms.append(_EXPECTED[error["type"]])
        else:
            problems.append(_format(error, path))
    for path, (forms, value) in expected.items():
        forms = list(dict.fromkeys(forms))
        if "a number" in forms and "an integer" in forms:
            forms.remove("an integer")
        if len(forms) > 1:
            forms = ["a boolean" if form == "true or false" else form for form in forms]
            forms = [", ".join(forms[:-1]), forms[-1]]
        problems.append(f"{path or '(top level)'}: must be {' or '.join(forms)}, got {_got(value)}")
    return problems


def _format(error: dict[str, Any], path: str) -> str:
    if "<fixed>" in error["loc"]:
        return f"{path}: must be a value, {{low: .., high: ..}} or {{choices: [..]}}"
    ctx = error.get("ctx") or {}
    if "field" in ctx:
        path = f"{path}.{ctx['field']}" if path else ctx["field"]
    path = path or "(top level)"
    message = _FRIENDLY.get(error["type"], error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] in ("too_short", "string_too_short"):
        message = "must not be empty"
    message = message.replace("Input should be greater than or equal to", "must be >=")
    message = message.replace("Input should be greater than", "must be >").replace("Input should be less than", "must be <")
    message = message.replace("Input should be ", "must be ")
    return f"{path}: {message}"


def _knob_problems(space: Any, adapter: Any = None) -> list[str]:
    """Problems with the search space's names and values that only the knob table knows."""
    if not isinstance(space, dict):
        return []
    with_adapter = isinstance(adapter, dict) and adapter.get("type") not in (None, "none")
    required = REQUIRED_WITH_ADAPTER if with_adapter else REQUIRED
    problems = [f"search_space.{name}: is required" for name in required if name not in space]
    if not with_adapter:
        # lora_* dimensions shape an adapter: without one they would be drawn and ignored.
        problems += [f"search_space.{name}: applies only with adapter.type lora (the study fine-tunes the whole model)"
                     for name in space if name in LORA_KNOBS]
    if "lora_alpha" in space and "lora_alpha_ratio" in space:
        problems.append("search_space.lora_alpha_ratio: give lora_alpha or lora_alpha_ratio (alpha = ratio x lora_r), not both")
    for name, raw in space.items():
        knob = KNOBS.get(name)
        if knob is None:
            problems.append(f"search_space.{name}: is not a known dimension (known: {', '.join(KNOBS)})")
            continue
        try:
            dim = _DIMENSION.validate_python(raw)
        except ValidationError:
            continue  # already reported by the structural validation
        if isinstance(dim, Range):
            values = [("low", dim.low), ("high", dim.high)]
            if knob.kind is str:
                problems.append(f"search_space.{name}: takes choices, not a range")
                continue
            if knob.kind is int and not dim.is_int:
                problems.append(f"search_space.{name}: bounds must be integers")
                continue
        elif isinstance(dim, Choices):
            values = [(f"choices[{i}]", v) for i, v in enumerate(dim.choices)]
        else:
            values = [("", dim)]
        for suffix, value in values:
            problem = knob.problem(value)
            if problem:
                path = f"search_space.{name}" + (f".{suffix}" if suffix else "")
                problems.append(f"{path}: {problem}")
    return problems


def _file_problems(raw: dict[str, Any], base: Path) -> list[str]:
    data = raw.get("data")
    if not isinstance(data, dict) or data.get("source") not in FILE_SOURCES:
        return []
    folders = data.get("source") == "imagefolder"
    problems = []
    for split in ("train", "validation", "test"):
        value = data.get(split, "train" if split == "train" else None)
        if isinstance(value, str) and not ((base / value).is_dir() if folders else (base / value).is_file()):
            problems.append(f"data.{split}: {'folder' if folders else 'file'} not found: {value}")
    return problems


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_folder(model: Any, base: Path) -> Path | None:
    """The folder a ``model`` names, relative to the study file like data paths; None for a hub id or demo.

    A path is what starts with ``.``, ``/`` or ``~``, what exists beside the
    study file, or what no hub id could be; ``org/name`` stays a hub id.
    """
    if not isinstance(model, str) or model == "demo" or not model.strip():
        return None
    candidate = base / Path(model).expanduser()
    if model.startswith((".", "/", "~")) or candidate.is_dir() or not _HUB_ID.fullmatch(model):
        return candidate
    return None


def _model_problems(raw: dict[str, Any], base: Path) -> list[str]:
    folder = model_folder(raw.get("model"), base)
    if folder is None:
        return []
    where = folder.resolve()
    if not folder.exists():
        return [f"model: no such directory: {where} (a hub id is org/name; a folder is relative to the study file)"]
    if not folder.is_dir():
        return [f"model: not a directory: {where}"]
    if not (folder / "config.json").is_file():
        return [f"model: not a model directory (no config.json): {where}"]
    return []


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make data file paths and local model directories independent of the working directory."""
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, dict) and data.get("source") in FILE_SOURCES:
        data = dict(data)
        for split in ("train", "validation", "test"):
            if isinstance(data.get(split), str):
                data[split] = str((base / data[split]).resolve())
        raw["data"] = data
    folder = model_folder(raw.get("model"), base)
    if folder is not None:
        raw["model"] = str(folder.resolve())
    checkpoints = raw.get("checkpoints")
    if isinstance(checkpoints, dict) and isinstance(checkpoints.get("store"), str) and "://" not in checkpoints["store"]:
        raw["checkpoints"] = {**checkpoints, "store": str((base / Path(checkpoints["store"]).expanduser()).resolve())}
    return raw


def parse_spec(raw: Any, source: str = "<study>", base: Path | None = None) -> StudySpec:
    """Validate an already-parsed YAML document, reporting every problem at once."""
    if not isinstance(raw, dict):
        raise SpecError(source, ["the study file must be a mapping of keys to values"])
    base = base or Path.cwd()
    problems: list[str] = []
    try:
        StudySpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_format_all(exc.errors(), raw))
    problems.extend(_knob_problems(raw.get("search_space"), raw.get("adapter")))
    problems.extend(_file_problems(raw, base))
    problems.extend(_model_problems(raw, base))
    if problems:
        raise SpecError(source, sorted(dict.fromkeys(problems)))
    spec = StudySpec.model_validate(_resolve_paths(raw, base))
    size = len(spec.model_dump_json())
    if size > MAX_SPEC_BYTES:
        raise SpecError(source, [f"takes {size:,} bytes as stored with the study; at most {MAX_SPEC_BYTES:,} are (a few KB is usual)"])
    return spec


def load_spec(path: str | os.PathLike[str], storage: str | None = None) -> StudySpec:
    """Read a study file. ``storage`` (from --storage or HPO_STORAGE) overrides the file's."""
    path = Path(path)
    spec = parse_spec(read_yaml(path), source=str(path), base=path.parent)
    override = storage or os.environ.get("HPO_STORAGE")
    return spec.model_copy(update={"storage": override}) if override else spec
