"""Goal 4: what the default pruner saves, over three seeds.

    python bench/pruning.py [--seeds 0 1 2] [--trials 8] [--train 160] [--max-length 64]

The same study (the demo's search space, TPE with 4 random startup trials and
the study seed as sampler seed) once with ``pruner: none`` and once with the
demo's median pruner (3 startup trials, no pruning before half an epoch), for
each seed; the two variants of a seed run back to back, in alternating order.
Compute is counted as training examples processed (the sum of every trial's
``examples_seen``); evaluation passes are the same per point for both. Goal:
at least 40% less compute, best validation accuracy within 0.5 points.
"""

from __future__ import annotations

import argparse
import tempfile

from common import best_value, demo_study, geometric_mean, quiet, run_study, table


def examples_processed(trial) -> int:
    """A pruned trial stopped right at its last report, whose step is examples seen."""
    if trial.state.name == "PRUNED":
        return max(trial.intermediate_values, default=0)
    return trial.user_attrs["examples_seen"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--validation", type=int, default=80)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)
    from objectives import build

    pruners = {
        "none": {"type": "none"},
        "median": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": args.train // 2},
    }
    rows, compute_ratios, wall_ratios, gaps = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, seed in enumerate(args.seeds):
            measured = {}
            order = list(pruners) if k % 2 == 0 else list(reversed(pruners))
            objective = None
            for label in order:
                spec = demo_study(
                    f"sqlite:///{tmp}/bench.db", name=f"pruning-{seed}-{label}", n_trials=args.trials, seed=seed,
                    train=args.train, validation=args.validation, max_length=args.max_length,
                    sampler={"type": "tpe", "n_startup_trials": 4, "seed": seed}, pruner=pruners[label],
                )
                objective = objective or build(spec)  # the pruner is the search's business, not the objective's
                wall, trials = run_study(spec, objective)
                examples = sum(examples_processed(t) for t in trials)
                pruned = sum(t.state.name == "PRUNED" for t in trials)
                measured[label] = (examples, wall, best_value(trials), pruned)
                print(seed, label, measured[label], flush=True)
            (ex_n, wall_n, best_n, _), (ex_m, wall_m, best_m, pruned_m) = measured["none"], measured["median"]
            compute_ratios.append(ex_m / ex_n)
            wall_ratios.append(wall_m / wall_n)
            gaps.append(100 * (best_m - best_n))
            rows.append([
                seed, ex_n, ex_m, f"{1 - ex_m / ex_n:.0%}", f"{wall_n:.0f}", f"{wall_m:.0f}", f"{wall_m / wall_n:.2f}",
                f"{best_n:.4f}", f"{best_m:.4f}", f"{100 * (best_m - best_n):+.1f}", pruned_m,
            ])
    print()
    print(table(
        ["seed", "examples (none)", "examples (median)", "compute saved", "wall s (none)", "wall s (median)",
         "wall ratio", "best (none)", "best (median)", "points", "pruned"],
        rows,
    ))
    print(f"\ncompute saved (geometric mean over seeds): {1 - geometric_mean(compute_ratios):.0%} (goal >= 40%); "
          f"wall ratio {geometric_mean(wall_ratios):.2f}; best-score change, mean {sum(gaps) / len(gaps):+.1f} points, "
          f"worst {min(gaps):+.1f} (goal: within 0.5)")


if __name__ == "__main__":
    main()
