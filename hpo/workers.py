"""Several worker processes on one host, each pinned to its GPU (or trial groups: a torchrun each,
pinned to its run of GPUs, when one trial spans several processes).

Each worker is a separate ``hpo launch`` process (a CUDA context per process
is the only isolation that survives an out-of-memory error or a crashed
driver), attached to the same study through the shared storage. The parent
only starts, watches, restarts (after a crash) and signals them; the study's
lock and the budget claim make the workers agree without talking to each other.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from hpo.errors import UserError
from hpo.watchdog import EXIT_HUNG

log = logging.getLogger("hpo.workers")


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
        return [pinned(i, f"gpu{gpu}" + (f"-{n}" if per_gpu > 1 else ""), [gpu]) for i, (gpu, n) in enumerate(pairs)]
    count = workers or 1
    return [WorkerSlot(i, f"worker-{i}", None, _cpu_share(count, cpu_count)) for i in range(count)]


def pinned(index: int, name: str, gpus: list[str]) -> WorkerSlot:
    """A worker (or trial group) that sees only ``gpus``."""
    visible = ",".join(gpus)
    return WorkerSlot(index, name, visible, {"CUDA_VISIBLE_DEVICES": visible})


def _cpu_share(processes: int, cpu_count: int | None) -> dict[str, str]:
    """CPU processes share the cores instead of each starting one thread per core."""
    threads = str(max(1, (cpu_count or os.cpu_count() or 1) // processes))
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}


def plan_groups(gpus: list[str] | None, workers: int | None, processes: int, cpu_count: int | None = None) -> list[WorkerSlot]:
    """Trial groups of ``processes`` processes each (``runtime.processes_per_trial``), one torchrun apiece.

    With GPUs: consecutive runs of ``processes`` GPUs (8 GPUs, 4 per trial: 0-3 and 4-7), each group
    pinned to its own with CUDA_VISIBLE_DEVICES, times ``workers`` groups per run. Without: ``workers``
    groups of CPU processes sharing the cores (OMP threads = cores / (groups x processes), at least 1).
    """
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if processes < 1:
        raise UserError("runtime.processes_per_trial must be at least 1")
    per_run = workers or 1
    if gpus:
        if len(gpus) % processes:
            raise UserError(f"runtime.processes_per_trial is {processes}: {len(gpus)} GPUs ({','.join(gpus)}) do not "
                            f"split into groups of {processes}; give --gpus a multiple of {processes}")
        runs = [gpus[i : i + processes] for i in range(0, len(gpus), processes)]
        pairs = [(run, n) for run in runs for n in range(per_run)]
        return [pinned(i, _group_name(run, i) + (f"/{n}" if per_run > 1 else ""), run) for i, (run, n) in enumerate(pairs)]
    return [WorkerSlot(i, f"group-{i}", None, _cpu_share(per_run * processes, cpu_count)) for i in range(per_run)]


def _group_name(gpus: list[str], index: int) -> str:
    """gpu0-3 for GPUs 0, 1, 2, 3; gpu0+2 for 0 and 2; group-N for GPUs named by UUID."""
    if not all(g.isdigit() for g in gpus):
        return f"group-{index}"
    numbers = [int(g) for g in gpus]
    if len(numbers) > 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"gpu{numbers[0]}-{numbers[-1]}"
    return "gpu" + "+".join(gpus)


# (workers running now) -> (workers to start, workers to retire after their trial)
Tend = Callable[[list[WorkerSlot]], tuple[list[WorkerSlot], list[WorkerSlot]]]
TEND_EVERY = 10.0  # seconds between asks

MAX_RESPAWNS = 3  # per slot: a worker that keeps crashing is left dead rather than restarted for ever
POLL = 0.2  # seconds between looks at the children


def respawn_reason(code: int) -> str | None:
    """Why a worker that exited with ``code`` should be started again, or None if it should not.

    Budget spent (0), every trial failing (1), bad input (2) and a stop asked
    for (130, 143 or the signals themselves) end a worker for good; a hard
    ``trial_timeout`` exit (124) or death by another signal (a native crash, the
    out-of-memory killer, kill -9) would otherwise shrink the fleet silently.
    """
    if code == EXIT_HUNG:
        return f"exited with {code} (a trial hung past trial_timeout)"
    signum = -code if code < 0 else code - 128 if code > 128 and code not in (130, 143) else None
    if signum is None or signum in (signal.SIGTERM, signal.SIGINT):
        return None
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"was killed by {name}" if signum == signal.SIGKILL else f"crashed ({name})"


def run(
    study_file: str,
    storage: str,
    slots: list[WorkerSlot],
    extra_args: list[str],
    command: Callable[[WorkerSlot], list[str]] | None = None,
    max_respawns: int = MAX_RESPAWNS,
    tend: Tend | None = None,
    tend_every: float = TEND_EVERY,
) -> int:
    """Start the workers, restart the ones that crash, forward Ctrl-C and SIGTERM to them,
    and return the worst exit code.

    The storage URL travels in the environment, never on a command line that
    ``ps`` would show. ``command`` builds a worker's command line (tests start
    plain Python workers with it). ``tend`` (``--workers-per-gpu auto``) is asked
    every ``tend_every`` seconds which workers to add, and which to retire: those
    get SIGUSR1, finish their trial and exit 0.
    """
    command = command or (lambda slot: [sys.executable, "-m", "hpo", "launch", study_file, "--worker-index", str(slot.index), *extra_args])
    running: dict[int, subprocess.Popen] = {}
    respawns = {slot.index: 0 for slot in slots}
    codes: dict[int, int] = {}
    stopping = False
    stopped_by: int | None = None

    def start(slot: WorkerSlot) -> subprocess.Popen:
        env = {**os.environ, **slot.env, "HPO_STORAGE": storage, "HPO_WORKER_NAME": slot.name}
        # A session of their own: Ctrl-C reaches them once, through forward(), not twice.
        return subprocess.Popen(command(slot), env=env, start_new_session=True)

    def forward(signum, frame):
        nonlocal stopping, stopped_by
        stopping, stopped_by = True, signum
        for child in running.values():
            if child.poll() is None:
                child.send_signal(signum)

    by_index = {slot.index: slot for slot in slots}
    for slot in slots:
        running[slot.index] = start(slot)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    next_tend = time.monotonic() + tend_every
    try:
        while running:
            if tend is not None and not stopping and time.monotonic() >= next_tend:
                next_tend = time.monotonic() + tend_every
                more, retire = tend([by_index[index] for index in running])
                for slot in more:
                    by_index[slot.index], respawns[slot.index] = slot, 0
                    running[slot.index] = start(slot)
                for slot in retire:
                    if slot.index in running and running[slot.index].poll() is None:
                        running[slot.index].send_signal(signal.SIGUSR1)
            for index, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[index]
                slot, why = by_index[index], respawn_reason(code)
                if why and not stopping and respawns[index] < max_respawns:
                    respawns[index] += 1
                    log.warning("worker %s %s; starting it again (%d of %d)", slot.name, why, respawns[index], max_respawns)
                    running[index] = start(slot)
                    continue
                if why:
                    log.warning("worker %s %s; not started again (%s)", slot.name, why,
                                "stopping" if stopping else f"restarted {max_respawns} times already")
                codes[index] = code
            time.sleep(POLL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = list(codes.values())
    if stopped_by is not None and any(code != 0 for code in final):
        return 128 + stopped_by  # torchrun, stopped by a signal, exits 1 rather than 143 or 130
    for special in (143, 130):
        if special in final:
            return special
    worst = next((code for code in final if code != 0), 0)
    return 1 if worst < 0 else worst
