"""What hpo leaves on a study and its trials, typed and versioned, checked when read back.

Records outlive the hpo that wrote them: a study is resumed, retrained and
exported by later versions, on other machines. Each record class carries a
``schema_version``; a reader refuses one it does not know, or one whose
content does not fit, with one line naming the record and the remedy, instead
of a ``KeyError`` three calls later. Records written before versions existed
carry none: they are read as version 1 when they fit it (version 1 is the
shape they were written in).

Optuna keeps user attributes as JSON. Per-trial and per-study facts stay one
attribute per field (the dashboard lists each); the retrain record and lost
results are one attribute each, replaced whole.

The search side imports this module: pydantic only, never torch or transformers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping

import optuna
from optuna.trial import FrozenTrial
from pydantic import BaseModel, ConfigDict, ValidationError

from hpo.errors import UserError

ParamValue = bool | int | float | str | None  # what an Optuna parameter can hold


class Strict(BaseModel):
    """A part of a record: unknown keys are an error, instances never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Record(Strict):
    """A versioned record. Subclasses pin ``schema_version`` to a ``Literal`` of their current version."""

    schema_version: int
    kind: ClassVar[str] = "record"  # what the error line calls it
    remedy: ClassVar[str] = "rewrite it with this hpo version"

    @classmethod
    def current_version(cls) -> int:
        return cls.model_fields["schema_version"].default

    @classmethod
    def upgrade_legacy(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """A record stored without a version, in the shape version 1 has."""
        return {**raw, "schema_version": 1}

    @classmethod
    def read(cls, raw: Any, what: str):
        """``raw`` validated as this record; a ``UserError`` of one line when it cannot be."""
        current = cls.current_version()
        if not isinstance(raw, Mapping):
            raise UserError(f"{what} is not a {cls.kind} (a {type(raw).__name__}): {cls.remedy}")
        raw = dict(raw)
        if "schema_version" not in raw:
            raw = cls.upgrade_legacy(raw)
        version = raw["schema_version"]
        if version != current or isinstance(version, bool):
            raise UserError(
                f"{what} was written by another hpo version (schema_version {version!r}; this hpo reads {current}): {cls.remedy}"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise UserError(f"{what} is not a valid {cls.kind} ({_problems(exc)}): {cls.remedy}") from None

    def dump(self) -> dict[str, Any]:
        """As stored: plain JSON types."""
        return self.model_dump(mode="json")


def _problems(exc: ValidationError, most: int = 3) -> str:
    errors = exc.errors()
    shown = [f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in errors[:most]]
    more = f"; and {len(errors) - most} more" if len(errors) > most else ""
    return " ".join(("; ".join(shown) + more).split())  # one line whatever the messages hold


def _attributes(record: Record) -> dict[str, Any]:
    """A record as one attribute per field, leaving out optional fields that are unset."""
    values = record.dump()
    values.pop("schema_version")
    fields = type(record).model_fields
    return {k: v for k, v in values.items() if not (v is None and not fields[k].is_required())}


def _from_attributes(cls, attrs: Mapping[str, Any], what: str):
    """A record kept as one attribute per field (and its version in ``cls.VERSION_ATTR``), read back."""
    raw = {name: attrs[name] for name in cls.model_fields if name != "schema_version" and name in attrs}
    if cls.VERSION_ATTR in attrs:
        raw["schema_version"] = attrs[cls.VERSION_ATTR]
    return cls.read(raw, what)


# --- on each trial: what the objective measured ----------------------------------


class AdapterFacts(Strict):
    """A LoRA trial's adapter as it was built for this model."""

    type: Literal["lora"]
    r: int
    alpha: float
    dropout: float
    target: str  # the role asked for: attention, mlp or all-linear
    target_modules: list[str]  # the linear layers within a block that got an adapter (resolved names)
    adapted_layers: int  # linear layers with an adapter, over all blocks
    trained_head_modules: list[str]  # trained in full beside the adapter
    size_mb: float  # trainable weights (adapter and head), as saved


class TrialRecord(Record):
    """What an objective leaves on a trial, one user attribute per field (the dashboard shows each).

    ``record_version`` is written last: a trial that has it holds the whole record.
    """

    VERSION_ATTR: ClassVar[str] = "record_version"
    kind: ClassVar[str] = "trial record"
    remedy: ClassVar[str] = "read the study with the hpo version that ran the trial, or launch a new study"

    schema_version: Literal[1] = 1
    wall_seconds: float
    train_seconds: float
    eval_seconds: float
    examples_seen: int
    examples_per_second: float
    train_loss: float | None  # None: no optimizer step was taken (or the loss was not a number)
    trainable_parameters: int
    trainable_fraction: float
    device: str
    precision: str
    peak_memory_mb: float
    peak_reserved_mb: float | None = None  # CUDA: what the process held at its peak, the allocator's cache included
    device_memory_mb: float | None = None  # CUDA: the whole device's memory
    stopped_early: bool
    best_examples: int | None = None  # the best evaluation point, when one was reached
    best_epoch: float | None = None
    best_metrics: dict[str, float] | None = None
    curve: dict[str, list[float]] | None = None  # "examples" and each metric, at every evaluation point
    adapter: AdapterFacts | None = None
    # What examples_seen, best_examples and the pruner's steps count: examples, or (causal-lm)
    # completion tokens, so that trials whose rows differ in length are compared by data seen.
    budget_unit: Literal["examples", "tokens"] = "examples"
    processes: int = 1  # runtime.processes_per_trial: the processes the trial ran on
    devices: list[str] | None = None  # with several: "host/device" of each, by rank
    # With several: runtime.strategy, how they shared the model (ddp: a replica each; fsdp: sharded).
    strategy: Literal["ddp", "fsdp"] | None = None

    def write(self, trial: optuna.Trial) -> None:
        for key, value in _attributes(self).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(self.VERSION_ATTR, self.schema_version)

    @classmethod
    def of(cls, trial: FrozenTrial) -> "TrialRecord | None":
        """The trial's record, or None when it has none (it failed before training, or is still running)."""
        attrs = trial.user_attrs
        if cls.VERSION_ATTR not in attrs and "wall_seconds" not in attrs:
            return None
        return _from_attributes(cls, attrs, f"trial #{trial.number}'s record")


# --- on the study: what `hpo launch` found out about data and model -------------------


class StudyFacts(Record):
    """What ``hpo launch`` keeps on the study about its data and model, one study attribute per field."""

    VERSION_ATTR: ClassVar[str] = "facts_version"
    kind: ClassVar[str] = "set of study facts"
    remedy: ClassVar[str] = "run `hpo launch` on the study with this hpo version to rewrite them"

    schema_version: Literal[1] = 1
    label_names: list[str]  # id -> name; empty for regression
    label2id: dict[str, int]
    train_examples: int
    validation_examples: int
    rows_dropped: dict[str, int]  # per split, for any reason
    data_report: dict[str, Any]
    class_weights: list[float] | None = None  # None: unweighted (the runner never stores a None attribute)
    model_depth: int
    model_parameters: int
    device: str
    precision: str
    adapter: str = "none"  # the study's adapter.type
    budget_unit: Literal["examples", "tokens"] = "examples"

    def attributes(self) -> dict[str, Any]:
        """The study attributes to set (``hpo launch`` hands them to the runner with the spec's)."""
        return {**_attributes(self), self.VERSION_ATTR: self.schema_version}

    def write(self, study: optuna.Study) -> None:
        current = study.user_attrs
        for key, value in self.attributes().items():
            if key not in current or current[key] != value:
                study.set_user_attr(key, value)

    @classmethod
    def of(cls, study: optuna.Study) -> "StudyFacts | None":
        """The study's facts, or None when its objective stored none."""
        attrs = study.user_attrs
        if cls.VERSION_ATTR not in attrs and "label_names" not in attrs:
            return None
        return _from_attributes(cls, attrs, f"the facts record of study {study.study_name!r}")


# --- on the study: what `hpo retrain` did ---------------------------------------


class RetrainPlan(Strict):
    """What a retrain was asked to do; the same plan again means its result still stands."""

    top_k: int
    seeds: list[int]
    train_on: str
    study_seed: int
    candidates: list[int]  # trial numbers, best first
    home: str


class SeedRun(Strict):
    """One validation score of a candidate configuration."""

    seed: int
    value: float
    best_epoch: float | None
    from_search: bool  # the trial itself, run with the study seed


class CandidateResult(Strict):
    trial: int
    params: dict[str, ParamValue]
    search_value: float
    runs: list[SeedRun]
    mean: float
    std: float


class Winner(Strict):
    trial: int
    params: dict[str, ParamValue]
    training_params: dict[str, ParamValue]
    search_value: float
    validation_mean: float
    validation_std: float
    best_epoch: float  # where retraining on train+validation stops


class TrainedOn(Strict):
    split: str
    examples: int


class RetrainedSeed(Strict):
    seed: int
    test: dict[str, float]
    validation: dict[str, float] | None  # on train: the kept point's validation metrics
    examples_seen: int
    epochs: float
    seconds: float


class HeldOutScores(Strict):
    """Every metric on the test split, mean and sample standard deviation over seeds."""

    examples: int
    mean: dict[str, float]
    std: dict[str, float]


class KeptModel(Strict):
    seed: int
    path: str
    host: str


class RetrainRecord(Record):
    """The outcome of ``hpo retrain``: study attribute ``retrain``, replaced whole."""

    kind: ClassVar[str] = "retrain record"
    remedy: ClassVar[str] = "run `hpo retrain --force`"

    schema_version: Literal[1] = 1
    run_id: str
    plan: RetrainPlan
    metric: str
    winner: Winner
    selection: list[CandidateResult]
    trained_on: TrainedOn
    seeds: list[RetrainedSeed]
    test: HeldOutScores
    model: KeptModel
    finished_at: str  # ISO 8601, UTC
    wall_seconds: float

    @classmethod
    def of(cls, study: optuna.Study, attr: str = "retrain") -> "RetrainRecord | None":
        raw = study.user_attrs.get(attr)
        return None if raw is None else cls.read(raw, f"study attribute {attr!r}")


# --- on the study: results the storage would not take ---------------------------------


class LostResult(Strict):
    value: float
    params: dict[str, ParamValue]


class LostResults(Record):
    """Values computed for trials another worker had already finished (study attribute ``lost_results``)."""

    ATTR: ClassVar[str] = "lost_results"
    kind: ClassVar[str] = "list of lost results"
    remedy: ClassVar[str] = "read it with the hpo version that wrote it"

    schema_version: Literal[1] = 1
    trials: dict[int, LostResult] = {}

    @classmethod
    def upgrade_legacy(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Before versions: ``{"<trial number>": {"value": ..., "params": ...}}``."""
        return {"schema_version": 1, "trials": raw}

    @classmethod
    def of(cls, study: optuna.Study) -> "LostResults":
        raw = study.user_attrs.get(cls.ATTR)
        return cls() if raw is None else cls.read(raw, f"study attribute {cls.ATTR!r}")


def keep_lost_result(study: optuna.Study, number: int, entry: LostResult) -> LostResults:
    """Add one trial's lost value to the study's ``lost_results`` (the runner calls it under the study lock)."""
    lost = LostResults.of(study)
    kept = LostResults(trials={**lost.trials, number: entry})
    study.set_user_attr(LostResults.ATTR, kept.dump())
    return kept


# --- on each trial: where its training state was saved ----------------------------------


class CheckpointRecord(Record):
    """One saved training state of a trial (trial attribute ``checkpoint``; ``resume_from`` on its retry).

    The record is written only after the bytes are in the store, and names their
    SHA-256: a checkpoint whose write was cut short, or whose file was replaced,
    is never taken for this one.
    """

    kind: ClassVar[str] = "checkpoint record"
    remedy: ClassVar[str] = "the trial starts from scratch"

    schema_version: Literal[1] = 1
    artifact_id: str  # the key in the study's checkpoint store
    sha256: str
    bytes: int
    trial: int  # the number of the trial that wrote it
    examples: int  # budget units trained when it was written
    points: int  # evaluation points it holds
    write_seconds: float
    final: bool = False  # the end of training (keep: best), not a state to resume

    @classmethod
    def of(cls, attrs: Mapping[str, Any], attr: str) -> "CheckpointRecord | None":
        raw = attrs.get(attr)
        return None if raw is None else cls.read(raw, f"trial attribute {attr!r}")
