"""Goal 7: how cost grows with the training set and with the number of finished trials.

    python bench/growth.py [--sizes 50 100 200 400] [--trials 1000] [--max-length 64]

Part 1: one trial (model copy, one epoch, two evaluations on the same 50
validation reviews) for each training-set size; time per trial and per
training example, relative to the smallest size.

Part 2: a no-op objective (the search alone) run by the real worker on an
SQLite file up to ``--trials`` finished trials with TPE (10 random startup
trials); the time between the starts of consecutive trials is the claim
(lock, count, ask, which is where TPE samples) plus the tell. Reported per
band of finished trials. Optuna's TPE alone on an in-memory study over the
same space is timed beside it, to separate the sampler from the storage.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import demo_study, median, quiet, table


def trial_cost(sizes: list[int], max_length: int) -> None:
    from hpo.params import TrainingParams
    from objectives import build

    rows, base = [], None
    params = TrainingParams(learning_rate=1e-4, batch_size=16, epochs=1, freeze_depth=0, warmup_ratio=0.1)
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            objective = build(demo_study(f"sqlite:///{tmp}/b.db", train=size, validation=50, max_length=max_length))
        start = time.perf_counter()
        model = objective.new_model(params, 0)
        objective.train_model(model, params, 0, validation=objective.validation)
        seconds = time.perf_counter() - start
        per_example = seconds / size
        base = base or per_example
        rows.append([size, f"{seconds:.1f}", f"{1000 * per_example:.0f}", f"{per_example / base:.2f}"])
        print(rows[-1], flush=True)
    print(f"\nPart 1: one trial (1 epoch, batch 16, max_length {max_length}, 2 evaluations of 50 reviews)\n")
    print(table(["train reviews", "trial s", "ms per train review", "vs smallest"], rows))


SPACE = {
    "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    "batch_size": {"choices": [16, 32]},
    "epochs": {"low": 1, "high": 4},
    "freeze_depth": {"low": 0, "high": 6},
}


def sampler_cost(trials: int) -> None:
    import optuna

    from hpo.runner import WorkerOptions, run_worker

    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_study(
            f"sqlite:///{tmp}/b.db", n_trials=trials, sampler={"type": "tpe", "n_startup_trials": 10, "seed": 0},
            pruner={"type": "none"}, search_space=SPACE,
        )
        starts: list[float] = []
        run_worker(
            spec, lambda trial: spec.sample(trial).learning_rate,
            WorkerOptions(on_trial_start=lambda name, trial: starts.append(time.perf_counter())),
        )
    gaps = [b - a for a, b in zip(starts, starts[1:])]

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10), direction="maximize")
    alone = []
    for _ in range(trials - 1):
        begin = time.perf_counter()
        trial = study.ask()
        value = spec.sample(trial).learning_rate
        study.tell(trial, value)
        alone.append(time.perf_counter() - begin)

    bands = [b for b in (0, 10, 100, 250, 500, 750, 1000) if b < trials - 1] + [trials - 1]
    rows = []
    for low, high in zip(bands, bands[1:]):
        rows.append([f"{low}-{high}", f"{1000 * median(gaps[low:high]):.0f}", f"{1000 * median(alone[low:high]):.0f}"])
    print(f"\nPart 2: no-op objective, TPE, {trials} trials, SQLite, one worker\n")
    print(table(["finished trials", "ms per trial (worker, SQLite)", "ms per trial (TPE alone, in memory)"], rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=["all", "trial", "sampler"], default="all")
    args = parser.parse_args()
    quiet(args.threads)
    if args.part in ("all", "trial"):
        trial_cost(args.sizes, args.max_length)
    if args.part in ("all", "sampler"):
        sampler_cost(args.trials)


if __name__ == "__main__":
    main()
