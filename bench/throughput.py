"""Goal 1: training throughput of hpo's trial loop against a plain PyTorch loop.

    python bench/throughput.py [--train 256] [--max-length 128] [--batch-size 16] [--repeats 3] [--threads 1]

Same model (a fresh copy of the demo MiniLM-L6 for every run, made before the
clock starts), same training examples, same batches in the same order, same
per-batch padding, one epoch, no evaluation. The two loops run alternately,
``--repeats`` times each, and the table gives examples per second and the
ratio hpo / plain for each pair, then the median ratio. Goal: >= 0.95.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import demo_study, fresh, median, plain_loop, quiet, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    quiet(args.threads)

    import torch

    from objectives import build

    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_study(f"sqlite:///{tmp}/bench.db", train=args.train, max_length=args.max_length)
        objective = build(spec)
    print(f"{len(objective.train)} reviews, max_length {args.max_length}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    rows, ratios = compare(objective, spec.seed, args.batch_size, args.repeats)
    print()
    print(table(["pair", "plain ex/s", "hpo ex/s", "hpo / plain"], rows))
    print(f"\nmedian hpo / plain: {median(ratios):.3f} (goal >= 0.95)")


def compare(objective, seed: int, batch_size: int, repeats: int, watch=None):
    """Alternate hpo's loop and the plain loop; rows of (pair, plain ex/s, hpo ex/s, ratio).

    ``watch(name)`` is an optional context manager around each run (GPU sampling).
    """
    import contextlib

    import numpy as np
    import torch

    from hpo.params import TrainingParams
    from objectives.training import batch_order

    watch = watch or (lambda name: contextlib.nullcontext())
    params = TrainingParams(learning_rate=1e-4, batch_size=batch_size, epochs=1, freeze_depth=0, warmup_ratio=0.1)
    train = objective.train
    batches = batch_order(train.lengths, batch_size, np.random.default_rng(seed), True)
    n = len(train)

    def sync() -> None:
        if objective.runtime.device.type == "cuda":
            torch.cuda.synchronize()

    def run_hpo() -> float:
        model = fresh(objective)
        sync()
        with watch("hpo"):
            start = time.perf_counter()
            result = objective.train_model(model, params, seed)
            sync()
            seconds = time.perf_counter() - start
        if result.examples_seen != n:
            raise RuntimeError(f"hpo's loop saw {result.examples_seen} examples, not {n}")
        return seconds

    def run_plain() -> float:
        model = fresh(objective)
        torch.manual_seed(seed)
        sync()
        with watch("plain"):
            return plain_loop(model, train, batches, params.learning_rate, params.epochs, runtime=objective.runtime)

    run_plain()  # warm-up: first-touch allocations and kernel selection, not counted
    rows, ratios = [], []
    for repeat in range(repeats):
        order = (("plain", run_plain), ("hpo", run_hpo)) if repeat % 2 == 0 else (("hpo", run_hpo), ("plain", run_plain))
        seconds = {name: fn() for name, fn in order}
        ratio = seconds["plain"] / seconds["hpo"]
        ratios.append(ratio)
        rows.append([repeat + 1, f"{n / seconds['plain']:.1f}", f"{n / seconds['hpo']:.1f}", f"{ratio:.3f}"])
        print(rows[-1], flush=True)
    return rows, ratios

if __name__ == "__main__":
    main()
