"""Trial checkpoints in an Optuna artifact store: written whole or not at all, one per running trial.

Optuna's stores (``FileSystemArtifactStore``, ``Boto3ArtifactStore``) do the
reading and writing; what this module adds is what makes a checkpoint safe to
resume from, kept on the trial as a typed ``CheckpointRecord``:

- every checkpoint goes under a new key, and the record that names it (with
  its size and SHA-256) is written only once the bytes are in the store, so a
  write killed halfway leaves an unreferenced key, never a checkpoint that
  loads wrong. The key being written is noted first, so cleanup removes it;
- a trial's new checkpoint replaces its previous one (or the one it resumed
  from) only after it is recorded: at most one per running trial;
- a retry carries its predecessor's record as ``resume_from`` (the runner's
  requeue copies it), which is how the objective finds what to resume.

Optuna's own ``upload_artifact`` is not used: it keeps metadata on the trial
that cannot be deleted, so the dashboard would list every removed checkpoint.
The payload's format belongs to the objective; this module sees bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import UserError
from hpo.records import CheckpointRecord
from hpo.spec import CheckpointSpec

log = logging.getLogger("hpo.checkpoints")

ATTR = "checkpoint"  # the trial's latest state
RESUME_ATTR = "resume_from"  # on a retry: the state its predecessor left
WRITING_ATTR = "checkpoint_writing"  # a key being written; removed by cleanup if the write never finished
FINAL_ATTR = "final_checkpoint"  # keep: best: the trainable weights at the end of training
WARNING_ATTR = "checkpoint_warning"  # why a retry started from scratch
RESUMED_ATTR = "resumed_at"  # budget units already trained when the retry went on
KEPT_ATTR = "kept_checkpoint"  # study attribute (keep: best): the best complete trial's final state


class ArtifactStore(Protocol):
    def open_reader(self, artifact_id: str) -> BinaryIO: ...
    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...
    def remove(self, artifact_id: str) -> None: ...


class CheckpointUnusable(Exception):
    """A checkpoint that must not be resumed from; the message says why, for the trial's warning."""


@dataclass(frozen=True)
class Store:
    """An artifact store and the key prefix of this study's checkpoints in it."""

    artifacts: ArtifactStore
    prefix: str
    where: str  # for messages: the folder or s3:// URL

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def remove(self, key: str) -> None:
        """Best effort: a key that is gone already is what we wanted."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            self.artifacts.remove(key)
        except ArtifactNotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - a leftover file must not fail a trial
            log.warning("could not remove checkpoint %s from %s: %s", key, self.where, exc)


@functools.lru_cache(maxsize=8)
def open_store(spec: CheckpointSpec) -> Store:
    """The store a study file names: a folder (made if missing) or ``s3://bucket/prefix``.

    Opened once per process and settings: the runner asks for it after every trial and
    every requeue, and an S3 store would otherwise build a new boto3 client each time.
    """
    if spec.store.startswith("s3://"):
        from optuna.artifacts import Boto3ArtifactStore

        bucket, _, prefix = spec.store[len("s3://"):].partition("/")
        try:
            artifacts = Boto3ArtifactStore(bucket)
        except ImportError as exc:
            raise UserError(f"checkpoints.store: {spec.store} needs boto3 (pip install boto3): {exc}") from None
        return Store(artifacts, f"{prefix.strip('/')}/" if prefix.strip("/") else "", spec.store)
    from optuna.artifacts import FileSystemArtifactStore

    folder = Path(spec.store)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"checkpoints.store: cannot make the folder {folder}: {exc.strerror or exc}") from None
    return Store(FileSystemArtifactStore(folder), "", str(folder))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:80] or "study"


class TrialCheckpoints:
    """One trial's checkpoints: what it may resume from, and each new state it saves."""

    def __init__(self, store: Store, trial: optuna.Trial):
        self.store, self.trial = store, trial
        self.current: CheckpointRecord | None = None  # this trial's latest, once it has saved one
        self.inherited = _readable(trial.user_attrs, RESUME_ATTR)

    def resume_bytes(self) -> tuple[bytes, CheckpointRecord] | None:
        """The predecessor's checkpoint, checked against its record; None when there is none to resume."""
        if self.inherited is None:
            return None
        return read(self.store, self.inherited), self.inherited

    def save(self, payload: bytes, examples: int, points: int, *, final: bool = False) -> CheckpointRecord:
        start = time.perf_counter()
        key = self.store.key(f"{_slug(self.trial.study.study_name)}-trial{self.trial.number}-{uuid.uuid4().hex[:12]}.pt")
        self.trial.set_user_attr(WRITING_ATTR, key)
        self.store.artifacts.write(key, io.BytesIO(payload))
        record = CheckpointRecord(
            artifact_id=key, sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload), trial=self.trial.number,
            examples=examples, points=points, write_seconds=round(time.perf_counter() - start, 3), final=final,
        )
        if final:
            self.trial.set_user_attr(FINAL_ATTR, record.dump())
            return record
        self.trial.set_user_attr(ATTR, record.dump())
        superseded = self.current or self.inherited
        if superseded is not None:
            self.store.remove(superseded.artifact_id)
        self.current, self.inherited = record, None
        return record

    def warn(self, message: str) -> None:
        log.warning("trial %d: %s", self.trial.number, message)
        self.trial.set_user_attr(WARNING_ATTR, message[:500])


def read(store: Store, record: CheckpointRecord) -> bytes:
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        with store.artifacts.open_reader(record.artifact_id) as reader:
            payload = reader.read()
    except ArtifactNotFound:
        raise CheckpointUnusable(f"checkpoint of trial {record.trial} is missing from {store.where}") from None
    except OSError as exc:
        raise CheckpointUnusable(f"checkpoint of trial {record.trial} could not be read: {exc}") from None
    if len(payload) != record.bytes:
        raise CheckpointUnusable(
            f"checkpoint of trial {record.trial} holds {len(payload):,} bytes, its record {record.bytes:,} (a cut write?)")
    if hashlib.sha256(payload).hexdigest() != record.sha256:
        raise CheckpointUnusable(f"checkpoint of trial {record.trial} does not match its record's SHA-256 (replaced or corrupt)")
    return payload


def _readable(attrs: dict[str, Any], attr: str) -> CheckpointRecord | None:
    """A record, or None when it is absent or unreadable (an unreadable one is never resumed from)."""
    try:
        return CheckpointRecord.of(attrs, attr)
    except UserError as exc:
        log.warning("%s; starting from scratch", exc)
        return None


# --- the runner's side: what a retry inherits, and what a finished trial leaves ---------


def carried(failed: FrozenTrial) -> dict[str, Any]:
    """User attributes a retry of ``failed`` starts with: the latest checkpoint of its line."""
    record = failed.user_attrs.get(ATTR) or failed.user_attrs.get(RESUME_ATTR)
    return {RESUME_ATTR: record} if record else {}


def drop_unfinished(store: Store, trial: FrozenTrial) -> None:
    """A lost trial's write that never got its record (killed mid-write) is garbage: remove it."""
    writing = trial.user_attrs.get(WRITING_ATTR)
    record = _readable(trial.user_attrs, ATTR)
    if writing and (record is None or record.artifact_id != writing):
        store.remove(writing)


def release(store: Store, trial: FrozenTrial) -> None:
    """Remove what a trial that will not be resumed left in the store (its final state aside)."""
    keys = {trial.user_attrs.get(WRITING_ATTR)}
    for attr in (ATTR, RESUME_ATTR):
        record = _readable(trial.user_attrs, attr)
        if record is not None:
            keys.add(record.artifact_id)
    final = _readable(trial.user_attrs, FINAL_ATTR)
    keys.discard(final.artifact_id if final else None)
    for key in keys - {None}:
        store.remove(key)


def keep_if_best(store: Store, study: optuna.Study, trial: FrozenTrial) -> None:
    """keep: best: the study's best complete trial keeps its final state, any other loses it.

    Called under the study lock, so two workers finishing at once agree on which stays.
    """
    final = _readable(trial.user_attrs, FINAL_ATTR)
    if final is None:
        return
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    if trial.state != TrialState.COMPLETE or best != trial.number:
        store.remove(final.artifact_id)
        return
    raw = study.user_attrs.get(KEPT_ATTR)
    previous = _readable(raw, "record") if raw else None
    study.set_user_attr(KEPT_ATTR, {"trial": trial.number, "record": final.dump()})
    if previous is not None and previous.artifact_id != final.artifact_id:
        store.remove(previous.artifact_id)


def kept(study: optuna.Study) -> tuple[int, CheckpointRecord] | None:
    """The kept best state (keep: best): its trial number and record."""
    raw = study.user_attrs.get(KEPT_ATTR)
    if not raw:
        return None
    return int(raw["trial"]), CheckpointRecord.read(raw["record"], f"study attribute {KEPT_ATTR!r}")
