"""bf16 autocast against fp32 on the CPU: what it buys in speed, and whether it costs accuracy.

    python bench/precision.py [--train 1000] [--validation 200] [--max-length 64] [--seeds 0 1]
                              [--learning-rates 5e-5 1e-4 2e-4] [--batch-size 32] [--epochs 2]

``runtime.precision: auto`` trains in bf16 autocast on CPUs that multiply in
bf16 natively (AVX512-BF16 or AMX), because there it is faster; this measures
that choice. For each seed and learning rate it fine-tunes the demo MiniLM-L6
once in fp32 and once in bf16 (same head initialisation, same batch order),
alternating which goes first after an untimed warm-up of each, and prints
training and evaluation speed and the validation accuracy and loss of both
side by side. It refuses to run on a
CPU without native bf16, where the comparison would only show emulation.
"""

from __future__ import annotations

import argparse
import tempfile

from common import demo_study, median, quiet, table

PRECISIONS = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[5e-5, 1e-4, 2e-4])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)

    import torch

    from hpo.params import TrainingParams
    from objectives import build
    from objectives.runtime import bf16_is_faster

    if not bf16_is_faster(torch.device("cpu")):
        raise SystemExit("this CPU has no native bf16 (AVX512-BF16 or AMX): precision auto keeps fp32 here")
    built = {}  # precision -> objective
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            spec = demo_study(f"sqlite:///{tmp}/bench.db", train=args.train, validation=args.validation,
                              max_length=args.max_length, runtime={"device": "cpu", "precision": precision})
            built[precision] = build(spec)
    warm = TrainingParams(learning_rate=1e-4, batch_size=args.batch_size, epochs=1, freeze_depth=0)
    for objective in built.values():  # untimed: the first run in a process trains up to 1.4x slower
        objective.train_model(objective.new_model(warm, 0), warm, 0, max_examples=8 * args.batch_size)
    rows, speed, gaps = [], [], []
    for i, (seed, lr) in enumerate((s, lr) for s in args.seeds for lr in args.learning_rates):
        params = TrainingParams(learning_rate=lr, batch_size=args.batch_size, epochs=args.epochs, freeze_depth=0, warmup_ratio=0.1)
        results = {}
        for precision in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
            objective = built[precision]
            results[precision] = objective.train_model(objective.new_model(params, seed), params, seed, validation=objective.validation)
        fp32, bf16 = results["fp32"], results["bf16"]
        speed.append(bf16.examples_per_second / fp32.examples_per_second)
        eval_ratio = fp32.eval_seconds / bf16.eval_seconds
        a32, a16 = fp32.best.metrics["accuracy"], bf16.best.metrics["accuracy"]
        gaps.append(a16 - a32)
        rows.append([seed, f"{lr:g}", f"{fp32.examples_per_second:.1f}", f"{bf16.examples_per_second:.1f}", f"{speed[-1]:.2f}",
                     f"{eval_ratio:.2f}", f"{a32:.3f}", f"{a16:.3f}", f"{fp32.best.metrics['loss']:.3f}", f"{bf16.best.metrics['loss']:.3f}"])
        print(rows[-1], flush=True)
    print(f"\n{args.train} train / {args.validation} validation reviews, max_length {args.max_length}, batch {args.batch_size}, "
          f"{args.epochs} epoch(s), {args.threads} thread(s); accuracy and loss at each run's best point\n")
    print(table(["seed", "learning rate", "fp32 train ex/s", "bf16 train ex/s", "train speed-up", "eval speed-up",
                 "fp32 accuracy", "bf16 accuracy", "fp32 loss", "bf16 loss"], rows))
    print(f"\nmedian training speed-up {median(speed):.2f}; accuracy bf16 - fp32: median {median(gaps) * 100:+.1f} points, "
          f"range {min(gaps) * 100:+.1f} to {max(gaps) * 100:+.1f}")


if __name__ == "__main__":
    main()
