"""One trial on one process, on two CPU processes with DDP, and on two with FSDP (gloo): what each costs.

    python bench/distributed.py            # --train 400 --epochs 1 --repeats 2 --strategy ddp fsdp

The demo study as one fixed trial (full fine-tuning of MiniLM-L6, batch 16),
launched through the CLI as a user does, in turn with
``runtime.processes_per_trial: 1`` (one process, torch using every core) and
``2`` with each ``--strategy`` (two ranks of cores/2 threads each; DDP: a
replica per rank, gradients all-reduced; FSDP: every block sharded, weights
all-gathered for each forward and backward, gradients reduce-scattered).
Printed: each run's training examples/s from the trial's record, wall time of
the launch, and the validation loss at the end (the same for all, within
floating-point tolerance).
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


def run(folder: Path, processes: int, strategy: str, args, index: int) -> dict:
    name = f"p{processes}-{strategy}-{index}"
    study = demo_study_file(f"sqlite:///{folder / 'hpo.db'}", name=name, n_trials=1, train=args.train, validation=100,
                            max_length=64, pruner={"type": "none"},
                            search_space={"learning_rate": 1e-4, "batch_size": 16, "epochs": args.epochs, "freeze_depth": 0,
                                          "dropout": 0.0})
    study["runtime"] = {"processes_per_trial": processes, "strategy": strategy, "precision": "fp32",
                        "num_threads": max(1, args.cores // processes)}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "hpo", "launch", str(path)], cwd=folder, check=True, capture_output=True)
    wall = time.monotonic() - start
    import optuna

    (trial,) = optuna.load_study(study_name=name, storage=study["storage"]).trials
    assert trial.user_attrs.get("strategy") == (strategy if processes > 1 else None), trial.user_attrs
    return {"processes": processes, "strategy": strategy if processes > 1 else "-", "wall": wall,
            "rate": trial.user_attrs["examples_per_second"], "loss": trial.user_attrs["curve"]["loss"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--strategy", nargs="+", choices=["ddp", "fsdp"], default=["ddp", "fsdp"],
                        help="the strategies of the 2-process runs (each against one process)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hpo-ddp-bench-"))
    setups = [(1, "ddp"), *((2, s) for s in args.strategy)]
    results = [run(folder, processes, strategy, args, i) for i in range(args.repeats) for processes, strategy in setups]
    rows = [[r["processes"], r["strategy"], f"{r['rate']:.1f}", f"{r['wall']:.0f}", f"{r['loss']:.5f}"] for r in results]
    print(table(["processes", "strategy", "train examples/s", "launch wall s", "final validation loss"], rows))
    one = median([r["rate"] for r in results if r["processes"] == 1])
    for strategy in args.strategy:
        two = median([r["rate"] for r in results if r["strategy"] == strategy])
        print(f"2 processes ({strategy}) / 1 process, training examples/s: {two / one:.2f} (medians {two:.1f} / {one:.1f})")


if __name__ == "__main__":
    main()
