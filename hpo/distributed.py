"""One trial across several processes (``runtime.processes_per_trial``): rank 0 talks to the study.

Every rank runs the same objective on its shard of each batch (DDP averages
the gradients), but only rank 0 claims trials, beats the heartbeat, reports
and asks the pruner. What the other ranks must agree on travels from rank 0
by ``torch.distributed.broadcast_object_list``, the one collective written
here: the next trial's parameters (or the order to stop), and each pruning
decision, so that every rank stops at the same evaluation point. A rank
never draws its own parameters (under ``torchrun`` every rank of a plain
Optuna script does: transformers #18609, wandb #7811).

``torchrun`` (``torch.distributed.run``) starts the processes and sets the
rendezvous; ``hpo launch`` with ``processes_per_trial`` > 1 re-executes itself
under it when it is not already there, or, with ``--workers``/``--gpus``, starts
one torchrun per trial group (``hpo.workers.plan_groups``). Across nodes a
torchrun on every node starts the group: RANK picks the leader, LOCAL_RANK the
GPU. gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import optuna

from hpo.errors import GroupOutOfStep, UserError
from hpo.signals import Preempted

log = logging.getLogger("hpo.distributed")

STOP = ("stop",)
# torchrun starts the whole group again after a rank dies or a trial fails on rank 0 (the lost trial is
# queued again, or recorded FAIL), at most this many times per launch: as hpo launch --workers respawns.
MAX_RESTARTS = 3
CONNECT_SECONDS = 120
# A restarted group reads the previous round's addresses from the rendezvous store torchrun shares with
# init_process_group, and fails to connect (pytorch #135712); a store of the group's own avoids it.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def from_env() -> Group | None:
    """The process group torchrun describes in the environment, or None outside one (or with one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def check_group(group: Group, processes: int) -> None:
    """A group torchrun started (ours, or one across nodes) must be the size the study file says, so that
    the file's checks (checkpoints refused, say) and the trials' records mean what ran."""
    if group.world != processes:
        raise UserError(f"torchrun started {group.world} processes (WORLD_SIZE) but runtime.processes_per_trial is "
                        f"{processes}: set it to {group.world} (nodes x processes per node)")


def init(group: Group, timeout: float) -> None:
    """Join the group: NCCL when this process has a GPU, gloo otherwise; a collective waiting on a rank
    that stopped answering gives up after ``timeout`` (at least CONNECT_SECONDS).

    Across nodes RANK is the rank in the whole group and LOCAL_RANK the one on this node: the GPU is
    chosen by LOCAL_RANK, the leader by RANK.
    """
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        count = torch.cuda.device_count()
        if group.local_rank >= count:
            raise UserError(f"LOCAL_RANK {group.local_rank}: only {count} GPU(s) visible on this node; "
                            "torchrun --nproc-per-node must not exceed the GPUs per node")
        torch.cuda.set_device(group.local_rank)
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1":
        log.warning("torchrun --max-restarts without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: a restarted group may fail "
                    "to connect (pytorch #135712); export it where torchrun starts")
    # The same timeout bounds connecting, when the ranks may still be loading the model at different speeds.
    dist.init_process_group(backend, timeout=timedelta(seconds=max(timeout, CONNECT_SECONDS)))


def broadcast(value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (the others pass nothing)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LeaderTrial:
    """Rank 0's view of the Optuna trial: the real one, with each pruning decision sent to the other ranks."""

    def __init__(self, trial: optuna.Trial):
        self._trial = trial

    def should_prune(self) -> bool:
        return bool(broadcast(self._trial.should_prune()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


class FollowerTrial:
    """What the objective sees on the other ranks: rank 0's parameters, rank 0's pruning decisions,
    and nothing written anywhere (rank 0 records the trial)."""

    def __init__(self, number: int, params: dict[str, Any]):
        self.number, self.params = number, dict(params)
        self.user_attrs: dict[str, Any] = {}
        self.system_attrs: dict[str, Any] = {}

    def _given(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.params[name]

    suggest_float = suggest_int = suggest_categorical = _given

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return bool(broadcast())

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


class Leader:
    """The objective rank 0's runner calls: draws the parameters, sends them, then trains its shard."""

    def __init__(self, objective: Callable[[Any], float], sample: Callable[[optuna.Trial], Any]):
        self.objective, self.sample = objective, sample

    def __call__(self, trial: optuna.Trial) -> float:
        self.sample(trial)  # suggest here, so trial.params holds the whole configuration before it is sent
        broadcast(("trial", trial.number, trial.params))
        try:
            return self.objective(LeaderTrial(trial))
        except optuna.TrialPruned:
            raise  # every rank stopped at this point: the group goes on together
        except (Exception, Preempted) as exc:
            error = _out_of_step(trial.number, exc)
            if error is exc:
                raise
            raise error from (error.__cause__ or exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)  # describe() and the like

    @staticmethod
    def stop() -> None:
        broadcast(STOP)


class RankFailed(RuntimeError):
    """Another rank's error, as it reported it (its type and message, prefixed by its rank)."""


def _out_of_step(number: int, exc: BaseException) -> BaseException:
    """Why the group broke in trial ``number``: another rank's own error (the trial fails, as on one
    process), a rank lost (the trial is queued again), or an error here on rank 0.

    A follower that fails leaves its reason in the group's store before it exits. Rank 0 then sees the
    break as a lost peer in a collective, or as torchrun's SIGTERM stopping the group: either way it
    reads the reason first, so an out-of-memory error on rank 1 fails the trial instead of looping on it.
    """
    reason = failure_of(number)
    if reason is not None:
        error = GroupOutOfStep(f"trial {number} failed on {reason}")
        error.__cause__ = RankFailed(reason)  # what the trial records as its fail_reason
        return error
    if isinstance(exc, Preempted):
        return exc
    if lost_rank(exc):
        return GroupOutOfStep(f"trial {number}: another process of the trial was lost", lost_rank=True)
    return GroupOutOfStep(f"trial {number} failed on rank 0; the other ranks may wait inside it")


def _failure_key(number: int) -> str:
    return f"hpo/trial/{number}/failed"


def note_failure(number: int, rank: int, exc: BaseException) -> None:
    """Leave rank ``rank``'s reason for failing trial ``number`` where rank 0 can read it; best effort."""
    from hpo import torch_compat

    text = f"rank {rank}: {type(exc).__name__}: {exc}".strip()
    try:
        torch_compat.default_store().set(_failure_key(number), text[:500])
    except Exception as store_error:  # noqa: BLE001 - the store's host is gone too: rank 0 sees a lost rank
        log.warning("rank %d: could not report trial %d's failure (%s)", rank, number, store_error)


def failure_of(number: int) -> str | None:
    """The reason a follower left for failing trial ``number``, if any."""
    from hpo import torch_compat

    key = _failure_key(number)
    try:
        store = torch_compat.default_store()
        return store.get(key).decode() if store.check([key]) else None
    except Exception:  # noqa: BLE001 - no store to ask: nobody left a reason
        return None


# What gloo and NCCL say when a peer process died or stopped answering (they raise plain RuntimeErrors).
LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "Timed out",
             "NCCL communicator was aborted", "remote process exited")


def lost_rank(exc: BaseException) -> bool:
    """Whether a trial's error says another rank is gone (requeue it) rather than the configuration failed."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(exc, backend_error) or (isinstance(exc, RuntimeError) and any(s in str(exc) for s in LOST_PEER))


def follow(objective: Callable[[Any], float], group: Group) -> None:
    """The other ranks' loop: run each trial rank 0 sends, until it says stop."""
    import signal
    import threading

    from hpo.signals import follower_sigterm

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, follower_sigterm)  # a checkpointing trial saves with rank 0 first
    while True:
        message = broadcast()
        if tuple(message) == STOP:
            return
        _, number, params = message
        log.info("rank %d: trial %d with %s", group.rank, number, params)
        try:
            objective(FollowerTrial(number, params))
        except optuna.TrialPruned as pruned:
            log.info("rank %d: trial %d pruned (%s)", group.rank, number, pruned)
        except Exception as exc:
            note_failure(number, group.rank, exc)  # then this process ends: torchrun stops the group
            raise


def watch_parent(every: float = 1.0) -> None:
    """End this rank (SIGTERM: rank 0 requeues its trial) once its torchrun is gone.

    torchrun starts each rank in a session of its own, so a torchrun killed -9 (the out-of-memory
    killer, a lost supervisor) leaves them running; ``hpo launch`` then starts the group again
    beside them, on the same GPUs.
    """
    import signal
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        log.warning("rank's torchrun (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="hpo-parent-watch", daemon=True).start()


def close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """This ``hpo`` command again, under torchrun with ``processes`` ranks on this machine."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            f"--max-restarts={MAX_RESTARTS}", "-m", "hpo", *argv]
