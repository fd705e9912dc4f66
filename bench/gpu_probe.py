"""Where a GPU step's time goes: hpo's loop against what the same model could do.

    python bench/gpu_probe.py [--train 4000] [--batch-size 32] [--profile-steps 20]

bench/gpu.py found hpo's loop 1.7x faster than a hand-written one on an H100 but
the GPU busy only ~30% of the time. This probe separates the causes, on the
same BERT-base, data and batch size as gpu.py (needs a CUDA GPU):

- hpo's loop as shipped (batches copied through pinned memory);
- hpo's loop with the batch copy from pageable memory (the code before the fix),
  where CUDA makes the CPU wait for the GPU at every batch;
- a ceiling: the same epoch's batches copied to the GPU before the clock starts,
  the same forward, backward, clipping and fused AdamW step in a bare loop (no
  data path, no scheduler, no bookkeeping);
- the ceiling at twice the batch: if examples/s nearly doubles, a step is bound
  by fixed per-kernel launch cost on the CPU, not by the GPU's arithmetic;

then a torch.profiler table of hpo's loop: the top operators by CPU time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import demo_study, fresh, quiet, table
from gpu import GpuWatch, write_data, write_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="2-layer model on the CPU: checks the script runs")
    args = parser.parse_args()
    if args.tiny:
        args.train, args.profile_steps = 128, 4
    quiet(0)
    import torch

    import objectives.training as training
    from hpo.params import TrainingParams
    from objectives import build

    watch = GpuWatch()
    vocab = 30000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = {
            "source": "csv", "train": str(write_data(folder, args.train, vocab, 0, "train")),
            "validation": str(write_data(folder, 200, vocab, 1, "validation")),
            "text_column": "text", "label_column": "label",
        }
        spec = demo_study(
            f"sqlite:///{folder / 'probe.db'}", model=str(write_model(folder / "model", args.tiny, vocab)), data=data,
            train=args.train, validation=200, max_length=args.max_length, pruner={"type": "none"},
            search_space={"learning_rate": 5e-5, "batch_size": args.batch_size, "epochs": 1, "freeze_depth": 0},
        )
        objective = build(spec)
    runtime = objective.runtime
    cuda = runtime.device.type == "cuda"
    params = TrainingParams(learning_rate=5e-5, batch_size=args.batch_size, epochs=1, freeze_depth=0, warmup_ratio=0.1)
    n = len(objective.train)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def hpo_loop() -> float:
        model = fresh(objective)
        sync()
        start = time.perf_counter()
        objective.train_model(model, params, 0)
        sync()
        return n / (time.perf_counter() - start)

    def pageable(array, device):
        return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)

    def hpo_loop_pageable() -> float:
        shipped = training.to_device
        training.to_device = pageable
        try:
            return hpo_loop()
        finally:
            training.to_device = shipped

    def ceiling(batch_size: int):
        """The epoch's batches (same grouping as hpo's loop) copied to the GPU before the clock starts."""
        def run() -> float:
            model = fresh(objective).to(runtime.device).train()
            order = training.batch_order(objective.train.lengths, batch_size, np.random.default_rng(0), True)
            batches = [objective.train.batch(indices, runtime.device) for indices in order]
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=cuda)
            sync()
            start = time.perf_counter()
            for batch in batches:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                with torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None):
                    logits = model(**inputs).logits
                torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sync()
            return n / (time.perf_counter() - start)
        return run

    variants = {
        "hpo loop (pinned copies, shipped)": hpo_loop,
        "hpo loop (pageable copies, before)": hpo_loop_pageable,
        f"ceiling: batches of {args.batch_size} already on the GPU": ceiling(args.batch_size),
        f"ceiling: batches of {2 * args.batch_size} already on the GPU": ceiling(2 * args.batch_size),
    }
    hpo_loop()  # warm-up: kernel selection and allocator growth
    results = {name: [] for name in variants}
    for repeat in range(2):
        for name, fn in (variants.items() if repeat % 2 == 0 else reversed(variants.items())):
            with watch(name):
                results[name].append(fn())
            print(name, f"{results[name][-1]:.1f} ex/s", flush=True)
    base = max(results["hpo loop (pinned copies, shipped)"])
    rows = [[name, f"{max(v):.0f}", f"{max(v) / base:.2f}", watch.mean(name)] for name, v in results.items()]
    print(f"\nBERT-{'tiny' if args.tiny else 'base'}, {n} examples, max_length {args.max_length}, "
          f"{'bf16 autocast' if runtime.autocast_dtype is not None else 'fp32'}, best of 2\n")
    print(table(["loop", "examples/s", "vs hpo (shipped)", "GPU busy"], rows))

    from torch.profiler import ProfilerActivity, profile

    model = fresh(objective)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        objective.train_model(model, params, 0, max_examples=args.profile_steps * args.batch_size)
        sync()
    print(f"\nProfile of {args.profile_steps} steps of hpo's loop (top operators by CPU time)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))


if __name__ == "__main__":
    main()
