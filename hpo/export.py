"""What ``hpo export`` writes: the winner as a study file, as Trainer arguments, its metrics, its model, a model card.

The winner is the trial ``hpo retrain`` chose when the study was retrained
(with ``top_k`` it may not be the single best trial), else the best trial. A
folder export is staged beside its target and swapped in whole, so a failed
or killed export leaves the previous one as it was.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from hpo import atomic, modelcard, retrain, storage
from hpo.errors import UserError
from hpo.records import RetrainRecord, TrialRecord
from hpo.spec import StudySpec
from hpo.yamlio import dump_yaml

ENTRIES = ("best.yaml", "training_args.json", "metrics.json", "README.md", "model", "merged")


@dataclass(frozen=True)
class Winner:
    trial: FrozenTrial
    record: RetrainRecord | None  # once the study was retrained


def kept_winner(study: optuna.Study, spec: StudySpec) -> tuple[Winner, bytes]:
    """The trial whose final state ``checkpoints.keep: best`` kept, and that state's bytes, checked."""
    from hpo import checkpoints

    if spec.checkpoints is None or spec.checkpoints.keep != "best":
        raise UserError("--from-checkpoint exports the best trial's kept weights: the study needs "
                        "checkpoints.keep: best (set it and launch again; trials finished before keep nothing)")
    found = checkpoints.kept(study)
    if found is None:
        raise UserError(f"study {spec.name!r} has kept no trial's weights yet (checkpoints.keep: best keeps the best "
                        "complete trial's); launch it, or run `hpo retrain` and export without --from-checkpoint")
    number, record = found
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    try:
        payload = checkpoints.read(checkpoints.open_store(spec.checkpoints), record)
    except checkpoints.CheckpointUnusable as exc:
        raise UserError(f"--from-checkpoint: the {exc}; run `hpo retrain` and export without it") from None
    return Winner(trial, None), payload


def find_winner(study: optuna.Study, spec: StudySpec) -> Winner:
    record = retrain.recorded(study)
    if record:
        number = record.winner.trial
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        if trial is not None:
            return Winner(trial, record)
    try:
        return Winner(study.best_trial, None)
    except ValueError:
        raise UserError(f"study {spec.name!r} has no completed trial yet; nothing to export") from None


def best_spec(spec: StudySpec, winner: Winner) -> StudySpec:
    """The study with the winner's parameters fixed, as its own one-trial study retrained as it was."""
    settings = spec.retrain.model_copy(update={"top_k": 1})
    if winner.record:
        plan = winner.record.plan
        settings = settings.model_copy(update={"seeds": list(plan.seeds), "train_on": plan.train_on})
    return spec.with_fixed(winner.trial.params).model_copy(
        update={"name": f"{spec.name}-best", "n_trials": 1, "timeout": None, "retrain": settings}
    )


def best_yaml(spec: StudySpec, winner: Winner) -> str:
    document = best_spec(spec, winner).model_dump(mode="json")
    document["pruner"] = {"type": "none"}
    if storage.mask_url(spec.storage) != spec.storage:
        document.pop("storage")  # never write a password to disk; HPO_STORAGE supplies it
    trial = winner.trial
    chosen = ""
    if winner.record and len(winner.record.selection) > 1:
        chosen = f"; chosen by hpo retrain as the best mean of the top {len(winner.record.selection)}"
    header = (
        f"# Winner: trial #{trial.number} of study {spec.name!r}, {spec.metric} = {trial.value:.4f} on validation{chosen}.\n"
        f"# Re-run it with: hpo launch <this file>; then `hpo retrain <this file>` retrains and tests it.\n"
    )
    return header + dump_yaml(document)


def _transformers_major() -> int | None:
    """The installed transformers' major version, read without importing it (that would import torch)."""
    try:
        return int(importlib.metadata.version("transformers").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def ran_on_cpu(trial: FrozenTrial) -> bool:
    return str(trial.user_attrs.get("device", "")).split(":")[0] == "cpu"


def training_arguments(spec: StudySpec, winner: Winner) -> dict[str, Any]:
    """The winner as ``TrainingArguments(output_dir=..., **doc["training_arguments"])`` plus what Trainer lacks."""
    params = retrain.params_of(spec, winner.trial)
    record = winner.record
    epochs, seed, notes = float(params.epochs), spec.seed, []
    if record:
        seed = record.model.seed
        if record.plan.train_on == "train+validation":
            epochs = record.winner.best_epoch
            notes.append("num_train_epochs is where the winner peaked on validation: retraining on train+validation "
                         "stops there, with the learning-rate schedule ending there too")
        else:
            notes.append("the exported model kept each run's best validation point; with Trainer use "
                         "eval_strategy and load_best_model_at_end")
    major = _transformers_major()
    arguments: dict[str, Any] = {
        "learning_rate": params.learning_rate,
        "per_device_train_batch_size": params.batch_size,
        "per_device_eval_batch_size": spec.evaluation.batch_size,
        "num_train_epochs": epochs,
        "weight_decay": params.weight_decay,
        "lr_scheduler_type": params.lr_scheduler,
        "max_grad_norm": params.max_grad_norm,
        "seed": seed,
    }
    if winner.trial.user_attrs.get("precision") == "bf16":  # the search picked bf16 autocast on this hardware
        arguments["bf16"] = True
    if ran_on_cpu(winner.trial):
        # Where the search ran: TrainingArguments refuses bf16 on a host without a GPU unless told to use the CPU.
        arguments["use_cpu"] = True
        notes.append("the search ran on a CPU" + (" in bf16 autocast" if arguments.get("bf16") else "")
                     + ": use_cpu reproduces it there; on a GPU remove use_cpu"
                     + (" and keep bf16 only where the GPU supports it (Ampere or newer)" if arguments.get("bf16") else ""))
    if major is not None and major >= 5:  # TrainingArguments renamed these in transformers 5
        arguments["warmup_steps"] = params.warmup_ratio  # a float below 1 is a ratio of the steps
        arguments["train_sampling_strategy"] = "group_by_length" if spec.data.grouped_by_length else "random"
    else:
        arguments["warmup_ratio"] = params.warmup_ratio
        arguments["group_by_length"] = spec.data.grouped_by_length
    adapter = adapter_settings(spec, winner)
    if adapter:
        notes.append("adapter: the LoRA adapter as peft.LoraConfig keyword arguments; the base stays frozen, "
                     "freeze_depth k keeps adapters out of the bottom k layers")
    else:
        notes.append("freeze_depth k: freeze the embeddings and the bottom k transformer layers (requires_grad=False)")
    expressed = {"learning_rate", "batch_size", "epochs", "weight_decay", "lr_scheduler", "max_grad_norm", "warmup_ratio", "freeze_depth"}
    return {
        "training_arguments": arguments,
        "freeze_depth": params.freeze_depth,
        **({"adapter": adapter} if adapter else {}),
        # Knobs of the winner that TrainingArguments does not take as they are (set them on the model or loop).
        "other_hyperparameters": {k: v for k, v in params.as_dict().items() if k not in expressed and not k.startswith("lora_")},
        "model": spec.model,
        "max_length": spec.data.max_length,
        "for_transformers": f"{major}.x" if major else None,
        "notes": notes,
    }


def adapter_settings(spec: StudySpec, winner: Winner) -> dict[str, Any] | None:
    """The winner's adapter as ``peft.LoraConfig(**settings)`` takes it, with the module names resolved
    for this model (as the trial recorded them), or None for full fine-tuning."""
    if spec.adapter.type == "none":
        return None
    params = retrain.params_of(spec, winner.trial)
    recorded = winner.trial.user_attrs.get("adapter") or {}
    return {
        "type": spec.adapter.type,
        "r": params.lora_r,
        "lora_alpha": params.lora_scale_alpha,
        "lora_dropout": params.lora_dropout,
        "target": params.lora_target,
        "target_modules": recorded.get("target_modules"),
        "modules_to_save": recorded.get("trained_head_modules"),
        "skipped_bottom_layers": params.freeze_depth,
    }


def metrics_document(spec: StudySpec, winner: Winner) -> dict[str, Any]:
    trial, record = winner.trial, winner.record
    measured = TrialRecord.of(trial)
    document: dict[str, Any] = {
        "study": spec.name,
        "metric": spec.metric,
        "direction": spec.direction,
        "winner_trial": trial.number,
        "params": trial.params,
        "validation": {
            "search": {
                "value": trial.value,
                "best_examples": measured.best_examples if measured else None,
                "best_epoch": measured.best_epoch if measured else None,
                "metrics": measured.best_metrics if measured else None,
            },
        },
        "test": None,
    }
    if record:
        document["validation"]["selection"] = [c.model_dump(mode="json") for c in record.selection]
        if record.plan.train_on == "train":
            document["validation"]["retrained"] = [{"seed": s.seed, **(s.validation or {})} for s in record.seeds]
        document["test"] = {
            "examples": record.test.examples,
            "per_seed": [{"seed": s.seed, **s.test} for s in record.seeds],
            "mean": record.test.mean,
            "std": record.test.std,
            "std_kind": "sample standard deviation over seeds",
            "model_seed": record.model.seed,
        }
        document["retrained_on"] = record.trained_on.model_dump(mode="json")
    return document


def model_folder(winner: Winner) -> Path | None:
    """The retrained model to copy, or None before any retrain; an error if it is recorded but not here."""
    record = winner.record
    if not record:
        return None
    if not retrain.model_is_present(record):
        model = record.model
        raise UserError(
            f"the retrained model recorded on the study ({model.path}, written on {model.host} at "
            f"{record.finished_at}) is not here or was replaced since; export on that machine or run "
            f"`hpo retrain --force` here"
        )
    return Path(record.model.path)


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; give a new folder, or a path ending .yaml for the study file alone")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in ENTRIES)
        if foreign:
            raise UserError(f"{target} holds files that are not part of an export ({', '.join(foreign[:3])}); give a new folder")


def _reason(exc: OSError) -> str:
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        source, _, why = exc.args[0][0]
        return f"copying {source}: {why}"
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def write_folder(target: Path, files: dict[str, str], model: Path | Callable[[Path], None] | None,
                 merge: Callable[[Path, Path], None] | None = None) -> None:
    """Stage every file beside ``target``, then swap the folder in whole.

    ``model`` is a folder to copy (the retrained model) or a function that
    writes one (the kept checkpoint, ``--from-checkpoint``). ``merge(adapter_dir,
    out_dir)``, given with an adapter model, writes the adapter folded into its
    base as ``merged/`` (the objective does that model work).
    """
    _check_target(target)
    staging = None
    try:
        staging = atomic.staging_dir(target)
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if callable(model):
            model(staging / "model")
        elif model is not None:
            shutil.copytree(model, staging / "model", ignore=shutil.ignore_patterns(retrain.RUN_FILE))
        if model is not None:
            if merge is not None:
                merge(staging / "model", staging / "merged")
        atomic.replace_dir(staging, target)
    except OSError as exc:
        raise UserError(f"cannot write the export to {target}: {_reason(exc)}; any previous export there is unchanged") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def export_folder(target: Path, spec: StudySpec, study: optuna.Study, winner: Winner,
                  merge: Callable[[Path, Path], None] | None = None,
                  kept: Callable[[Path], None] | None = None) -> Path | Callable[[Path], None] | None:
    """Write the whole export; returns the model folder copied (or its writer), or None when there is none yet.

    ``kept`` writes the winner's own weights from the search (``--from-checkpoint``) in
    place of a retrained model; the winner is then the trial whose state was kept.
    """
    model = kept or model_folder(winner)
    if merge is not None and spec.adapter.type == "none":
        raise UserError("--merge folds an adapter into its base; this study fine-tunes the whole model (adapter.type none)")
    if merge is not None and model is None:
        raise UserError("--merge needs the retrained adapter: run `hpo retrain` first, or export --from-checkpoint")
    args = training_arguments(spec, winner)
    metrics = metrics_document(spec, winner)
    files = {
        "best.yaml": best_yaml(spec, winner),
        "training_args.json": json.dumps(args, indent=2) + "\n",
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "README.md": modelcard.render(spec, study, winner.trial, winner.record, from_checkpoint=kept is not None),
    }
    write_folder(target, files, model, merge)
    return model
