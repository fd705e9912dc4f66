"""How many trials share one GPU (``--workers-per-gpu auto``): measured, not guessed.

Small models leave a GPU mostly idle: steps are bound by kernel launches, not
arithmetic (22-38% busy for BERT-base at batch 32 on an H100, docs/benchmarks.md),
so a second and third trial on the same GPU add throughput for free, until
memory runs out or the kernels start to queue behind each other. Neither limit
can be read from the study file. So each GPU starts with one worker; once a
trial has finished there, its peak memory says how many could fit (with
headroom for the CUDA context and the allocator's slack), and one more worker
is started; it stays only while the GPU's throughput, the examples per second
of every trial running on it, still rises by ``MIN_GAIN`` with each added one.

Pure decisions over what trials recorded, so the rule is tested without a GPU;
``hpo/workers.py`` acts on them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

HEADROOM = 0.10  # of the GPU's memory left free: another trial's peak may land higher than the first one's
CONTEXT_MB = 500.0  # a CUDA context and cuBLAS workspace per process, outside torch's allocator
MIN_GAIN = 0.05  # one worker more must raise the GPU's throughput by this much to be worth its memory
MAX_PER_GPU = 8
TRIALS_PER_LEVEL = 2  # finished trials seen at a worker count before its throughput is trusted


@dataclass(frozen=True)
class Finished:
    """One trial that finished on a GPU, as the parent reads it from the study."""

    sharing: int  # workers on that GPU when the trial started
    examples_per_second: float
    peak_mb: float  # torch's reserved memory at its peak (what the process held, not only live tensors)
    device_mb: float  # the GPU's whole memory


@dataclass(frozen=True)
class Decision:
    workers: int  # workers the GPU should run now
    settled: bool  # no more changes: the choice is made
    why: str


def fitting(peak_mb: float, device_mb: float) -> int:
    """Trials of this peak memory that fit on one GPU together, at least one."""
    usable = device_mb * (1 - HEADROOM)
    return max(1, min(MAX_PER_GPU, int(usable // (peak_mb + CONTEXT_MB))))


def throughput(trials: list[Finished], sharing: int) -> float | None:
    """The GPU's examples per second with ``sharing`` workers: each trial's rate times the trials beside it."""
    rates = [t.examples_per_second for t in trials if t.sharing == sharing and t.examples_per_second > 0]
    if len(rates) < min(TRIALS_PER_LEVEL, sharing):
        return None
    return sharing * statistics.median(rates)


def decide(trials: list[Finished], workers: int) -> Decision:
    """What one GPU running ``workers`` workers should do next, from the trials finished on it."""
    if not trials:
        return Decision(workers, False, "waiting for a first trial to finish")
    peak = max(t.peak_mb for t in trials)
    fit = fitting(peak, trials[0].device_mb)
    memory = f"a trial peaks at {peak / 1024:.1f} GiB of {trials[0].device_mb / 1024:.0f} GiB"
    now = throughput(trials, workers)
    if now is None:
        return Decision(workers, False, f"measuring {workers} worker(s)")
    if workers > 1:
        before = throughput(trials, workers - 1)
        if before is not None and now < before * (1 + MIN_GAIN):
            return Decision(workers - 1, True, f"{workers - 1} per GPU: worker {workers} raised throughput "
                                                f"only {now / before:.2f}x ({memory})")
    if workers >= fit:
        return Decision(workers, True, f"{workers} per GPU: memory holds no more ({memory})")
    one = throughput(trials, 1)
    gain = f"; {workers} give {now / one:.2f}x one's throughput" if workers > 1 and one else ""
    return Decision(workers + 1, False, f"trying {workers + 1} per GPU ({memory}, room for {fit}{gain})")
