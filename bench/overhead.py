"""Goal 2: share of a trial's wall time spent outside training and evaluation steps.

    python bench/overhead.py [--trials 4] [--train 160] [--max-length 64] [--threads 1]

Runs a real study (the demo objective, SQLite file, TPE, no pruner so every
trial runs to its end) through ``run_worker`` and splits the worker's loop
time, from the open study to the last ``tell``, into training steps,
evaluation steps, the model copy (deep copy + head init + freezing) and the
rest (claim under the lock, TPE sampling, storage writes, garbage
collection). Reading the data and the pretrained weights happens once per
worker, before the first trial, and is shown apart. Goal: <= 3% outside
training and evaluation.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import demo_study, quiet, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--validation", type=int, default=80)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_study(
            f"sqlite:///{tmp}/bench.db", n_trials=args.trials, train=args.train, validation=args.validation,
            max_length=args.max_length, pruner={"type": "none"}, sampler={"type": "tpe", "n_startup_trials": 2, "seed": 0},
        )
        print(split_worker_loop(spec))


def split_worker_loop(spec, watch=None) -> str:
    """Run the study with the real objective; a Markdown report of where the worker's time went.

    ``watch`` is an optional context manager around the worker loop (GPU sampling).
    """
    import contextlib

    import optuna

    from hpo.runner import WorkerOptions, run_worker
    from objectives import build

    start = time.perf_counter()
    objective = build(spec)
    setup = time.perf_counter() - start

    copy_seconds = []
    new_model = objective.new_model

    def timed_new_model(params, seed):
        begin = time.perf_counter()
        model = new_model(params, seed)
        copy_seconds.append(time.perf_counter() - begin)
        return model

    objective.new_model = timed_new_model
    opened: list[float] = []
    with watch or contextlib.nullcontext():
        run_worker(spec, objective, WorkerOptions(on_study_open=lambda study: opened.append(time.perf_counter())))
        loop = time.perf_counter() - opened[0]
    trials = optuna.load_study(study_name=spec.name, storage=spec.storage).get_trials(deepcopy=False)
    train = sum(t.user_attrs["train_seconds"] for t in trials)
    evaluation = sum(t.user_attrs["eval_seconds"] for t in trials)
    copies = sum(copy_seconds)
    rest = loop - train - evaluation - copies
    rows = [
        ["training steps", f"{train:.1f}", f"{100 * train / loop:.2f}%"],
        ["evaluation steps", f"{evaluation:.1f}", f"{100 * evaluation / loop:.2f}%"],
        ["model copy + freeze", f"{copies:.2f}", f"{100 * copies / loop:.2f}%"],
        ["claim, sampling, storage, gc", f"{rest:.2f}", f"{100 * rest / loop:.2f}%"],
        ["**outside training and evaluation**", f"{copies + rest:.2f}", f"**{100 * (copies + rest) / loop:.2f}%**"],
    ]
    return "\n".join([
        f"{len(trials)} trials, {len(objective.train)} train / {len(objective.validation)} validation examples, "
        f"max_length {spec.data.max_length}; worker loop {loop:.1f} s; setup once per worker (data, tokenizer cache, "
        f"weights) {setup:.1f} s\n",
        table(["part of the worker loop", "seconds", "share"], rows),
        f"\nper trial: {(copies + rest) / len(trials):.2f} s outside training and evaluation (goal: <= 3% of the trial)",
    ])

if __name__ == "__main__":
    main()
