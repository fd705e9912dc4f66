"""One trial on two CPU processes (gloo) against one process: what the second rank costs or buys.

    python bench/distributed.py            # --train 400 --epochs 1 --repeats 2

The demo study as one fixed trial (full fine-tuning of MiniLM-L6, batch 16),
launched through the CLI as a user does, alternately with
``runtime.processes_per_trial: 1`` (one process, torch using both cores) and
``2`` (two ranks of one thread each, gradients averaged by gloo). Printed:
each run's training examples/s from the trial's record, wall time of the
launch, and the validation loss at the end (it should be the same).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import demo_study_file, median, table


def run(folder: Path, processes: int, args, index: int) -> dict:
    name = f"p{processes}-{index}"
    study = demo_study_file(f"sqlite:///{folder / 'hpo.db'}", name=name, n_trials=1, train=args.train, validation=100,
                            max_length=64, pruner={"type": "none"},
                            search_space={"learning_rate": 1e-4, "batch_size": 16, "epochs": args.epochs, "freeze_depth": 0,
                                          "dropout": 0.0})
    study["runtime"] = {"processes_per_trial": processes, "precision": "fp32",
                        "num_threads": max(1, args.cores // processes)}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "hpo", "launch", str(path)], cwd=folder, check=True, capture_output=True)
    wall = time.monotonic() - start
    import optuna

    (trial,) = optuna.load_study(study_name=name, storage=study["storage"]).trials
    return {"processes": processes, "wall": wall, "rate": trial.user_attrs["examples_per_second"],
            "loss": trial.user_attrs["curve"]["loss"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hpo-ddp-bench-"))
    results = [run(folder, processes, args, i) for i in range(args.repeats) for processes in (1, 2)]
    rows = [[r["processes"], f"{r['rate']:.1f}", f"{r['wall']:.0f}", f"{r['loss']:.5f}"] for r in results]
    print(table(["processes", "train examples/s", "launch wall s", "final validation loss"], rows))
    one = median([r["rate"] for r in results if r["processes"] == 1])
    two = median([r["rate"] for r in results if r["processes"] == 2])
    print(f"2 processes / 1 process, training examples/s: {two / one:.2f} (medians {two:.1f} / {one:.1f})")


if __name__ == "__main__":
    main()
