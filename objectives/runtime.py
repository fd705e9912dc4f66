"""Where and in what precision a worker trains: picked once per worker, recorded on every trial."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full fp32
    rank: int = 0  # this process's place in a trial run on several (runtime.processes_per_trial)
    world: int = 1
    strategy: str = "ddp"  # runtime.strategy: how the processes of one trial share the model

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def fsdp(self) -> bool:
        """Whether the model itself is split across the trial's processes (every forward is a collective)."""
        return self.sharded and self.strategy == "fsdp"

    @property
    def precision(self) -> str:
        """As the study file spells it, for the trial's record."""
        return "fp32" if self.autocast_dtype is None else "bf16"


def pick_runtime(device: str = "auto", precision: str = "auto", strategy: str = "ddp") -> Runtime:
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    rank, world = _group()
    dev = torch.device(f"cuda:{torch.cuda.current_device()}" if device == "cuda" and world > 1 else device)
    if precision == "bf16" and not bf16_runs(dev):
        raise ValueError(f"runtime.precision bf16 is not supported on {dev}")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_is_faster(dev))
    return Runtime(device=dev, autocast_dtype=torch.bfloat16 if use_bf16 else None, rank=rank, world=world,
                   strategy=strategy)


def _group() -> tuple[int, int]:
    """(rank, world size) of the process group this worker joined, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def bf16_runs(dev: torch.device) -> bool:
    """Whether bf16 autocast works at all here (on a CPU it always does, if slowly without native support)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu"


def bf16_is_faster(dev: torch.device) -> bool:
    """Whether ``precision: auto`` should pick bf16: only where the hardware multiplies in bf16.

    On a CPU with AVX512-BF16 or AMX, bf16 autocast trains MiniLM about 1.5x
    faster than fp32 (bench/precision.py); on one without, oneDNN emulates bf16
    and is slower than fp32, so auto keeps fp32 there. The CPU probes are
    private torch functions, hence the guarded lookups: a torch without them
    gets fp32.
    """
    if dev.type != "cpu":
        return bf16_runs(dev)  # a GPU that runs bf16 runs it natively
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
