"""How a trial gets its model from the worker's one pretrained copy: a full copy, or an adapter.

``FullFineTuning`` deep-copies the pretrained model per trial (milliseconds,
against seconds to read it from disk) and freezes its bottom layers.
``LoraAdapters`` never copies the base: it attaches a fresh LoRA adapter
(PEFT) to the one base the worker loaded, trains the adapter and the head,
and removes it after the trial, leaving the base bit for bit as loaded. So a
worker holds one base model in memory, and a trial's start-up cost does not
grow with the model.

Adapters go on linear layers chosen by role inside each transformer block
(``attention``, ``mlp`` or ``all-linear``), found by module path rather
than by a table of names per family, so one study file works for BERT-likes,
ViT, GPT-2 and Llama-style decoders. ``freeze_depth`` k keeps adapters out of
the bottom k blocks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo.params import TrainingParams
from objectives import compat, freezing, sharding
from objectives.errors import ObjectiveError
from objectives.model import DROPOUT_FIELDS, Pretrained, set_dropout

ATTENTION_WORDS = ("attn", "attention")


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or GPT-2's Conv1D (a linear layer with its weight transposed)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) features."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]  # Conv1D stores (in, out)


def role_of(path: str) -> str:
    """``attention`` for a linear layer under an attention module of its block, else ``mlp``."""
    parts = path.lower().split(".")
    return "attention" if any(word in part for part in parts[:-1] for word in ATTENTION_WORDS) else "mlp"


@dataclass(frozen=True)
class Target:
    name: str  # full module name in the model
    in_features: int
    out_features: int


def targets(model: nn.Module, role: str, skip_layers: int = 0) -> list[Target]:
    """Linear layers of the given role in the blocks above ``skip_layers``; an error when there are none."""
    stack = freezing.layer_stack(model)
    if not 0 <= skip_layers < len(stack):
        raise ObjectiveError(
            f"search_space.freeze_depth: {skip_layers} leaves no layer for LoRA adapters "
            f"({type(model).__name__} has {len(stack)}; with an adapter use 0..{len(stack) - 1})"
        )
    prefix = next(name for name, module in model.named_modules() if module is stack)
    found = []
    for index in range(skip_layers, len(stack)):
        for path, module in stack[index].named_modules():
            if path and _is_linear(module) and (role == "all-linear" or role_of(path) == role):
                found.append(Target(f"{prefix}.{index}.{path}", *_shape(module)))
    if not found:
        kind = "linear layers" if role == "all-linear" else f"{role} linear layers"
        raise ObjectiveError(
            f"search_space.lora_target: {type(model).__name__} has no {kind} in its transformer blocks to put LoRA "
            f"adapters on (a convolutional model?); use adapter.type none, or another lora_target"
        )
    return found


def suffixes(found: list[Target]) -> list[str]:
    """Target names within a block (``attention.self.query``...), as recorded on a trial."""
    return sorted({_within_block(t.name) for t in found})


def _within_block(name: str) -> str:
    parts = name.split(".")
    index = next(i for i, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[index + 1 :])


def lora_parameters(found: list[Target], rank: int) -> int:
    return sum(rank * (t.in_features + t.out_features) for t in found)


def head_parameters(model: nn.Module, heads: list[str]) -> int:
    return sum(p.numel() for name in heads for p in model.get_submodule(name).parameters())


@contextmanager
def _seeded(seed: int):
    """Draw from ``seed`` without disturbing the caller's generator."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _dropout_settings(model: nn.Module) -> list[tuple[Any, str, float]]:
    """Every rate ``set_dropout`` may change, as (owner, attribute, value), to put back after a trial."""
    settings = [(m, "p", m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    settings += [(m, name, getattr(m, name)) for m in model.modules() for name in ("dropout_prob", "attention_dropout")
                 if isinstance(getattr(m, name, None), float)]
    settings += [(model.config, name, getattr(model.config, name)) for name in DROPOUT_FIELDS
                 if isinstance(getattr(model.config, name, None), float)]
    return settings


class FullFineTuning:
    """Every weight above ``freeze_depth`` trains, on a copy of the pretrained model."""

    def __init__(self, pretrained: Pretrained):
        self.pretrained = pretrained

    def attach(self, params: TrainingParams, seed: int) -> nn.Module:
        model = self.pretrained.fresh_copy(seed)
        freezing.freeze(model, params.freeze_depth)
        set_dropout(model, params.dropout)
        return model

    def release(self, model: nn.Module) -> None:
        """Nothing to undo: the copy is the trial's own."""

    def facts(self, model: nn.Module, params: TrainingParams) -> dict[str, Any] | None:
        return None

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)


class LoraAdapters:
    """A LoRA adapter per trial on the worker's one frozen base, removed after the trial.

    ``on_views`` (runtime.strategy fsdp): each adapter goes on a view of the base instead (new
    modules over the same weights, ``objectives.sharding.view``), since sharding rewrites the
    modules it shards; the view goes with its trial and the base is never changed.
    """

    def __init__(self, pretrained: Pretrained, on_views: bool = False):
        self.pretrained = pretrained
        self.on_views = on_views
        self.base = pretrained.model
        self.heads = pretrained.trained_modules
        self.grad = {name: p.requires_grad for name, p in self.base.named_parameters()}
        self.dropout = _dropout_settings(self.base)
        self.current = None

    def attach(self, params: TrainingParams, seed: int):
        from peft import LoraConfig, get_peft_model

        if self.current is not None:
            self.release(self.current)
        base = sharding.view(self.base) if self.on_views else self.base
        found = targets(base, params.lora_target, params.freeze_depth)
        config = LoraConfig(
            r=params.lora_r, lora_alpha=params.lora_scale_alpha, lora_dropout=params.lora_dropout,
            target_modules=[t.name for t in found], modules_to_save=self.heads or None, bias="none",
        )
        self.originals = {name: base.get_submodule(name) for name in self.heads}
        with _seeded(seed):  # LoRA's A matrices and the new head come from the trial's seed
            model = get_peft_model(base, config)
            for name in self.pretrained.head_modules:
                for module in compat.trainable_copy(model, name).modules():
                    compat.init_module(base, module)
        set_dropout(base, params.dropout)
        self.current, self.found = model, found
        return model

    def release(self, model) -> None:
        """Remove the adapter; put back the base's head, dropout rates and trainable flags."""
        if model is not self.current:
            return
        if self.on_views:
            self.current = None  # the view goes with the trial; the base was never touched
            return
        compat.unload(model, self.originals)
        for owner, name, value in self.dropout:
            setattr(owner, name, value)
        for name, parameter in self.base.named_parameters():
            parameter.requires_grad_(self.grad[name])
        self.current = None

    def facts(self, model, params: TrainingParams) -> dict[str, Any]:
        trainable = [p for p in model.parameters() if p.requires_grad]
        return {
            "type": "lora",
            "r": params.lora_r,
            "alpha": params.lora_scale_alpha,
            "dropout": params.lora_dropout,
            "target": params.lora_target,
            "target_modules": suffixes(self.found),
            "adapted_layers": len(self.found),
            "trained_head_modules": self.heads,
            "size_mb": round(sum(p.numel() * p.element_size() for p in trainable) / 2**20, 3),
        }

    def save(self, model, directory: Path) -> None:
        """The adapter (``adapter_config.json`` + weights, the head included), as PEFT loads it;
        ``hpo export --merge`` folds it into the base (``objectives.merging``)."""
        model.save_pretrained(directory)


def build(kind: str, pretrained: Pretrained, sharded: bool = False):
    """``sharded``: the trials' models will be sharded (FSDP), which an adapter must not do to the shared base."""
    return LoraAdapters(pretrained, on_views=sharded) if kind == "lora" else FullFineTuning(pretrained)
