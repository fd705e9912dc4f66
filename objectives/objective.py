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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.params import TrainingParams
from hpo.records import StudyFacts
from hpo.spec import StudySpec
from objectives import adapter_report, adapters, freezing, retraining
from objectives.classweights import class_weights
from objectives.config import EvalConfig, Hooks, TrainConfig
from objectives.data import count_test_leaks, load_splits, load_test
from objectives.errors import ObjectiveError
from objectives.model import load_pretrained, model_depth
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
    check_freeze_depth(spec, model_depth(spec.model, task))
    facts: dict[str, Any] = {}
    if spec.adapter.type == "lora":
        facts["adapter_table"] = adapter_report.table(spec, task)
    if spec.data.source == "hub":
        return {**facts, "data": "hub dataset: checked at launch"}
    splits = load_splits(spec.data, spec.seed, numeric_labels=task.head.numeric_labels)
    class_weights(spec.class_weights, splits.train["labels"], splits.label_names)
    report = splits.report.as_dict()
    report["test"] = count_test_leaks(spec.data, splits.train_keys)
    return {"train": len(splits.train), "validation": len(splits.validation), "labels": splits.label_names,
            **facts, "data_report": report}


class Objective:
    def __init__(self, spec: StudySpec, task: Task):
        self.spec, self.task = spec, task
        self.runtime = pick_runtime(spec.runtime.device, spec.runtime.precision)
        if spec.runtime.num_threads:
            torch.set_num_threads(spec.runtime.num_threads)
        splits = load_splits(spec.data, spec.seed, numeric_labels=task.head.numeric_labels)
        self.label_names = splits.label_names
        self.dropped = splits.dropped
        self.data_report = splits.report.as_dict()
        self.train_keys = splits.train_keys  # only to drop test rows seen in training, at retrain
        self.class_weights = class_weights(spec.class_weights, splits.train["labels"], splits.label_names)
        for warning in self.data_report["warnings"]:
            log.warning("data: %s", warning)
        self.pretrained = load_pretrained(spec.model, task, splits.label_names)
        self.depth = freezing.depth(self.pretrained.model)
        check_freeze_depth(spec, self.depth)
        self.models = adapters.build(spec.adapter.type, self.pretrained)
        if spec.adapter.type == "lora":
            adapter_report.check_targets(spec, self.pretrained.model)  # a target a trial would fail on: now
        self.train = self._batches(splits.train, training=True)
        self.validation = self._batches(splits.validation, training=False)
        self.test: Batches | None = None  # read by load_test(), once the search is over
        # What lives as long as the worker (libraries, data, pretrained weights)
        # leaves the collector's reach: the gc.collect after each trial then
        # scans only what the trial made (0.6 s per trial -> under 1 ms).
        gc.freeze()

    def _batches(self, dataset, *, training: bool) -> Batches:
        return self.task.inputs.batches(dataset, self.pretrained.tokenizer, self.spec.data, training=training)

    def describe(self) -> dict[str, Any]:
        """Facts worth keeping on the study (the label mapping above all), as study attributes."""
        _, total = freezing.count_parameters(self.pretrained.model)
        return StudyFacts(
            label_names=self.label_names,
            label2id={name: i for i, name in enumerate(self.label_names)},
            train_examples=len(self.train),
            validation_examples=len(self.validation),
            rows_dropped=self.dropped,
            data_report=self.data_report,
            class_weights=self.class_weights,
            model_depth=self.depth,
            model_parameters=total,
            device=str(self.runtime.device),
            precision=self.runtime.precision,
            adapter=self.spec.adapter.type,
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
            group_by_length=self.spec.data.group_by_length,
            class_weights=tuple(self.class_weights) if self.class_weights else None, max_examples=max_examples,
        )

    def eval_config(self) -> EvalConfig:
        return EvalConfig(metric=self.spec.metric, maximize=self.spec.direction == "maximize",
                          num_labels=len(self.label_names), batch_size=self.spec.evaluation.batch_size)

    def train_model(self, model, params: TrainingParams, seed: int, *, validation: Batches | None = None,
                    train: Batches | None = None, max_examples: int | None = None, hooks: Hooks = Hooks(),
                    result: TrainResult | None = None) -> TrainResult:
        return fine_tune(model, train if train is not None else self.train, validation, self.task.head,
                         self.train_config(params, seed, max_examples), self.eval_config(), hooks, result)

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
        rows = load_test(self.spec.data, self.label_names, numeric_labels=self.task.head.numeric_labels, train_keys=self.train_keys)
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
            self.train_model(model, params, self.spec.seed, validation=self.validation,
                             hooks=Hooks(on_eval=self._reporter(trial), on_batch=notes.batch), result=result)
        finally:
            record_trial(trial, result, model, self.runtime, time.perf_counter() - start, adapter)
            notes.close(result.examples_seen)  # a trial that failed between points got further than its last one
            self.release(model)
            del model
            release_memory(self.runtime)
        if result.best is None:
            raise ObjectiveError("no evaluation point was reached; is the train split empty?")
        return result.best.metrics[self.spec.metric]

    def _reporter(self, trial: optuna.Trial):
        metric, reported = self.spec.metric, self.spec.pruning_metric

        def on_eval(point: EvalPoint) -> None:
            trial.report(point.metrics[reported], step=point.examples)
            log.info("trial %d: %s %.4f after %d examples (epoch %.2f)", trial.number, metric, point.metrics[metric], point.examples, point.epoch)
            # At the last point the training is paid for: pruning would only throw the result away.
            if not point.last and trial.should_prune():
                raise optuna.TrialPruned(f"{reported} {point.metrics[reported]:.4f} after {point.examples} examples")

        return on_eval
