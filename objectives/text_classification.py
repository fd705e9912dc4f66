"""Objective for ``task: text-classification``: single texts or text pairs, two or more classes.

Construction does everything that is the same for every trial (read and
check the data, tokenize through the cache, load the pretrained weights), so
a mistake in the study surfaces before the first trial and each trial pays
only for its own fine-tune. A trial talks to the search through the Optuna
trial alone: ``suggest_*`` (via the spec), ``report``, ``should_prune``,
``set_user_attr`` and ``TrialPruned``.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import optuna
import torch

from hpo.params import TrainingParams
from hpo.spec import StudySpec
from objectives import freezing, retraining
from objectives.data import load_splits, load_test, count_test_leaks
from objectives.errors import ObjectiveError
from objectives.classweights import class_weights
from objectives.model import load_pretrained, model_depth, set_dropout
from objectives.tokens import tokenize
from objectives.training import Batcher, TrainResult, fine_tune, pick_runtime

log = logging.getLogger("objectives.text_classification")


def check_freeze_depth(spec: StudySpec, depth: int | None) -> None:
    """A freeze depth the model cannot have dooms every trial that draws it."""
    if depth is None:
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


def check(spec: StudySpec) -> dict[str, Any]:
    """Cheap checks for ``hpo validate``: model depth from its config, local data read and checked."""
    check_freeze_depth(spec, model_depth(spec.model))
    if spec.data.source == "hub":
        return {"data": "hub dataset: checked at launch"}
    splits = load_splits(spec.data, spec.seed, numeric_labels=spec.task == "text-regression")
    class_weights(spec.class_weights, splits.train["labels"], splits.label_names)
    report = splits.report.as_dict()
    report["test"] = count_test_leaks(spec.data, splits.train_keys)
    return {"train": len(splits.train), "validation": len(splits.validation), "labels": splits.label_names, "data_report": report}


class TextClassification:
    regression = False  # TextRegression: numeric labels, one output, mean squared error
    images = False  # ImageClassification: an image model and its image processor

    def __init__(self, spec: StudySpec):
        self.spec = spec
        self.runtime = pick_runtime(spec.runtime.device, spec.runtime.precision)
        if spec.runtime.num_threads:
            torch.set_num_threads(spec.runtime.num_threads)
        splits = load_splits(spec.data, spec.seed, numeric_labels=self.regression)
        self.label_names = splits.label_names
        self.dropped = splits.dropped
        self.data_report = splits.report.as_dict()
        self.train_keys = splits.train_keys  # only to drop test rows seen in training, at retrain
        self.class_weights = class_weights(spec.class_weights, splits.train["labels"], splits.label_names)
        for warning in self.data_report["warnings"]:
            log.warning("data: %s", warning)
        self.pretrained = load_pretrained(spec.model, splits.label_names, regression=self.regression, images=self.images)
        self.depth = freezing.depth(self.pretrained.model)
        check_freeze_depth(spec, self.depth)
        self.train = self._batcher(splits.train)
        self.validation = self._batcher(splits.validation)
        # What lives as long as the worker (libraries, data, pretrained weights)
        # leaves the collector's reach: the gc.collect after each trial then
        # scans only what the trial made (0.6 s per trial -> under 1 ms).
        gc.freeze()

    def _batcher(self, dataset) -> Batcher:
        tokenizer = self.pretrained.tokenizer
        tokenized = tokenize(dataset, tokenizer, self.spec.data.text_columns, self.spec.data.max_length)
        return Batcher(tokenized, tokenizer.pad_token_id)

    def describe(self) -> dict[str, Any]:
        """Facts worth keeping on the study: the label mapping above all."""
        _, total = freezing.count_parameters(self.pretrained.model)
        return {
            "label_names": self.label_names,
            "label2id": {name: i for i, name in enumerate(self.label_names)},
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "rows_dropped": self.dropped,
            "data_report": self.data_report,
            "class_weights": self.class_weights,
            "model_depth": self.depth,
            "model_parameters": total,
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
        }

    def new_model(self, params: TrainingParams, seed: int):
        model = self.pretrained.fresh_copy(seed)
        freezing.freeze(model, params.freeze_depth)
        set_dropout(model, params.dropout)
        return model

    def train_model(self, model, params: TrainingParams, seed: int, *, validation=None, train=None, max_examples=None, on_eval=None, on_batch=None, result=None) -> TrainResult:
        return fine_tune(
            model,
            train if train is not None else self.train,
            validation,
            params,
            runtime=self.runtime,
            seed=seed,
            metric=self.spec.metric,
            maximize=self.spec.direction == "maximize",
            num_labels=len(self.label_names),
            points_per_epoch=self.spec.evaluation.points_per_epoch,
            eval_batch_size=self.spec.evaluation.batch_size,
            max_examples=max_examples,
            group_by_length=self.spec.data.group_by_length,
            on_eval=on_eval,
            on_batch=on_batch,
            class_weights=self.class_weights,
            result=result,
        )

    def test_batcher(self) -> Batcher:
        """The held-out split; only retrain calls this, after the search."""
        return self._batcher(load_test(self.spec.data, self.label_names, numeric_labels=self.regression, train_keys=self.train_keys))

    # --- retrain: called by hpo.retrain once the search is over -------------

    def load_test(self) -> int:
        """Read the held-out split (its first reading); returns its size."""
        self.test = self.test_batcher()
        return len(self.test)

    def validation_run(self, params: TrainingParams, seed: int):
        """The configuration with another seed, scored on validation: its best point."""
        return retraining.validation_run(self, params, seed)

    def retrain(self, params: TrainingParams, seed: int, *, on: str, epochs: float, directory):
        """Retrain one seed, test it once, save it to ``directory``."""
        return retraining.retrain(self, params, seed, on=on, epochs=epochs, directory=directory)

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.spec.sample(trial)
        start = time.perf_counter()
        if self.runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = self.new_model(params, self.spec.seed)
        trainable, total = freezing.count_parameters(model)
        metric, reported = self.spec.metric, self.spec.pruning_metric

        def on_eval(point) -> None:
            trial.report(point.metrics[reported], step=point.examples)
            log.info("trial %d: %s %.4f after %d examples (epoch %.2f)", trial.number, metric, point.metrics[metric], point.examples, point.epoch)
            # At the last point the training is paid for: pruning would only throw the result away.
            if not point.last and trial.should_prune():
                raise optuna.TrialPruned(f"{reported} {point.metrics[reported]:.4f} after {point.examples} examples")

        result = TrainResult()  # filled as training goes: a pruned trial keeps what it did
        notes = _ProgressNotes(trial)
        try:
            self.train_model(model, params, self.spec.seed, validation=self.validation, on_eval=on_eval, on_batch=notes.batch, result=result)
        finally:
            self._record(trial, result, trainable, total, time.perf_counter() - start)
            notes.close(result.examples_seen)  # a trial that failed between points got further than its last one
            del model
            gc.collect()
            if self.runtime.device.type == "cuda":
                torch.cuda.empty_cache()
        if result.best is None:
            raise ObjectiveError("no evaluation point was reached; is the train split empty?")
        return result.best.metrics[metric]

    def _record(self, trial: optuna.Trial, result: TrainResult, trainable: int, total: int, wall: float) -> None:
        attrs: dict[str, Any] = {
            "wall_seconds": round(wall, 2),
            "train_seconds": round(result.train_seconds, 2),
            "eval_seconds": round(result.eval_seconds, 2),
            "examples_seen": result.examples_seen,
            "examples_per_second": round(result.examples_per_second, 2),
            "train_loss": round(result.train_loss, 5) if result.train_loss == result.train_loss else None,
            "trainable_parameters": trainable,
            "trainable_fraction": round(trainable / total, 4),
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
            "peak_memory_mb": _peak_memory_mb(self.runtime.device),
            "stopped_early": result.stopped_early,
        }
        if result.best is not None:
            attrs["best_examples"] = result.best.examples
            attrs["best_epoch"] = result.best.epoch
            attrs["best_metrics"] = {k: round(v, 5) for k, v in result.best.metrics.items()}
        if result.points:
            # Every metric at every point (the pruner sees one): to compare pruning
            # signals afterwards, or plot the validation loss beside the metric.
            attrs["curve"] = {
                "examples": [p.examples for p in result.points],
                **{name: [round(p.metrics[name], 5) for p in result.points] for name in result.points[0].metrics},
            }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


class _ProgressNotes:
    """Leaves how far a running trial has got on the trial itself, for whoever watches the storage.

    ``examples_total`` once and ``examples_seen`` at most every few seconds, so
    a live view (``hpo launch`` in a terminal, the dashboard) shows a trial
    moving between evaluation points without the objective knowing who watches.
    """

    def __init__(self, trial: optuna.Trial, every: float = 5.0):
        self.trial = trial
        self.every = every
        self.seen = 0
        self.total: int | None = None
        self.last = time.monotonic()

    def batch(self, seen: int, total: int) -> None:
        self.seen = seen
        if total != self.total:
            self.total = total
            self.trial.set_user_attr("examples_total", total)
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.trial.set_user_attr("examples_seen", seen)

    def close(self, recorded: int) -> None:
        if self.seen > recorded:
            self.trial.set_user_attr("examples_seen", self.seen)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS
