"""Goal 4: what the default pruner saves, over three seeds.

    python bench/pruning.py [--seeds 0 1 2] [--trials 8] [--train 160] [--max-length 64]
                            [--epochs 1 2] [--points 2] [--pruners none median halving] [--dump curves.json]

The same study (the demo's search space, TPE with 4 random startup trials and
the study seed as sampler seed) once with ``pruner: none`` and once with each
pruner named, for each seed; the variants of a seed run back to back, in an
order that rotates between seeds. The pruners:

- ``median``: 3 startup trials, no pruning before ``--warmup`` examples (by
  default half an epoch; the demo's is 500 examples, so pass ``--warmup 500``
  to run the demo's pruner);
- ``halving``: successive halving (asynchronous, as ASHA): at the first
  evaluation point, then at 2, 4, 8... times as many examples, a trial goes on
  only if it is in the better half of every trial that reached that point
  (Dodge et al. 2020's recipe: evaluate early, keep the best half).

Compute is counted as training examples processed (the sum of every trial's
``examples_seen``); evaluation passes are the same per point for all. Goal:
at least 40% less compute, best validation accuracy within 0.5 points.
``--dump`` writes every trial's configuration and curve, to replay other
pruners on them without training again.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from common import best_value, demo_study, geometric_mean, quiet, run_study, table


def examples_processed(trial) -> int:
    """A pruned trial stopped right at its last report, whose step is examples seen."""
    if trial.state.name == "PRUNED":
        return max(trial.intermediate_values, default=0)
    return trial.user_attrs["examples_seen"]


def pruner_options(name: str, train: int, metric: str | None = None, warmup: int | None = None) -> dict:
    warmup = train // 2 if warmup is None else warmup
    options = {
        "none": {"type": "none"},
        "median": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": warmup},
        # min_resource left out: hpo starts the rungs at the first evaluation point.
        "halving": {"type": "successive_halving", "reduction_factor": 2},
    }[name]
    return {**options, "metric": metric} if metric and name != "none" else options


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--validation", type=int, default=80)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 2], metavar=("LOW", "HIGH"))
    parser.add_argument("--pruners", nargs="+", default=["none", "halving"], choices=["none", "median", "halving"])
    parser.add_argument("--points", type=int, default=2, help="evaluation points per epoch")
    parser.add_argument("--startup", type=int, default=4, help="TPE's random startup trials (the demo: 5)")
    parser.add_argument("--pruner-metric", choices=["loss"], help="the median and halving arms judge this metric (pruner.metric)")
    parser.add_argument("--warmup", type=int, help="examples before the median arm may prune (default: half an epoch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", help="write every trial's configuration and curve to this JSON file")
    args = parser.parse_args()
    quiet(args.threads)
    from objectives import build

    space = {
        "learning_rate": {"low": 2.0e-5, "high": 3.0e-4, "log": True},
        "batch_size": {"choices": [16, 32]},
        "epochs": {"low": args.epochs[0], "high": args.epochs[1]},
        "freeze_depth": {"low": 0, "high": 4},
        "warmup_ratio": 0.1,
    }
    # Without "none" among --pruners, no baseline runs: each arm's compute and best are printed, and
    # --dump keeps them, to set beside a baseline run earlier (or in another process) on the same seed.
    arms = (["none"] if "none" in args.pruners else []) + [p for p in args.pruners if p != "none"]
    measured: dict[int, dict[str, tuple]] = {}
    dump = []
    with tempfile.TemporaryDirectory() as tmp:
        built = {}  # pruning metric -> objective
        for k, seed in enumerate(args.seeds):
            measured[seed] = {}
            for label in arms[k % len(arms):] + arms[: k % len(arms)]:
                spec = demo_study(
                    f"sqlite:///{tmp}/bench.db", name=f"pruning-{seed}-{label}", n_trials=args.trials, seed=seed,
                    train=args.train, validation=args.validation, max_length=args.max_length, search_space=space,
                    sampler={"type": "tpe", "n_startup_trials": args.startup, "seed": seed},
                    pruner=pruner_options(label, args.train, args.pruner_metric, args.warmup),
                    points_per_epoch=args.points,
                )
                # One objective per reported metric: the objective reports what the spec it was built
                # from names (pruner.metric), so the baseline's cannot serve an arm that prunes on the loss.
                if spec.pruning_metric not in built:
                    built[spec.pruning_metric] = build(spec)
                objective = built[spec.pruning_metric]
                wall, trials = run_study(spec, objective)
                examples = sum(examples_processed(t) for t in trials)
                pruned = sum(t.state.name == "PRUNED" for t in trials)
                measured[seed][label] = (examples, wall, best_value(trials), pruned)
                print(seed, label, measured[seed][label], flush=True)
                dump += [{
                    "seed": seed, "pruner": label, "number": t.number, "state": t.state.name, "params": t.params,
                    "value": t.value, "curve": {str(s): v for s, v in sorted(t.intermediate_values.items())},
                    "examples": examples_processed(t), "wall_seconds": t.user_attrs.get("wall_seconds"),
                    "metrics": t.user_attrs.get("curve"),  # every metric at every point, loss included
                } for t in trials]
                if args.dump:
                    with open(args.dump, "w") as f:
                        json.dump(dump, f, indent=1)
    if "none" in arms:
        for label in arms[1:]:
            report(label, measured)


def report(label: str, measured: dict[int, dict[str, tuple]]) -> None:
    rows, compute_ratios, wall_ratios, gaps = [], [], [], []
    for seed, arms in measured.items():
        (ex_n, wall_n, best_n, _), (ex_p, wall_p, best_p, pruned) = arms["none"], arms[label]
        compute_ratios.append(ex_p / ex_n)
        wall_ratios.append(wall_p / wall_n)
        gaps.append(100 * (best_p - best_n))
        rows.append([
            seed, ex_n, ex_p, f"{1 - ex_p / ex_n:.0%}", f"{wall_n:.0f}", f"{wall_p:.0f}", f"{wall_p / wall_n:.2f}",
            f"{best_n:.4f}", f"{best_p:.4f}", f"{100 * (best_p - best_n):+.1f}", pruned,
        ])
    print(f"\n{label} against none\n")
    print(table(
        ["seed", "examples (none)", f"examples ({label})", "compute saved", "wall s (none)", f"wall s ({label})",
         "wall ratio", "best (none)", f"best ({label})", "points", "pruned"],
        rows,
    ))
    print(f"\ncompute saved (geometric mean over seeds): {1 - geometric_mean(compute_ratios):.0%} (goal >= 40%); "
          f"wall ratio {geometric_mean(wall_ratios):.2f}; best-score change, mean {sum(gaps) / len(gaps):+.1f} points, "
          f"worst {min(gaps):+.1f} (goal: within 0.5)")


if __name__ == "__main__":
    main()
