"""Issue 16: tokens/s of hpo's causal-lm loop against a plain PyTorch + PEFT loop, and what packing buys.

    python bench/sft_throughput.py [--train 160] [--validation 60] [--max-length 128] [--batch-size 8] [--repeats 3] [--threads 1]

The tiny pre-trained decoder and the review prompt/completion rows of
``bench/sft_peer.py`` (``common.tiny_decoder_base``, ``common.sft_files``),
LoRA r=8 (alpha 16, dropout 0.05, all linear layers) on the frozen base, fp32.

1. Loops. Both runs get a fresh adapter from hpo's ``new_model`` (the same
   seed, so the same initial weights), the same packed rows in the same
   batches in the same order (``batch_order`` with the run's seed), AdamW on
   the adapter's parameters, linear warmup (10%) and decay, gradient clipping
   at 1.0, one epoch, no evaluation. The plain loop is what people write:
   ``model(**batch, labels=labels).loss``, backward, clip, step. They run
   alternately, ``--repeats`` times each, after one warm-up run of the plain
   loop. Tokens/s count the real (non-padding) tokens of the rows. Goal: >= 0.95.
   A third run is the plain loop with hpo's loss function (``head.loss`` on
   the logits) in place of the model's own loss: it tells the loss function's
   share of any gap from the rest of hpo's loop.
2. Packing. The same trial (learning rate 1e-3, the same batch size, one
   epoch) with ``data.packing: true`` and ``false``, alternately: training
   tokens/s (evaluation excluded) and the best validation loss (token-mean
   over completion tokens, two points in the epoch). ``batch_size`` counts
   packed rows when packing, examples when not, so the packed run takes fewer,
   larger optimizer steps; the table gives both step counts.
   ``--padded-batch-size`` gives the padded run its own batch size, to
   compare at about the same examples per optimizer step.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import median, quiet, sft_files, table, tiny_decoder_base


def study(storage: str, args, packing: bool) -> dict:
    batch_size = args.batch_size if packing else (args.padded_batch_size or args.batch_size)
    files, model = sft_files(args.train, args.validation), tiny_decoder_base()
    return {
        "name": f"sft-throughput-{packing}", "storage": storage, "n_trials": 1, "seed": 0, "model": str(model),
        "task": "causal-lm", "metric": "loss", "adapter": {"type": "lora"},
        "data": {"source": "json", "train": str(files["train"]), "validation": str(files["validation"]),
                 "format": "prompt-completion", "max_length": args.max_length, "packing": packing},
        "runtime": {"precision": "fp32", "num_threads": args.threads},
        "search_space": {"learning_rate": 1.0e-3, "batch_size": batch_size, "epochs": 1, "lora_r": 8,
                         "lora_alpha_ratio": 2.0, "lora_dropout": 0.05, "warmup_ratio": 0.1},
    }


def build(args, packing: bool, tmp: str):
    from hpo.spec import parse_spec
    from objectives import build as build_objective

    spec = parse_spec(study(f"sqlite:///{tmp}/{packing}.db", args, packing))
    return spec, build_objective(spec)


def plain_peft_loop(model, train, batches, params, seed: int, loss_fn=None) -> float:
    """The loop people write around a PEFT model: the model's own loss, AdamW, clip, step. Seconds.

    ``loss_fn(logits, labels)``: the loss from the logits instead (to time hpo's loss function alone)."""
    import torch
    from transformers import get_scheduler, set_seed

    set_seed(seed)
    device = torch.device("cpu")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(params.warmup_ratio * len(batches)),
                              num_training_steps=len(batches))
    start = time.perf_counter()
    for indices in batches:
        batch = train.batch(indices, device)
        if loss_fn is None:
            loss = model(**batch).loss
        else:
            labels = batch.pop("labels")
            loss = loss_fn(model(**batch).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def compare_loops(objective, seed: int, repeats: int):
    import numpy as np

    from objectives.batching import batch_order

    params = _params(objective)
    train = objective.train
    tokens = int(train.lengths.sum())

    def run_hpo() -> float:
        model = objective.new_model(params, seed)
        start = time.perf_counter()
        result = objective.train_model(model, params, seed)
        seconds = time.perf_counter() - start
        objective.release(model)
        if result.examples_seen != int(train.units.sum()):
            raise RuntimeError(f"hpo's loop saw {result.examples_seen} completion tokens, not {int(train.units.sum())}")
        return seconds

    def run_plain(loss_fn=None) -> float:
        model = objective.new_model(params, seed)
        batches = batch_order(train.lengths, params.batch_size, np.random.default_rng(seed), objective.spec.data.group_by_length)
        seconds = plain_peft_loop(model, train, batches, params, seed, loss_fn)
        objective.release(model)
        return seconds

    def run_plain_hpo_loss() -> float:
        return run_plain(objective.task.head.loss)

    run_plain()  # warm-up, not counted
    rows, ratios = [], []
    runs = [("plain", run_plain), ("hpo", run_hpo), ("plain, hpo's loss", run_plain_hpo_loss)]
    for repeat in range(repeats):
        order = runs if repeat % 2 == 0 else runs[::-1]
        seconds = {name: fn() for name, fn in order}
        ratios.append(seconds["plain"] / seconds["hpo"])
        rows.append([repeat + 1, f"{tokens / seconds['plain']:.0f}", f"{tokens / seconds['hpo']:.0f}", f"{ratios[-1]:.3f}",
                     f"{tokens / seconds[runs[2][0]]:.0f}", f"{seconds['plain'] / seconds[runs[2][0]]:.3f}"])
        print(rows[-1], flush=True)
    return rows, ratios


def _params(objective):
    from hpo.params import TrainingParams

    values = {name: getattr(dim, "value", dim) for name, dim in objective.spec.search_space.items()}
    return TrainingParams.from_values(values)


def compare_packing(objectives: dict, seed: int, repeats: int):
    """The same trial packed and padded: training tokens/s and the best validation loss."""
    import math

    rows, ratios, losses = [], [], {}
    for repeat in range(repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        speed = {}
        for packing in order:
            objective = objectives[packing]
            params = _params(objective)
            model = objective.new_model(params, seed)
            result = objective.train_model(model, params, seed, validation=objective.validation)
            objective.release(model)
            speed[packing] = int(objective.train.lengths.sum()) / result.train_seconds
            losses[packing] = result.best.metrics["loss"]
        ratios.append(speed[True] / speed[False])
        steps = {p: math.ceil(len(objectives[p].train) / _params(objectives[p]).batch_size) for p in (True, False)}
        rows.append([repeat + 1, f"{speed[True]:.0f}", f"{speed[False]:.0f}", f"{ratios[-1]:.2f}", f"{losses[True]:.4f}",
                     f"{losses[False]:.4f}", f"{steps[True]} / {steps[False]}"])
        print(rows[-1], flush=True)
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--padded-batch-size", type=int, help="the padded run's batch size (default --batch-size); "
                        "e.g. --batch-size 3 --padded-batch-size 8: about as many examples per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--only", choices=["loops", "packing"], help="run one of the two comparisons")
    args = parser.parse_args()
    quiet(args.threads)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        packed = build(args, True, tmp)[1]
        unpacked = build(args, False, tmp)[1] if args.only != "loops" else None
    rows_per_packed = len(packed.train.ids) / len(packed.train)
    print(f"{len(packed.train.ids)} examples in {len(packed.train)} packed rows of <= {args.max_length} tokens "
          f"({rows_per_packed:.1f} per row), {int(packed.train.lengths.sum())} tokens, "
          f"{int(packed.train.units.sum())} completion tokens; batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    if args.only != "packing":
        rows, ratios = compare_loops(packed, 0, args.repeats)
        print()
        print(table(["round", "plain PyTorch + PEFT tokens/s", "hpo tokens/s", "hpo / plain",
                     "plain with hpo's loss function tokens/s", "that / plain"], rows))
        print(f"\nmedian hpo / plain: {median(ratios):.3f} (goal >= 0.95)\n")
    if args.only != "loops":
        rows, ratios = compare_packing({True: packed, False: unpacked}, 0, args.repeats)
        print()
        print(table(["pair", "packed tokens/s", "padded tokens/s", "packed / padded", "packed best loss",
                     "padded best loss", "optimizer steps packed / padded"], rows))
        print(f"\nmedian packed / padded tokens/s: {median(ratios):.2f}")


if __name__ == "__main__":
    main()
