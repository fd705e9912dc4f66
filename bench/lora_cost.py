"""What a LoRA training example costs against a full fine-tuning one, in hpo's own loop.

    python bench/lora_cost.py [--train 128] [--max-length 128] [--batch-size 16] [--repeats 4] [--threads 1]

Two objectives in one process on the same demo data (MiniLM-L6, the demo's
``max_length`` 128 by default): full fine-tuning (a fresh copy of the model,
nothing frozen) and LoRA (a fresh adapter, r=8 on all linear layers, alpha 16,
dropout ``--lora-dropout``),
each trained one epoch with ``objective.train_model`` on the same batches,
no evaluation. They alternate (ABAB) after one warm-up each; the table gives
training examples per CPU-second of this process (with one torch thread, far
steadier on a shared machine than the wall clock) and per wall second, and
the ratio LoRA / full. This is the compute side of quality per compute: the
demo studies' trials differ in the space they search, this is what an example
costs each.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import demo_study, lora_study, median, quiet, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="runtime.precision of both")
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    args = parser.parse_args()
    quiet(args.threads)

    import torch

    from hpo.params import TrainingParams
    from objectives import build

    common = {"learning_rate": 1.0e-4, "batch_size": args.batch_size, "epochs": 1, "warmup_ratio": 0.1}
    lora_space = {**common, "lora_r": 8, "lora_alpha_ratio": 2, "lora_dropout": args.lora_dropout, "lora_target": "all-linear"}
    runtime = {"precision": args.precision} if args.precision != "auto" else None
    with tempfile.TemporaryDirectory() as tmp:
        full = build(demo_study(f"sqlite:///{tmp}/a.db", train=args.train, max_length=args.max_length,
                                search_space={**common, "freeze_depth": 0}, runtime=runtime))
        lora = build(lora_study(f"sqlite:///{tmp}/b.db", train=args.train, max_length=args.max_length,
                                search_space=lora_space, runtime=runtime))
    runs = {"full": (full, TrainingParams.from_values({**common, "freeze_depth": 0})),
            "lora": (lora, TrainingParams.from_values(lora_space))}
    n = len(full.train)
    print(f"{n} reviews, max_length {args.max_length}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"precision {full.runtime.precision}, LoRA dropout {args.lora_dropout}")

    def run(kind: str) -> tuple[float, float, float]:
        objective, params = runs[kind]
        model = objective.new_model(params, 0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        start, cpu = time.perf_counter(), time.process_time()
        objective.train_model(model, params, 0)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        objective.release(model)
        return wall, cpu, trainable / total

    run("full"), run("lora")  # warm-up
    rows, cpu_ratios, wall_ratios = [], [], []
    for repeat in range(args.repeats):
        order = ("full", "lora") if repeat % 2 == 0 else ("lora", "full")
        got = {kind: run(kind) for kind in order}
        cpu_ratios.append(got["full"][1] / got["lora"][1])
        wall_ratios.append(got["full"][0] / got["lora"][0])
        rows.append([repeat + 1, order[0], f"{n / got['full'][1]:.1f}", f"{n / got['lora'][1]:.1f}", f"{cpu_ratios[-1]:.2f}",
                     f"{n / got['full'][0]:.1f}", f"{n / got['lora'][0]:.1f}", f"{wall_ratios[-1]:.2f}"])
        print(rows[-1], flush=True)
    fraction = got["lora"][2]
    print()
    print(table(["pair", "first", "full ex/CPU-s", "LoRA ex/CPU-s", "LoRA speed-up (CPU)", "full ex/s", "LoRA ex/s",
                 "LoRA speed-up (wall)"], rows))
    print(f"\nLoRA trains {median(cpu_ratios):.2f}x as many examples per CPU-second as full fine-tuning "
          f"({median(wall_ratios):.2f}x by the wall clock), training {100 * fraction:.2f}% of the weights")


if __name__ == "__main__":
    main()
