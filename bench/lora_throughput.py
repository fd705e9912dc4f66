"""LoRA throughput: hpo's trial loop on a LoRA model against a plain PEFT + PyTorch loop.

    python bench/lora_throughput.py [--train 256] [--max-length 64] [--batch-size 16] [--repeats 3] [--threads 1]
                                    [--rank 8] [--target all-linear]

The same demo MiniLM-L6 and the same LoRA config on both sides (target
modules, rank, alpha = 2 x rank, dropout 0.05, the head trained as PEFT's
``modules_to_save``), the same adapter initialisation seed, the same
training examples in the same batches in the same order with the same
per-batch padding, AdamW at the same rate with the same linear warmup and
decay, one epoch, no evaluation. hpo: ``objective.new_model`` (a fresh adapter
on the worker's shared base, made before the clock starts), then
``objective.train_model``, then ``release``. Plain: ``get_peft_model`` on a
copy of the base (made once, before any clock; a fresh adapter each run),
then ``common.plain_loop`` (forward, backward, step, as the PEFT docs write
it). The two alternate (ABAB), ``--repeats`` times each, after one warm-up
run; the table gives examples per second and the ratio hpo / plain per
pair, by the wall clock and by this process's CPU time (with one torch
thread the CPU time is far less swayed by other processes on a shared
machine than the wall clock is), then the median ratios. Goal: >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

from common import lora_study, median, plain_loop, quiet, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--target", default="all-linear", choices=["attention", "mlp", "all-linear"])
    args = parser.parse_args()
    quiet(args.threads)

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from hpo.params import TrainingParams
    from objectives import build, compat
    from objectives.adapters import targets
    from objectives.batching import batch_order

    space = {"learning_rate": 1.0e-3, "batch_size": args.batch_size, "epochs": 1, "warmup_ratio": 0.1,
             "lora_r": args.rank, "lora_alpha_ratio": 2, "lora_dropout": 0.05, "lora_target": args.target}
    with tempfile.TemporaryDirectory() as tmp:
        spec = lora_study(f"sqlite:///{tmp}/bench.db", train=args.train, max_length=args.max_length, search_space=space)
        objective = build(spec)
    params = TrainingParams.from_values(space)
    seed, train, n = spec.seed, objective.train, len(objective.train)
    batches = batch_order(train.lengths, args.batch_size, np.random.default_rng(seed), spec.data.group_by_length)
    heads = objective.models.heads
    plain_base = copy.deepcopy(objective.pretrained.model)  # the peer's own base, made once
    names = [t.name for t in targets(plain_base, args.target)]
    print(f"{n} reviews, max_length {args.max_length}, batch {args.batch_size}, LoRA r={args.rank} {args.target} "
          f"({len(names)} layers), torch threads {torch.get_num_threads()}, precision {objective.runtime.precision}")

    def run_hpo() -> tuple[float, float]:
        model = objective.new_model(params, seed)
        start, cpu = time.perf_counter(), time.process_time()
        result = objective.train_model(model, params, seed)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        objective.release(model)
        if result.examples_seen != n:
            raise RuntimeError(f"hpo's loop saw {result.examples_seen} examples, not {n}")
        return seconds, cpu

    def run_plain() -> tuple[float, float]:
        config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=names,
                            modules_to_save=heads, bias="none")
        torch.manual_seed(seed)
        model = get_peft_model(plain_base, config)
        for name in objective.pretrained.head_modules:
            for module in compat.trainable_copy(model, name).modules():
                compat.init_module(plain_base, module)
        torch.manual_seed(seed)
        cpu = time.process_time()
        seconds = plain_loop(model, train, batches, params.learning_rate, params.epochs, runtime=objective.runtime)
        cpu = time.process_time() - cpu
        model.unload()  # the next run starts from the plain base again
        return seconds, cpu

    run_plain()  # warm-up: first-touch allocations, not counted
    rows, ratios, cpu_ratios = [], [], []
    for repeat in range(args.repeats):
        order = (("plain", run_plain), ("hpo", run_hpo)) if repeat % 2 == 0 else (("hpo", run_hpo), ("plain", run_plain))
        seconds = {name: fn() for name, fn in order}
        (wall_plain, cpu_plain), (wall_hpo, cpu_hpo) = seconds["plain"], seconds["hpo"]
        ratios.append(wall_plain / wall_hpo)
        cpu_ratios.append(cpu_plain / cpu_hpo)
        rows.append([repeat + 1, order[0][0], f"{n / wall_plain:.1f}", f"{n / wall_hpo:.1f}", f"{ratios[-1]:.3f}",
                     f"{n / cpu_plain:.1f}", f"{n / cpu_hpo:.1f}", f"{cpu_ratios[-1]:.3f}"])
        print(rows[-1], flush=True)
    print()
    print(table(["pair", "first", "plain PEFT ex/s", "hpo ex/s", "hpo / plain", "plain ex/CPU-s", "hpo ex/CPU-s",
                 "hpo / plain (CPU time)"], rows))
    print(f"\nmedian hpo / plain: {median(ratios):.3f} wall clock, {median(cpu_ratios):.3f} CPU time (goal >= 0.95)")


if __name__ == "__main__":
    main()
