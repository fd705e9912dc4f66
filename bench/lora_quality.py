"""Quality per compute: the LoRA demo study against the full fine-tuning demo, same trial budget.

Runs ``hpo launch`` as a user types it, one study at a time, on
studies/demo-lora.yaml and studies/demo.yaml with only the name, seed and
storage changed, then reads each study back: best validation accuracy,
wall time of the launch, examples processed over all trials, and the
winner's trainable fraction.

    python bench/lora_quality.py --seeds 0 1 2 --out /tmp/lora-quality
    python bench/lora_quality.py --report-only --seeds 0 1 2 --out /tmp/lora-quality

Each launch takes 3-6 minutes on 2 quiet CPU cores (an hour under a load
of 6 on 2 cores). Results of finished launches are kept in OUT/results.json,
so a rerun skips them; ``--kinds`` runs one arm (two drivers can then run
the arms side by side, under the same load); ``--report-only`` reads back
studies launched but not timed by this script (a driver stopped early).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, table

STUDIES = {"lora": ROOT / "studies" / "demo-lora.yaml", "full": ROOT / "studies" / "demo.yaml"}


def study_file(kind: str, seed: int, out: Path) -> tuple[Path, str, str]:
    import yaml

    spec = yaml.safe_load(STUDIES[kind].read_text())
    name = f"bench-quality-{kind}-seed{seed}"
    storage = f"sqlite:///{out / (name + '.db')}"
    spec.update(name=name, seed=seed, storage=storage)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, name, storage


def launch(path: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-m", "hpo", "launch", str(path), "--quiet"],
                              stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"hpo launch {path} exited {done.returncode}; see {log}")
    return time.perf_counter() - start


def summarise(name: str, storage: str, wall: float | None) -> dict:
    """What the study holds; ``wall`` is the launch's clock, None when the launch was not timed here."""
    import optuna

    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    # Only complete trials: Optuna stores a pruned trial's last reported value (here the loss) as its value.
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value)
    attrs = best.user_attrs
    ended = [t.datetime_complete for t in trials if t.datetime_complete]
    search = (max(ended) - min(t.datetime_start for t in trials if t.datetime_start)).total_seconds()
    return {
        "wall_s": round(wall, 1) if wall is not None else None, "search_s": round(search, 1),
        "best": round(best.value, 4), "trials": len(trials),
        "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "examples": sum(t.user_attrs.get("examples_seen", 0) for t in trials),
        "train_s": round(sum(t.user_attrs.get("train_seconds", 0) for t in trials), 1),
        "winner_fraction": attrs.get("trainable_fraction"),
        "winner_params": {k: v for k, v in best.params.items()},
        "finished": sum(t.state.is_finished() for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lora-quality"))
    parser.add_argument("--kinds", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--report-only", action="store_true", help="launch nothing; studies already in OUT "
                        "without a result (launched by hand) are read back, without a launch wall time")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for seed in args.seeds:
        for kind in args.kinds:  # alternating, so drifting load hits both alike
            key = f"{kind}-{seed}"
            if key in results:
                continue
            path, name, storage = study_file(kind, seed, args.out)
            if args.report_only:
                if (args.out / f"{name}.db").exists():
                    results[key] = summarise(name, storage, None)
                continue
            print(f"launching {name} ...", flush=True)
            wall = launch(path, args.out / f"{name}.log")
            results[key] = summarise(name, storage, wall)
            print(key, json.dumps(results[key]), flush=True)
            results_file.write_text(json.dumps(results, indent=1))
    rows = []
    for seed in args.seeds:
        for kind in ("lora", "full"):
            r = results.get(f"{kind}-{seed}")
            if r:
                rows.append([kind, seed, r["best"], r["wall_s"] or "-", r["search_s"], f"{r['complete']}/{r['pruned']}",
                             r["examples"], r["train_s"], r["winner_fraction"]])
    print(table(["study", "seed", "best val acc", "launch wall s", "search s (first start to last end)", "complete/pruned",
                 "examples", "train s (sum)", "winner trainable fraction"], rows))
    for kind in ("lora", "full"):
        got = [results[f"{kind}-{s}"] for s in args.seeds if f"{kind}-{s}" in results]
        if got:
            mean = lambda key: sum(r[key] for r in got) / len(got)  # noqa: E731
            print(f"{kind}: mean best {mean('best'):.4f}, mean search {mean('search_s'):.0f} s, "
                  f"mean examples {mean('examples'):.0f} over {len(got)} seeds")


if __name__ == "__main__":
    main()
