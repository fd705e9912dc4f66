"""Goal 5: what freezing buys: step time and validation score for every freeze_depth.

    python bench/freezing.py [--train 200] [--validation 100] [--max-length 64] [--epochs 1] [--repeats 2]

The demo MiniLM-L6 (6 layers) fine-tuned with the same learning rate, batch
size, data and seed at freeze_depth 0 (everything trains) to 6 (only the
pooler and the head train). Depths run in a different order on each repeat
(forward, then backward) so that a busy moment does not land on one depth;
the table gives the median training examples per second, the speed-up over
depth 0, the trainable share and the best validation accuracy (the same for
every repeat: training is deterministic on a CPU).
"""

from __future__ import annotations

import argparse
import tempfile

from common import demo_study, median, quiet, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)

    from hpo.params import TrainingParams
    from objectives import build, freezing

    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_study(f"sqlite:///{tmp}/bench.db", train=args.train, validation=args.validation, max_length=args.max_length)
        objective = build(spec)
    depths = list(range(objective.depth + 1))
    speed: dict[int, list[float]] = {d: [] for d in depths}
    score: dict[int, float] = {}
    share: dict[int, float] = {}
    for repeat in range(args.repeats):
        for depth in depths if repeat % 2 == 0 else reversed(depths):
            params = TrainingParams(learning_rate=args.learning_rate, batch_size=16, epochs=args.epochs, freeze_depth=depth, warmup_ratio=0.1)
            model = objective.new_model(params, spec.seed)
            trainable, total = freezing.count_parameters(model)
            result = objective.train_model(model, params, spec.seed, validation=objective.validation)
            speed[depth].append(result.examples_per_second)
            score[depth] = result.best.metrics["accuracy"]
            share[depth] = trainable / total
            print(repeat, depth, f"{result.examples_per_second:.1f} ex/s", f"acc {score[depth]:.3f}", flush=True)
    base = median(speed[0])
    rows = [
        [d, f"{share[d]:.0%}", f"{median(speed[d]):.1f}", f"{median(speed[d]) / base:.2f}x", f"{score[d]:.3f}"]
        for d in depths
    ]
    print(f"\n{len(objective.train)} train / {len(objective.validation)} validation reviews, max_length {args.max_length}, "
          f"{args.epochs} epoch(s), learning rate {args.learning_rate:g}, batch 16\n")
    print(table(["freeze_depth", "trainable", "train ex/s", "speed vs 0", "best val. accuracy"], rows))


if __name__ == "__main__":
    main()
