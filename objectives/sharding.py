"""One trial's model split across its processes (``runtime.strategy: fsdp``), with torch's FSDP2.

``fully_shard`` goes on every transformer block (the stack freezing finds,
``objectives.freezing.layer_stack``), then on the transformers model around
them (embeddings, head, final norm: the root unit). Each process then holds
1/world of every weight, gradient and optimizer state; a block's weights are
gathered for its forward and backward and freed after. Every forward is a
collective, so every process runs the same ones: the training steps on its
rows of each batch, and at each evaluation point the whole validation split
and the same generation steps (``synced_gpus``).

The root unit is the transformers model, not the PEFT wrapper around it:
PEFT's ``generate`` calls the inner model directly, and a root whose hooks
were skipped would leave its weights sharded in that forward.

``fully_shard`` rewrites the modules it is given (their class, hooks, and
parameters replaced by sharded DTensors). A full fine-tune's model is the
trial's own copy; a LoRA trial's adapter would sit on the base the worker
shares between trials, so under FSDP it goes on ``view(base)``: new module
objects over the same weight tensors, which sharding replaces in the view and
never writes (``tests/test_compat.py`` pins that), leaving the base as loaded.
"""

from __future__ import annotations

import copy
import logging
from functools import cache

import torch
from torch import nn

from objectives import compat, freezing
from objectives.runtime import Runtime

log = logging.getLogger("objectives.sharding")


def place(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The trial's model where it trains: sharded across the trial's processes under FSDP, else on the device."""
    return shard(model, runtime) if runtime.fsdp else compat.to_device(model, runtime.device)


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers model: ``model`` itself, or the one a PEFT model wraps."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@cache
def _mesh(device_type: str, world: int):
    """One mesh per worker: each init_device_mesh call would set up its groups again."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world,))


def shard(model: nn.Module, runtime: Runtime) -> nn.Module:
    """``fully_shard`` each block, then the root; in place (parameters become sharded DTensors, moved
    to the device block by block, so the whole model never needs to fit it)."""
    from torch.distributed.fsdp import fully_shard

    mesh = _mesh(runtime.device.type, runtime.world)
    blocks = freezing.layer_stack(model)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(inner_model(model), mesh=mesh)
    log.info("model sharded across %d processes: %d blocks and the rest (fully_shard)", runtime.world, len(blocks))
    return model


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also holds for sharded gradients: under FSDP each process has a shard
    (a DTensor) of each gradient, and the norm must be the whole gradient's, reduced across the
    processes, so that every process scales its shards by the factor one process would use. DTensor
    reduces the shards' norms itself (the total comes back replicated); ``full_tensor`` makes it a plain
    tensor for the clip. Clipping by the shards' own norms instead fails tests/test_distributed.py."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def view(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules over the same weights: each parameter a new Parameter on the same
    storage (same requires_grad), each buffer a new tensor on the same storage. Costs no weight memory;
    whatever replaces or moves the view's parameters (fully_shard, PEFT) leaves ``model``'s alone."""
    memo: dict[int, object] = {id(p): nn.Parameter(p.data, requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b.detach() for b in model.buffers()})
    return copy.deepcopy(model, memo)
