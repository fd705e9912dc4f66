"""Goal 6: sample efficiency against the BERT paper's grid.

    python bench/efficiency.py [--train 100] [--validation 60] [--max-length 64] [--seeds 0 1 2 3 4]
                               [--pruners median halving none] [--save grid.json | --load grid.json]
                               [--part 1/2 --save part1.json]   # then --load part1.json part2.json

First the grid, trained for real: learning rate {2e-5, 3e-5, 5e-5} x batch
size {16, 32} x epochs {2, 3, 4}, 18 fine-tunes of the demo MiniLM-L6 with
the study seed, each evaluated twice per epoch (``--points``); its best validation accuracy
(the best point of the best run) is the target, its compute the sum of the
18 runs' training examples.

Then hpo's search over the same 18 configurations (TPE with 5 random startup
trials, and each pruner named: the demo's median pruner, successive halving
from the first evaluation point, none), run by the real worker with one TPE
seed per ``--seeds`` entry, until a trial reaches the target. Because a trial's
training is deterministic given its configuration and the study seed, its
evaluation points are those of the grid run with the same configuration; the
search replays them (report, ask the pruner, stop if pruned) instead of
training again, and is charged the training examples up to where the trial
ended. Goal: the median compute to reach the grid's best is at most half the
grid's. ``--save`` keeps the grid's curves, ``--load`` replays searches on them
without training again. ``--part K/N`` trains every N-th grid run only, so that
N processes (one per core) share the grid; ``--load`` takes their files together.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
from pathlib import Path

from common import demo_study, median, quiet, table

GRID = {"learning_rate": [2e-5, 3e-5, 5e-5], "batch_size": [16, 32], "epochs": [2, 3, 4]}


def run_grid(objective, seed: int, part: int = 1, parts: int = 1) -> dict[tuple, list[tuple[int, float]]]:
    from hpo.params import TrainingParams

    runs = {}
    for index, (lr, batch, epochs) in enumerate(itertools.product(*GRID.values())):
        if index % parts != part - 1:
            continue
        params = TrainingParams(learning_rate=lr, batch_size=batch, epochs=epochs, freeze_depth=0, warmup_ratio=0.1)
        result = objective.train_model(objective.new_model(params, seed), params, seed, validation=objective.validation)
        # The loss rides along (saved with --save) to replay pruners that watch it.
        runs[(lr, batch, epochs)] = [(p.examples, p.metrics["accuracy"], p.metrics["loss"]) for p in result.points]
        print(f"grid lr {lr:g} batch {batch} epochs {epochs}: best {max(p[1] for p in runs[(lr, batch, epochs)]):.3f}", flush=True)
    return runs


def search(spec, runs, target: float, cap: int) -> tuple[int | None, int]:
    """Trials and training examples until the target is reached (None: not within ``cap`` trials)."""
    import optuna

    from hpo.runner import WorkerOptions, run_worker

    stop = threading.Event()
    spent = {"examples": 0, "trials": 0, "reached": None}

    def replay(trial: optuna.Trial) -> float:
        params = spec.sample(trial)
        points = runs[(params.learning_rate, params.batch_size, params.epochs)]
        spent["trials"] += 1
        best, previous = 0.0, 0
        for i, (examples, accuracy, *loss) in enumerate(points):
            spent["examples"] += examples - previous  # charged up to this point, pruned or not
            previous = examples
            best = max(best, accuracy)
            trial.report(loss[0] if spec.pruning_metric == "loss" else accuracy, step=examples)
            if i < len(points) - 1 and trial.should_prune():  # as the objective: never at the last point
                raise optuna.TrialPruned()
        if best >= target and spent["reached"] is None:
            spent["reached"] = spent["trials"]
            stop.set()
        return best

    run_worker(spec.model_copy(update={"n_trials": cap}), replay, WorkerOptions(stop=stop))
    return spent["reached"], spent["examples"]


PRUNERS = {
    "median": None,  # demo_study's default: the demo's median pruner
    "median-loss": {"type": "median", "n_startup_trials": 3, "metric": "loss"},  # needs curves saved with their loss
    "halving": {"type": "successive_halving", "reduction_factor": 2},
    "none": {"type": "none"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pruners", nargs="+", default=["median", "halving", "none"], choices=list(PRUNERS))
    parser.add_argument("--points", type=int, default=2, help="evaluation points per epoch of the grid's runs")
    parser.add_argument("--cap", type=int, default=36, help="most trials per search")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", help="write the grid's curves here")
    parser.add_argument("--load", nargs="+", help="replay the searches on curves saved by --save (no training)")
    parser.add_argument("--part", default="1/1", help="K/N: train every N-th grid run from the K-th, save it and stop")
    args = parser.parse_args()
    part, parts = (int(x) for x in args.part.split("/"))
    if parts > 1 and not args.save:
        parser.error("--part needs --save: the parts are replayed together with --load")
    quiet(args.threads)
    from objectives import build

    space = {
        "learning_rate": {"choices": GRID["learning_rate"]},
        "batch_size": {"choices": GRID["batch_size"]},
        "epochs": {"choices": GRID["epochs"]},
        "freeze_depth": 0,
        "warmup_ratio": 0.1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.load:
            runs = {}
            for file in args.load:
                saved = json.loads(Path(file).read_text())
                n, n_validation = saved["train"], saved["validation"]
                runs.update({tuple(json.loads(key)): [tuple(p) for p in points] for key, points in saved["runs"].items()})
            if len(runs) != 18:
                parser.error(f"--load: {len(runs)} of the grid's 18 runs in those files")
        else:
            base = demo_study(f"sqlite:///{tmp}/b.db", train=args.train, validation=args.validation, max_length=args.max_length, search_space=space,
                              points_per_epoch=args.points)
            objective = build(base)
            runs = run_grid(objective, base.seed, part, parts)
            n, n_validation = len(objective.train), len(objective.validation)
            if args.save:
                with open(args.save, "w") as f:
                    json.dump({"train": n, "validation": n_validation, "runs": {json.dumps(list(k)): v for k, v in runs.items()}}, f)
            if parts > 1:
                print(f"part {part}/{parts}: {len(runs)} grid runs saved to {args.save}; replay with --load and every part's file")
                return
        grid_examples = sum(n * epochs for (_, _, epochs) in runs)
        target = max(p[1] for points in runs.values() for p in points)
        rows, summary = [], []
        for pruner in args.pruners:
            fractions = []
            for seed in args.seeds:
                spec = demo_study(
                    f"sqlite:///{tmp}/b.db", name=f"efficiency-{pruner}-{seed}", train=n, validation=n_validation,
                    max_length=args.max_length, search_space=space, sampler={"type": "tpe", "n_startup_trials": 5, "seed": seed},
                    pruner=PRUNERS[pruner],
                )
                reached, examples = search(spec, runs, target, args.cap)
                fraction = examples / grid_examples if reached else float("inf")
                fractions.append(fraction)
                rows.append([pruner, seed, reached if reached else f"not in {args.cap}", examples, f"{fraction:.2f}" if reached else "-"])
                print(rows[-1], flush=True)
            summary.append(f"{pruner}: median compute to reach the grid's best {median(fractions):.2f} of the grid's (goal <= 0.5)")
    print(f"\n{n} train / {n_validation} validation reviews, max_length {args.max_length}; grid: 18 runs, "
          f"{grid_examples} training examples, best validation accuracy {target:.4f}\n")
    print(table(["pruner", "TPE seed", "trials to reach the grid's best", "training examples", "vs grid compute"], rows))
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
