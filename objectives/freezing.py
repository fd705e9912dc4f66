"""Freezing the bottom of a pretrained transformer, for any architecture.

Rather than a table of attribute paths per model family, the layer stack is
found as the ``nn.ModuleList`` holding most of the base model's parameters
(``encoder.layer`` in BERT-likes, ``transformer.layer`` in DistilBERT,
``h`` in GPT-2, ``layers`` in Llama). The embeddings are whatever parameters
the base model registers before that stack; heads, poolers and final norms
come after it and always train.
"""

from __future__ import annotations

from torch import nn


def layer_stack(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no stack of transformer layers to freeze")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def depth(model: nn.Module) -> int:
    return len(layer_stack(model))


def _before_stack(items, stack_items) -> list:
    """Items the base model registers before the first one that belongs to the stack."""
    stack_ids = {id(item) for item in stack_items}
    before = []
    for item in items:
        if id(item) in stack_ids:
            break
        before.append(item)
    return before


def embedding_parameters(model: nn.Module, layers: nn.ModuleList | None = None) -> list[nn.Parameter]:
    """Base-model parameters registered before the first layer of the stack."""
    layers = layers if layers is not None else layer_stack(model)
    return _before_stack(getattr(model, "base_model", model).parameters(), layers.parameters())


def freeze(model: nn.Module, freeze_depth: int) -> None:
    """Freeze the embeddings and the bottom ``freeze_depth`` layers; 0 trains everything."""
    layers = layer_stack(model)
    if not 0 <= freeze_depth <= len(layers):
        raise ValueError(f"freeze_depth {freeze_depth} is outside 0..{len(layers)} for this model")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if freeze_depth == 0:
        return
    for parameter in embedding_parameters(model, layers):
        parameter.requires_grad_(False)
    for layer in layers[:freeze_depth]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
    _freeze_batch_norm_statistics(model, layers, freeze_depth)


def _freeze_batch_norm_statistics(model: nn.Module, layers: nn.ModuleList, freeze_depth: int) -> None:
    """Batch norms of a frozen stem or stage (ResNet, ConvNeXt-likes) keep their running statistics.

    Their weights stop with requires_grad, but running means and variances
    are buffers that training mode updates anyway; momentum 0 keeps them, so
    a frozen stage stays exactly the pretrained one.
    """
    stem = _before_stack(getattr(model, "base_model", model).modules(), layers.modules())
    for module in [*stem, *(m for layer in layers[:freeze_depth] for m in layer.modules())]:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
