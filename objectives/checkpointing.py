"""A trial's checkpoints as the objective sees them: what to resume from, and when to save.

The store and the records are the search's (``hpo.checkpoints``), reached
through the Optuna trial; the payload is the loop's state
(``objectives.loop_state``). A checkpoint that cannot be used (missing,
truncated, replaced, written for other parameters) never resumes wrong
weights and never fails the trial: the trial starts from scratch and says why
in its ``checkpoint_warning`` attribute.

A trial on several processes (``runtime.processes_per_trial``) saves as
one: rank 0 decides at each optimizer-step boundary whether to save and
whether to stop (its clock for ``every``, its SIGTERM) and tells the others,
so every rank enters the same collectives at the same step. The weights,
optimizer and batch position are the same on every rank (under FSDP once
gathered to rank 0: ``loop_state.full_state``), so rank 0 writes what one
process would, with each rank's RNG states gathered to it (dropout
draws differ per rank: each trains other rows). On resume rank 0 reads and
checks the checkpoint and sends it to the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from hpo import checkpoints
from hpo.distributed import broadcast  # rank 0's value on every rank of the trial (a collective)
from hpo.signals import Deferral, Preempted
from hpo.spec import CheckpointSpec, StudySpec
from objectives import loop_state
from objectives.results import EvalPoint

log = logging.getLogger("objectives.checkpointing")


def identity(spec: StudySpec, trial: optuna.Trial) -> dict[str, Any]:
    """What a checkpoint must have been written for to be resumed by this trial."""
    return {"study": spec.name, "params": dict(sorted(trial.params.items())), "seed": spec.seed, "model": spec.model,
            "task": spec.task, "adapter": spec.adapter.type}


@dataclass
class Resume:
    """A checked state to resume from, and the points it already reported."""

    state: dict[str, Any]
    points: list[EvalPoint]
    examples: int
    from_trial: int


@dataclass
class TrialSaver:
    """Offered the loop's state at every optimizer step; saves at evaluation points, every N seconds, and on SIGTERM."""

    files: checkpoints.TrialCheckpoints | None
    spec: CheckpointSpec
    identity: dict[str, Any]
    deferral: Deferral
    world: int = 1  # the trial's processes; with more than one, rank 0 alone has ``files`` (the others: None)
    sharded: bool = False  # FSDP: every rank takes part in gathering the state rank 0 writes
    last: float = field(default_factory=time.monotonic)
    written: list[checkpoints.CheckpointRecord] = field(default_factory=list)

    def boundary(self, at_point: bool, capture: Callable[[], dict]) -> None:
        stopping = self.deferral.requested
        timed = self.spec.seconds is not None and time.monotonic() - self.last >= self.spec.seconds
        if self.world > 1:  # rank 0's clock and rank 0's SIGTERM decide, for every rank at this same step
            timed, stopping = broadcast((timed, stopping))
        if at_point or timed or stopping:
            self._save(capture, "SIGTERM" if stopping else "evaluation point" if at_point else "timer")
        if stopping:
            raise Preempted()

    def _save(self, capture: Callable[[], dict], why: str) -> None:
        start = time.perf_counter()
        rngs = gathered_to_rank0(loop_state.rng_states()) if self.world > 1 else None
        state = capture() if self.files is not None or self.sharded else None  # FSDP: a collective
        if self.files is None:  # another rank of the trial: rank 0 writes
            self.last = time.monotonic()
            return
        if rngs is not None:
            state["rng_ranks"] = rngs
        state["identity"] = self.identity
        payload = loop_state.to_bytes(state)
        seen, points = state["position"]["seen"], len(state["result"]["points"])
        record = self.files.save(payload, examples=seen, points=points)
        self.last = time.monotonic()
        self.written.append(record)
        note = ""
        if why == "SIGTERM" and self.deferral.requested_at is not None:
            note = f"; {time.monotonic() - self.deferral.requested_at:.2f} s after SIGTERM"
        log.info("trial %d: checkpoint at %d (%s) written in %.2f s, %.1f MB%s", self.files.trial.number, seen, why,
                 time.perf_counter() - start, record.bytes / 1e6, note)

    def save_final(self, model) -> None:
        """keep: best: the trainable weights at the end, for export; the runner keeps only the best trial's."""
        weights = loop_state.final_weights(model, self.sharded) if self.files is not None or self.sharded else None
        if self.files is None:
            return  # rank 0 writes (DDP: the same weights; FSDP: gathered to it)
        payload = loop_state.to_bytes({"format": loop_state.FORMAT, "identity": self.identity, "final": True,
                                       "model": weights})
        self.files.save(payload, examples=0, points=0, final=True)


def gathered_to_rank0(value: Any) -> list[Any] | None:
    """Every rank's ``value``, by rank, on rank 0 (None elsewhere); a collective."""
    import torch.distributed as dist

    found = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, found, dst=0)
    return found


def shared_resume_point(files: checkpoints.TrialCheckpoints | None, expected: dict[str, Any], model,
                        sharded: bool) -> Resume | None:
    """``resume_point`` read and checked by rank 0 (``files``; None on the other ranks), sent to every rank:
    the others never read the study or the store."""
    return broadcast(resume_point(files, expected, model, sharded) if files is not None else None)


def resume_point(files: checkpoints.TrialCheckpoints, expected: dict[str, Any], model,
                 sharded: bool = False) -> Resume | None:
    """The predecessor's state when it is sound and fits ``model``; None (with a warning on the trial) otherwise.

    ``sharded``: this run is FSDP's, whose optimizer state is saved in another layout (keyed by name)."""
    try:
        found = files.resume_bytes()
        if found is None:
            return None
        payload, record = found
        state = loop_state.from_bytes(payload)
        loop_state.check_identity(state, expected)
        loop_state.check_fits(state, model)
        loop_state.check_layout(state, sharded)
    except (checkpoints.CheckpointUnusable, loop_state.StateMismatch) as exc:
        files.warn(f"{exc}; started from scratch")
        return None
    return Resume(state, loop_state.points(state), int(state["position"]["seen"]), record.trial)
