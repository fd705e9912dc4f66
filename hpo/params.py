"""The vocabulary of fine-tuning hyperparameters that a study may search.

One table says, for every knob, its type, its allowed range and its default,
so that the spec can reject an impossible search space before any trial runs
and the objective receives a typed ``TrainingParams`` instead of a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    kind: type  # float, int or str
    required: bool = False
    default: Any = None
    gt: float | None = None  # exclusive lower bound
    ge: float | None = None  # inclusive lower bound
    lt: float | None = None  # exclusive upper bound
    le: float | None = None  # inclusive upper bound
    choices: tuple[str, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be used for this knob, or None if it can."""
        if self.kind is str:
            if not isinstance(value, str):
                return f"must be a string, got {value!r}"
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}, got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if self.kind is int and not float(value).is_integer():
            return f"must be an integer, got {value!r}"
        for bound, ok, word in (
            (self.gt, lambda v, b: v > b, ">"),
            (self.ge, lambda v, b: v >= b, ">="),
            (self.lt, lambda v, b: v < b, "<"),
            (self.le, lambda v, b: v <= b, "<="),
        ):
            if bound is not None and not ok(value, bound):
                return f"must be {word} {bound:g}, got {value!r}"
        return None


SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw", "sgd", "adafactor")
# Which linear layers of each transformer block get a LoRA adapter, by role, so that
# one study file means the same on BERT, ViT or a Llama decoder (objectives.adapters).
LORA_TARGETS = ("attention", "mlp", "all-linear")

# Defaults follow common fine-tuning practice (BERT paper, HF Trainer) so that a
# study that only searches the four required knobs still trains sensibly.
KNOBS: dict[str, Knob] = {
    "learning_rate": Knob(float, required=True, gt=0, lt=1),
    "batch_size": Knob(int, required=True, ge=1),
    "epochs": Knob(int, required=True, ge=1),
    # Number of bottom transformer layers kept frozen (embeddings are frozen when > 0).
    "freeze_depth": Knob(int, required=True, ge=0),
    "weight_decay": Knob(float, default=0.0, ge=0, lt=1),
    # Share of optimizer steps spent warming up linearly from 0 to the learning rate.
    "warmup_ratio": Knob(float, default=0.06, ge=0, lt=1),
    "lr_scheduler": Knob(str, default="linear", choices=SCHEDULERS),
    "max_grad_norm": Knob(float, default=1.0, gt=0),
    "optimizer": Knob(str, default="adamw", choices=OPTIMIZERS),
    # SGD's momentum; drawn only in trials whose optimizer is sgd (see CONDITIONS).
    "momentum": Knob(float, default=0.9, ge=0, lt=1),
    # The model's hidden and attention dropout; absent: the checkpoint's own.
    "dropout": Knob(float, default=None, ge=0, lt=1),
    "label_smoothing": Knob(float, default=0.0, ge=0, lt=1),
    # Micro-batches per optimizer step: the effective batch is batch_size x this.
    "gradient_accumulation_steps": Knob(int, default=1, ge=1),
    # Early stopping: evaluation points without a new best before a trial ends
    # (it keeps its best score); absent: every trial runs all its epochs.
    "patience": Knob(int, default=None, ge=1),
    # LoRA (adapter: lora only): rank, scale, dropout and where the adapters go.
    # alpha is lora_alpha, or lora_alpha_ratio x r when lora_alpha is absent; the
    # ratio keeps the update's scale (alpha / r) fixed while the rank is searched.
    "lora_r": Knob(int, default=8, ge=1, le=4096),
    "lora_alpha": Knob(float, default=None, gt=0),
    "lora_alpha_ratio": Knob(float, default=2.0, gt=0),
    "lora_dropout": Knob(float, default=0.05, ge=0, lt=1),
    "lora_target": Knob(str, default="all-linear", choices=LORA_TARGETS),
}

# Dimensions that only mean something with an adapter: the spec refuses them without one.
LORA_KNOBS = tuple(name for name in KNOBS if name.startswith("lora_"))

# Conditional dimensions: name -> (the dimension it depends on, the value that enables it).
# A trial suggests the dimension only when the other one took that value, so the
# search never spends effort on a momentum that AdamW would ignore.
CONDITIONS: dict[str, tuple[str, str]] = {"momentum": ("optimizer", "sgd")}

REQUIRED = tuple(name for name, knob in KNOBS.items() if knob.required)
# With adapter: lora the base is frozen anyway; freeze_depth then only keeps adapters
# out of the bottom layers, and may be left out (0: adapters in every layer).
REQUIRED_WITH_ADAPTER = tuple(name for name in REQUIRED if name != "freeze_depth")


@dataclass(frozen=True)
class TrainingParams:
    """One point of the search space: what a single fine-tune is run with."""

    learning_rate: float
    batch_size: int
    epochs: int
    freeze_depth: int = 0
    weight_decay: float = KNOBS["weight_decay"].default
    warmup_ratio: float = KNOBS["warmup_ratio"].default
    lr_scheduler: str = KNOBS["lr_scheduler"].default
    max_grad_norm: float = KNOBS["max_grad_norm"].default
    optimizer: str = KNOBS["optimizer"].default
    momentum: float = KNOBS["momentum"].default
    dropout: float | None = KNOBS["dropout"].default
    label_smoothing: float = KNOBS["label_smoothing"].default
    gradient_accumulation_steps: int = KNOBS["gradient_accumulation_steps"].default
    patience: int | None = KNOBS["patience"].default
    lora_r: int = KNOBS["lora_r"].default
    lora_alpha: float | None = KNOBS["lora_alpha"].default
    lora_alpha_ratio: float = KNOBS["lora_alpha_ratio"].default
    lora_dropout: float = KNOBS["lora_dropout"].default
    lora_target: str = KNOBS["lora_target"].default

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "TrainingParams":
        typed = {name: None if value is None else KNOBS[name].kind(value) for name, value in values.items()}
        return cls(**typed)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def lora_scale_alpha(self) -> float:
        """LoRA's alpha as the adapter is built: explicit, else ratio x rank."""
        return self.lora_alpha if self.lora_alpha is not None else self.lora_alpha_ratio * self.lora_r

