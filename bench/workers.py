"""Throughput of the trial claim with a no-op objective, and the budget overshoot.

    python bench/workers.py [--trials 200] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

Starts 1, 4 and 8 real worker processes on one study, on the default storage
(SQLite) and on PostgreSQL, each running an objective that returns at once.
What is left is the cost of the search itself: claim under the study lock,
sampling (TPE), heartbeat, tell. Prints trials per second, the ratio to one
worker on the same storage, and the overshoot (finished trials beyond the
budget: must be 0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def study_file(folder: Path, storage: str, trials: int) -> Path:
    import yaml

    path = folder / f"bench-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump({
        "name": path.stem, "storage": storage, "n_trials": trials, "model": "unused", "data": {"source": "demo"},
        "sampler": {"type": "tpe", "n_startup_trials": 10}, "pruner": {"type": "none"},
        "search_space": {
            "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
            "batch_size": {"choices": [16, 32]}, "epochs": {"low": 1, "high": 4}, "freeze_depth": {"low": 0, "high": 6},
        },
    }))
    return path


def worker(study: str, index: int) -> None:
    from hpo.runner import WorkerOptions, run_worker
    from hpo.spec import load_spec

    spec = load_spec(study)
    run_worker(spec, lambda trial: spec.sample(trial).learning_rate, WorkerOptions(name=f"w{index}", index=index, poll_interval=0.05))


def measure(folder: Path, storage: str, workers: int, trials: int) -> tuple[float, int]:
    import optuna

    study = study_file(folder, storage, trials)
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, __file__, "--worker", str(study), str(i)]) for i in range(workers)]
    codes = [p.wait() for p in processes]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a worker failed: {codes}")
    done = optuna.load_study(study_name=study.stem, storage=storage).get_trials(deepcopy=False)
    finished = sum(t.state.is_finished() and t.state.name != "FAIL" for t in done)
    return elapsed, finished - trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, storage in (("sqlite", f"sqlite:///{folder / 'bench.db'}"), ("postgresql", args.postgres)):
            base = None
            for workers in (1, 4, 8):
                elapsed, overshoot = measure(folder, storage, workers, args.trials)
                rate = args.trials / elapsed
                base = base or rate
                rows.append((label, workers, args.trials, elapsed, rate, rate / base, overshoot))
    print(f"{'storage':<11} {'workers':>7} {'trials':>6} {'seconds':>8} {'trials/s':>8} {'vs 1 worker':>11} {'overshoot':>9}")
    for label, workers, trials, elapsed, rate, ratio, overshoot in rows:
        print(f"{label:<11} {workers:>7} {trials:>6} {elapsed:>8.1f} {rate:>8.1f} {ratio:>10.2f}x {overshoot:>9}")


if __name__ == "__main__":
    main()
