"""What every benchmark shares: the demo study at a chosen size, and a plain PyTorch loop.

The benchmarks measure variants side by side in one process and report ratios,
because the machines they run on are shared and noisy.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def demo_study(storage: str, **options: Any):
    """The demo study (MiniLM-L6 on fine-food reviews), resized for a benchmark."""
    from hpo.spec import parse_spec

    return parse_spec(demo_study_file(storage, **options))


def demo_study_file(
    storage: str,
    *,
    name: str = "bench",
    n_trials: int = 8,
    train: int = 300,
    validation: int = 150,
    max_length: int = 64,
    seed: int = 0,
    sampler: dict[str, Any] | None = None,
    pruner: dict[str, Any] | None = None,
    points_per_epoch: int = 2,
    search_space: dict[str, Any] | None = None,
    model: str = "demo",
    data: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a study.yaml for that study holds, for benchmarks that run ``hpo launch`` as users do."""
    return {
        **({"runtime": runtime} if runtime else {}),
        "name": name, "storage": storage, "n_trials": n_trials, "seed": seed, "model": model,
        "metric": "accuracy",
        "data": {
            "source": "demo", "text_column": "review", "label_column": "score", "validation_fraction": 0.1,
            **(data or {}),
            "max_length": max_length, "max_train_samples": train, "max_validation_samples": validation,
        },
        "sampler": sampler or {"type": "tpe", "n_startup_trials": 5},
        "pruner": pruner or {"type": "median", "n_startup_trials": 3, "n_warmup_steps": train // 2},
        "evaluation": {"points_per_epoch": points_per_epoch},
        "search_space": search_space or {
            "learning_rate": {"low": 2.0e-5, "high": 3.0e-4, "log": True},
            "batch_size": {"choices": [16, 32]},
            "epochs": {"low": 1, "high": 2},
            "freeze_depth": {"low": 0, "high": 4},
            "warmup_ratio": 0.1,
        },
    }


def plain_loop(model, batcher, batches, learning_rate: float, epochs: int, warmup_ratio: float = 0.1, runtime=None) -> float:
    """The loop people write by hand: pad each batch, forward, backward, step. Returns seconds.

    Same batches (indices) and the same per-batch padding as hpo's loop, so the
    two differ only in what hpo adds around the steps.
    """
    import torch
    from transformers import get_scheduler

    device = runtime.device if runtime else torch.device("cpu")
    dtype = runtime.autocast_dtype if runtime else None
    pad = batcher.pad
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, fused=device.type == "cuda")
    total = len(batches) * epochs
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(warmup_ratio * total), num_training_steps=total)
    start = time.perf_counter()
    for _ in range(epochs):
        for indices in batches:
            width = max(len(batcher.inputs["input_ids"][i]) for i in indices)
            inputs = {
                column: torch.tensor([list(rows[i]) + [pad[column]] * (width - len(rows[i])) for i in indices])
                for column, rows in batcher.inputs.items()
            }
            inputs["labels"] = torch.as_tensor(batcher.labels[indices])
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def fresh(objective, freeze_depth: int = 0, seed: int = 0):
    from hpo.params import TrainingParams

    params = TrainingParams(learning_rate=1e-4, batch_size=16, epochs=1, freeze_depth=freeze_depth)
    return objective.new_model(params, seed)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, ready to paste into docs/benchmarks.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def quiet(threads: int = 1) -> None:
    """Quiet logs; one torch thread by default, because oversubscribed threads on a
    shared 2-core machine make timings swing far more than the effects we measure."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("objectives").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if threads:
        import torch

        torch.set_num_threads(threads)


deepcopy = copy.deepcopy


def run_study(spec, objective):
    """Run a study to its budget in this process; return (wall seconds, finished trials)."""
    import optuna

    from hpo.runner import WorkerOptions, run_worker

    start = time.perf_counter()
    run_worker(spec, objective, WorkerOptions())
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).get_trials(deepcopy=False)
    return wall, [t for t in trials if t.state.is_finished()]


def best_value(trials) -> float:
    values = [t.value for t in trials if t.value is not None]
    return max(values) if values else float("nan")


def lora_study_file(storage: str, **options: Any) -> dict[str, Any]:
    """The demo study file with ``adapter: lora`` (pass a LoRA ``search_space``)."""
    return {**demo_study_file(storage, **options), "adapter": {"type": "lora"}}


def lora_study(storage: str, **options: Any):
    """The demo study with ``adapter: lora``, resized for a benchmark."""
    from hpo.spec import parse_spec

    return parse_spec(lora_study_file(storage, **options))
