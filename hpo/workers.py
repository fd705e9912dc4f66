"""Several worker processes on one host, each pinned to its GPU.

Each worker is a separate ``hpo launch`` process (a CUDA context per process
is the only isolation that survives an out-of-memory error or a crashed
driver), attached to the same study through the shared storage. The parent
only starts, watches and signals them; the study's lock and the budget claim
make the workers agree without talking to each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from hpo.errors import UserError


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    name: str
    gpu: str | None  # the CUDA_VISIBLE_DEVICES value, or None to leave it as it is
    env: dict[str, str] = field(default_factory=dict)


def visible_gpus() -> list[str]:
    """GPUs this host may use: CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [gpu.strip() for gpu in declared.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(value: str, available: list[str]) -> list[str]:
    """``all`` or a comma-separated list of GPU indices or UUIDs."""
    if value.strip().lower() == "all":
        if not available:
            raise UserError("--gpus all: no GPU is visible on this host; use --workers N for CPU workers")
        return list(available)
    gpus = [part.strip() for part in value.split(",")]
    if not all(gpus):
        raise UserError(f"--gpus {value!r}: expected 'all' or a comma-separated list such as 0,2")
    duplicates = sorted({g for g in gpus if gpus.count(g) > 1})
    if duplicates:
        raise UserError(f"--gpus {value!r}: GPU {', '.join(duplicates)} listed twice; use --workers for several per GPU")
    unknown = [g for g in gpus if g.isdigit() and available and g not in available]
    if unknown:
        raise UserError(f"--gpus {value!r}: GPU {', '.join(unknown)} not visible (visible: {', '.join(available)})")
    return gpus


def plan(gpus: list[str] | None, workers: int | None, cpu_count: int | None = None) -> list[WorkerSlot]:
    """One worker per GPU (times ``workers`` per GPU), or ``workers`` CPU workers."""
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    per_gpu = workers or 1
    if gpus:
        pairs = [(gpu, n) for gpu in gpus for n in range(per_gpu)]
        return [
            WorkerSlot(i, f"gpu{gpu}" + (f"-{n}" if per_gpu > 1 else ""), gpu, {"CUDA_VISIBLE_DEVICES": gpu})
            for i, (gpu, n) in enumerate(pairs)
        ]
    count = workers or 1
    # CPU workers share the cores instead of each starting one thread per core.
    threads = str(max(1, (cpu_count or os.cpu_count() or 1) // count))
    return [WorkerSlot(i, f"worker-{i}", None, {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}) for i in range(count)]


def run(study_file: str, storage: str, slots: list[WorkerSlot], extra_args: list[str]) -> int:
    """Start the workers, forward Ctrl-C and SIGTERM to them, and return the worst exit code.

    The storage URL travels in the environment, never on a command line that
    ``ps`` would show.
    """
    children: list[subprocess.Popen] = []
    for slot in slots:
        env = {**os.environ, **slot.env, "HPO_STORAGE": storage, "HPO_WORKER_NAME": slot.name}
        command = [sys.executable, "-m", "hpo", "launch", study_file, "--worker-index", str(slot.index), *extra_args]
        # A session of their own: Ctrl-C reaches them once, through forward(), not twice.
        children.append(subprocess.Popen(command, env=env, start_new_session=True))

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for special in (143, 130):
        if special in codes:
            return special
    return next((code for code in codes if code != 0), 0)
