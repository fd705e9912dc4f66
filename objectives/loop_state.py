"""A training run's state as a checkpoint holds it: enough to go on as if it had never stopped.

What resuming needs and no more: the trainable weights (an adapter and head,
or the layers above ``freeze_depth``; never the frozen base) and persistent
buffers, optimizer and scheduler state, every RNG the loop draws from (torch
and CUDA for dropout, Python's for image augmentation, NumPy's), the batch
order's generator as it was at the start of the epoch with the number of
batches done in it, budget units seen, the recent losses, the points so far
and the best point. A checkpoint is taken only at an optimizer-step boundary,
so no half-accumulated gradients need saving.

Payloads are read with ``torch.load(weights_only=True)``: a checkpoint store is
shared, and unpickling arbitrary objects from it would run arbitrary code.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from objectives.results import EvalPoint, TrainResult

FORMAT = 1


class StateMismatch(Exception):
    """A checkpoint that does not fit this run (another study, other parameters, another model)."""


@dataclass
class Position:
    """Where the loop is in its batch order."""

    epoch: int = 0
    batch: int = 0  # batches of this epoch already trained
    epoch_rng: dict | None = None  # the batch-order generator's state at the start of this epoch
    seen: int = 0  # budget units trained


@dataclass
class Restored:
    """What the loop takes back from a checkpoint, besides weights and optimizer (applied in place)."""

    position: Position
    losses: list[float]
    stalled: int
    targets: list[int]


def _trained(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes: trainable parameters and persistent buffers (batch-norm statistics)."""
    persistent = model.state_dict(keep_vars=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {n for n, _ in model.named_buffers() if n in persistent}
    return {n: persistent[n] for n in sorted(names)}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().to("cpu", copy=True) for n, t in _trained(model).items()}


def full_state(model: torch.nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Under FSDP: the whole trained weights and optimizer state, gathered from every process's shards
    to rank 0's CPU (empty elsewhere) by torch.distributed.checkpoint; a collective every rank enters.
    The optimizer state comes keyed by parameter name (that API's format), and is loaded back by it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights, optim = get_state_dict(model, optimizer, options=options)
    trained = set(_trained(model))
    return {n: t for n, t in weights.items() if n in trained}, optim


def final_weights(model: torch.nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The trainable weights on the CPU; under FSDP gathered to rank 0 (a collective)."""
    if not sharded:
        return trainable_state(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    trained = set(_trained(model))
    return {n: t for n, t in get_model_state_dict(model, options=options).items() if n in trained}


def capture(model, optimizer, scheduler, position: Position, losses, result: TrainResult, stalled: int,
            targets: list[int], sharded: bool = False) -> dict[str, Any]:
    """The run's state; ``sharded`` (FSDP): gathered to rank 0, so every rank must call it at the same step."""
    weights, optim = full_state(model, optimizer) if sharded else (trainable_state(model), optimizer.state_dict())
    return {
        "format": FORMAT,
        "sharded": sharded,
        "model": weights,
        "optimizer": optim,
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(),
        "position": asdict(position),
        "losses": [float(x) for x in losses],
        "result": _result_dict(result),
        "stalled": stalled,
        "targets": list(targets),
    }


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def from_bytes(payload: bytes) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable payload is a mismatch, never a crash
        raise StateMismatch(f"not a checkpoint torch can read ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StateMismatch(f"checkpoint format {state.get('format') if isinstance(state, dict) else '?'!r}, expected {FORMAT}")
    return state


def check_identity(state: dict[str, Any], identity: dict[str, Any]) -> None:
    theirs = state.get("identity")
    if theirs != identity:
        differs = sorted(k for k in set(identity) | set(theirs or {}) if (theirs or {}).get(k) != identity.get(k))
        raise StateMismatch(f"checkpoint written for another {'/'.join(differs) or 'run'}")


def check_fits(state: dict[str, Any], model: torch.nn.Module) -> None:
    """The saved weights are exactly this model's trainable ones, shape for shape; checked before anything is loaded."""
    expected = {n: tuple(t.shape) for n, t in _trained(model).items()}
    saved = {n: tuple(t.shape) for n, t in state["model"].items()}
    if saved != expected:
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        reshaped = sorted(n for n in set(saved) & set(expected) if saved[n] != expected[n])
        raise StateMismatch(
            f"checkpoint's weights do not fit the model ({len(missing)} missing, {len(extra)} unexpected, {len(reshaped)} reshaped)")


def check_layout(state: dict[str, Any], sharded: bool) -> None:
    """A checkpoint written under FSDP (``sharded``) is resumed under FSDP only, and one written without, without."""
    if bool(state.get("sharded")) != sharded:
        raise StateMismatch("checkpoint written under another runtime.strategy (fsdp or not)")


def points(state: dict[str, Any]) -> list[EvalPoint]:
    return [EvalPoint(**p) for p in state["result"]["points"]]


def restore(state: dict[str, Any], model, optimizer, scheduler, result: TrainResult, rank: int = 0,
            sharded: bool = False) -> Restored:
    """Load a checked state into a freshly built run; the RNGs last, so nothing draws from them after.

    A trial on several processes saved each rank's RNGs (``rng_ranks``): rank ``rank`` takes its own.
    ``sharded`` (FSDP, a collective): every rank holds the whole state and keeps its shards of it."""
    check_fits(state, model)
    check_layout(state, sharded)
    try:
        if sharded:
            _load_full(model, optimizer, state)
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise StateMismatch(f"optimizer state does not fit: {exc}") from None
    if not sharded:
        load_weights(model, state["model"])
    saved = state["result"]
    result.points = points(state)
    result.best = result.points[saved["best"]] if saved["best"] is not None else None
    result.examples_seen, result.stopped_early = saved["examples_seen"], saved["stopped_early"]
    result.train_seconds, result.eval_seconds = saved["train_seconds"], saved["eval_seconds"]
    per_rank = state.get("rng_ranks") or []
    _set_rng_states(per_rank[rank] if rank < len(per_rank) else state["rng"])
    return Restored(Position(**state["position"]), state["losses"], state["stalled"], state["targets"])


def _load_full(model: torch.nn.Module, optimizer, state: dict[str, Any]) -> None:
    """FSDP: the whole weights and optimizer state into this rank's shards (strict off: frozen weights are not saved)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True, strict=False))


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into the model in place (names and shapes checked by ``check_fits``)."""
    with torch.no_grad():
        current = model.state_dict(keep_vars=True)
        for name, tensor in weights.items():
            current[name].copy_(tensor)


def _result_dict(result: TrainResult) -> dict[str, Any]:
    return {
        "points": [asdict(p) for p in result.points],
        "best": result.points.index(result.best) if result.best is not None else None,
        "examples_seen": result.examples_seen,
        "stopped_early": result.stopped_early,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
    }


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.random.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():  # per device; a machine with fewer GPUs takes those it has
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
