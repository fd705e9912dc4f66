"""The one objective: a study's task, data and pretrained model, and a fine-tune per trial.

Construction does everything that is the same for every trial (read and
check the data, tokenize through the cache, load the pretrained weights
once), so a mistake in the study surfaces before the first trial and each
trial pays only for its own fine-tune. What differs between tasks comes from
the ``Task`` (inputs and head), what differs between full fine-tuning and
adapters from ``objectives.adapters``. A trial talks to the search through
the Optuna trial alone: ``suggest_*`` (via the spec), ``report``,
``should_prune``, ``set_user_attr`` and ``TrialPruned``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo import checkpoints
from hpo.params import TrainingParams
from hpo.signals import deferred_preemption
from hpo.records import StudyFacts
from hpo.spec import StudySpec
from objectives import adapter_report, adapters, checkpointing, freezing, retraining
from objectives.classweights import class_weights
from objectives.config import EvalConfig, Hooks, TrainConfig
from objectives.errors import ObjectiveError
from objectives.model import LoadOptions, load_pretrained, model_depth, resolve
from objectives.runtime import pick_runtime
from objectives.task import Batches, Task
from objectives.training import EvalPoint, TrainResult, evaluate, fine_tune
from objectives.trial_notes import ProgressNotes, record_trial, release_memory

log = logging.getLogger("objectives.objective")


def check_freeze_depth(spec: StudySpec, depth: int | None) -> None:
    """A freeze depth the model cannot have dooms every trial that draws it."""
    if depth is None or "freeze_depth" not in spec.search_space:
        return
    dim = spec.search_space["freeze_depth"]
    values = getattr(dim, "choices", None) or ([dim.high] if hasattr(dim, "high") else [dim])
    too_deep = [v for v in values if v > depth]
    if too_deep:
        where = "high" if hasattr(dim, "high") else ("choices" if hasattr(dim, "choices") else "")
        path = "search_space.freeze_depth" + (f".{where}" if where else "")
        raise ObjectiveError(
            f"{path}: {max(too_deep)} exceeds the depth of {spec.model} ({depth} layers; "
            f"{depth} trains only the head)"
        )


def check(spec: StudySpec, task: Task) -> dict[str, Any]:
    """Cheap checks for ``hpo validate``: depth and adapter sizes from the model's config, local data read and checked."""
    depth = model_depth(spec.model, task)  # None: the model's config is not on this machine
    check_freeze_depth(spec, depth)
    facts: dict[str, Any] = {}
    if spec.adapter.type == "lora":
        facts["adapter_table"] = adapter_report.table(spec, task)
    if spec.data.source == "hub":
        return {**facts, "data": "hub dataset: checked at launch"}
    splits = task.rows.splits(spec.data, spec.seed, task.head.numeric_labels)
    if spec.class_weights is not None:
        class_weights(spec.class_weights, splits.train["labels"], splits.label_names)
    if depth is not None:  # the tokenizer is on this machine too: token lengths
        preprocessor = task.inputs.preprocessor(resolve(spec.model))
        for name, dataset in (("train", splits.train), ("validation", splits.validation)):
            task.inputs.annotate(splits.report, name, dataset, preprocessor, spec.data)
    report = splits.report.as_dict()
    report["test"] = task.rows.test_leaks(spec.data, splits.train_keys)
    return {"train": len(splits.train), "validation": len(splits.validation), "labels": splits.label_names,
            **facts, "data_report": report}


def _devices(runtime) -> list[str] | None:
    """Where each process of a trial run on several trains ("host/device", by rank); None for one process."""
    if not runtime.sharded:
        return None
    import socket

    import torch.distributed as dist

    here = f"{socket.gethostname()}/{runtime.device}"
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = runtime.device.index
    if runtime.device.type == "cuda" and index is not None and index < len(visible) and visible[index] != str(index):
        here += f" (GPU {visible[index]})"  # a trial group pinned to GPUs 4-7 sees them as cuda:0-3
    gathered: list[str | None] = [None] * runtime.world
    dist.all_gather_object(gathered, here)
    return [str(d) for d in gathered]


class Objective:
    def __init__(self, spec: StudySpec, task: Task):
        self.spec, self.task = spec, task
        self.runtime = pick_runtime(spec.runtime.device, spec.runtime.precision, spec.runtime.strategy)
        self.devices = _devices(self.runtime)
        if spec.runtime.num_threads:
            torch.set_num_threads(spec.runtime.num_threads)
        splits = task.rows.splits(spec.data, spec.seed, task.head.numeric_labels)
        self.label_names = splits.label_names
        self.dropped = splits.dropped
        self.train_keys = splits.train_keys  # only to drop test rows seen in training, at retrain
        self.class_weights = None if spec.class_weights is None else class_weights(
            spec.class_weights, splits.train["labels"], splits.label_names)
        self.pretrained = self._load_model(splits.label_names)
        for name, dataset in (("train", splits.train), ("validation", splits.validation)):
            task.inputs.annotate(splits.report, name, dataset, self.pretrained.tokenizer, spec.data)
        self.data_report = splits.report.as_dict()
        for warning in self.data_report["warnings"]:
            log.warning("data: %s", warning)
        self.train = self._batches(splits.train, training=True)
        self.validation = self._batches(splits.validation, training=False)
        task.inputs.check(self.pretrained.model, self.validation)  # e.g. packing scores as unpacked rows would
        self.test: Batches | None = None  # read by load_test(), once the search is over
        self.checkpoint_store = checkpoints.open_store(spec.checkpoints) if spec.checkpoints else None
        # What lives as long as the worker (libraries, data, pretrained weights)
        # leaves the collector's reach: the gc.collect after each trial then
        # scans only what the trial made (0.6 s per trial -> under 1 ms).
        gc.freeze()

    def _load_model(self, label_names: list[str]):
        """The pretrained model, once per worker, and how trials get theirs from it (a copy or an adapter)."""
        spec = self.spec
        options = LoadOptions(gradient_checkpointing=spec.runtime.gradient_checkpointing, quantize=spec.adapter.quantize)
        pretrained = load_pretrained(spec.model, self.task, label_names, options)
        self.depth = freezing.depth(pretrained.model)
        check_freeze_depth(spec, self.depth)
        self.models = adapters.build(spec.adapter.type, pretrained, sharded=self.runtime.fsdp)
        if spec.adapter.type == "lora":
            adapter_report.check_targets(spec, pretrained.model)  # a target a trial would fail on: now
        return pretrained

    def _batches(self, dataset, *, training: bool) -> Batches:
        return self.task.inputs.batches(dataset, self.pretrained.tokenizer, self.spec.data, training=training)

    def describe(self) -> dict[str, Any]:
        """Facts worth keeping on the study (the label mapping above all), as study attributes."""
        _, total = freezing.count_parameters(self.pretrained.model)
        return StudyFacts(
            label_names=self.label_names,
            label2id={name: i for i, name in enumerate(self.label_names)},
            train_examples=self.data_report["splits"]["train"]["used"],  # examples, also where rows are packed
            validation_examples=self.data_report["splits"]["validation"]["used"],
            rows_dropped=self.dropped,
            data_report=self.data_report,
            class_weights=self.class_weights,
            model_depth=self.depth,
            model_parameters=total,
            device=str(self.runtime.device),
            precision=self.runtime.precision,
            adapter=self.spec.adapter.type,
            budget_unit=self.task.inputs.unit,
        ).attributes()

    # --- one training run: what trials, retrain and the benchmarks share ------

    def new_model(self, params: TrainingParams, seed: int):
        """The model a run trains: a fresh copy, or the shared base with a fresh adapter."""
        return self.models.attach(params, seed)

    def release(self, model) -> None:
        """Hand the run's model back: removes an adapter from the shared base."""
        self.models.release(model)

    def train_config(self, params: TrainingParams, seed: int, max_examples: int | None = None) -> TrainConfig:
        return TrainConfig(
            params=params, runtime=self.runtime, seed=seed, points_per_epoch=self.spec.evaluation.points_per_epoch,
            group_by_length=self.spec.data.grouped_by_length,
            class_weights=tuple(self.class_weights) if self.class_weights else None, max_examples=max_examples,
        )

    def eval_config(self) -> EvalConfig:
        return EvalConfig(metric=self.spec.metric, maximize=self.spec.direction == "maximize",
                          num_labels=len(self.label_names), batch_size=self.spec.evaluation.batch_size)

    def train_model(self, model, params: TrainingParams, seed: int, *, validation: Batches | None = None,
                    train: Batches | None = None, max_examples: int | None = None, hooks: Hooks = Hooks(),
                    result: TrainResult | None = None, resume: dict | None = None) -> TrainResult:
        return fine_tune(model, train if train is not None else self.train, validation, self.task.head,
                         self.train_config(params, seed, max_examples), self.eval_config(), hooks, result, resume)

    def save(self, model, directory: Path) -> None:
        """The model (or the adapter and head) with its tokenizer; a full model's config carries id2label."""
        directory.mkdir(parents=True, exist_ok=True)
        self.models.save(model, directory)
        self.pretrained.tokenizer.save_pretrained(directory)

    def evaluate(self, model, batches: Batches, *, fp32: bool = False) -> dict[str, float]:
        runtime = replace(self.runtime, autocast_dtype=None) if fp32 else self.runtime
        return evaluate(model, batches, self.task.head, runtime, self.eval_config())

    # --- retrain: called by hpo.retrain once the search is over -------------

    def load_test(self) -> int:
        """Read the held-out split (its first reading); returns its size."""
        rows = self.task.rows.test_split(self.spec.data, self.label_names, self.task.head.numeric_labels, self.train_keys)
        self.test = self._batches(rows, training=False)
        return len(self.test)

    def validation_run(self, params: TrainingParams, seed: int) -> EvalPoint:
        """The configuration with another seed, scored on validation: its best point."""
        return retraining.validation_run(self, params, seed)

    def retrain(self, params: TrainingParams, seed: int, *, on: str, epochs: float, directory: Path):
        """Retrain one seed, test it once, save it to ``directory``."""
        if self.test is None:
            raise RuntimeError("retrain before load_test(): the test split is read once, first")
        return retraining.retrain(self, params, seed, on=on, epochs=epochs, directory=directory)

    # --- a trial -------------------------------------------------------------

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.spec.sample(trial)
        start = time.perf_counter()
        if self.runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = self.new_model(params, self.spec.seed)
        adapter = self.models.facts(model, params)
        result = TrainResult()  # filled as training goes: a pruned trial keeps what it did
        notes = ProgressNotes(trial)
        try:
            with self._checkpointing(trial, model) as (saver, resume):
                self.train_model(model, params, self.spec.seed, validation=self.validation, result=result,
                                 hooks=Hooks(on_eval=self._reporter(trial), on_batch=notes.batch, checkpoint=saver),
                                 resume=resume.state if resume else None)
                if saver is not None and self.spec.checkpoints.keep == "best":
                    saver.save_final(model)
        finally:
            record_trial(trial, result, model, self.runtime, time.perf_counter() - start, adapter, self.task.inputs.unit,
                         self.devices)
            notes.close(result.examples_seen)  # a trial that failed between points got further than its last one
            self.release(model)
            del model
            release_memory(self.runtime)
        if result.best is None:
            raise ObjectiveError("no evaluation point was reached; is the train split empty?")
        return result.best.metrics[self.spec.metric]

    @contextmanager
    def _checkpointing(self, trial: optuna.Trial, model):
        """With checkpoints: the saver, the state a retry resumes from (its points reported again), and
        SIGTERM deferred to the loop's next step while training runs."""
        if self.checkpoint_store is None:
            yield None, None
            return
        leader, world = self.runtime.rank == 0, self.runtime.world
        files = checkpoints.TrialCheckpoints(self.checkpoint_store, trial) if leader else None  # rank 0 writes
        expected = checkpointing.identity(self.spec, trial)
        if world > 1:
            resume = checkpointing.shared_resume_point(files, expected, model, self.runtime.fsdp)
        else:
            resume = checkpointing.resume_point(files, expected, model)
        if resume is not None:
            for point in resume.points:  # the pruner judges the retry as if it had never stopped
                trial.report(point.metrics[self.spec.pruning_metric], step=point.examples)
            trial.set_user_attr(checkpoints.RESUMED_ATTR, resume.examples)
            log.info("trial %d: resuming trial %d's checkpoint at %d %s", trial.number, resume.from_trial,
                     resume.examples, self.task.inputs.unit)
        with deferred_preemption(self.spec.checkpoints.sigterm_wait) as deferral:
            yield checkpointing.TrialSaver(files, self.spec.checkpoints, expected, deferral, world,
                                           self.runtime.fsdp), resume

    def _reporter(self, trial: optuna.Trial):
        metric, reported = self.spec.metric, self.spec.pruning_metric

        def on_eval(point: EvalPoint) -> None:
            trial.report(point.metrics[reported], step=point.examples)
            log.info("trial %d: %s %.4f after %d %s (epoch %.2f)", trial.number, metric, point.metrics[metric], point.examples,
                     self.task.inputs.unit, point.epoch)
            # At the last point the training is paid for: pruning would only throw the result away.
            if not point.last and trial.should_prune():
                raise optuna.TrialPruned(f"{reported} {point.metrics[reported]:.4f} after {point.examples} {self.task.inputs.unit}")

        return on_eval
