"""Replay pruners on the curves of studies run without one: what each would have saved.

    python bench/replay.py none-0.json none-1.json none-2.json [--train 1000]

Each file is a ``bench/pruning.py --pruners none --dump`` of one seed: every
trial's configuration and its curve of every validation metric (the
objective's ``curve`` user attribute). For each pruner below, the trials are
told to a fresh study in their original order, reporting the metric that
pruner watches at each point and stopping where hpo's pruner (built from the
spec by ``hpo.pruners.build_pruner``, the product's code) says so; like the
objective, never at a trial's last point. A pruned trial is charged the
training examples up to that point.

This is an estimate, not a run: TPE would have proposed other configurations
after a pruned trial. It is how to choose which pruners are worth a real run
(``bench/pruning.py``), at no training cost. The previous session's replay
predicted the median pruner's real savings exactly on three seeds.
"""

from __future__ import annotations

import argparse
import json

from common import demo_study, geometric_mean, table

# name -> the study file's `pruner:` section; n_warmup_steps "half" and "epoch"
# are filled in from --train.
PRUNERS = {
    "median, loss, from 500 (the demo's)": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 500, "metric": "loss"},
    "median, accuracy": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": "half"},
    "median, loss": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": "half", "metric": "loss"},
    "median, loss, from 1st point": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 0, "metric": "loss"},
    "median, loss, n_min_trials 3": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": "half", "metric": "loss", "n_min_trials": 3},
    "median, loss, 5 startup": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": "half", "metric": "loss"},
    "median, loss, from 1 epoch": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": "epoch", "metric": "loss"},
    "percentile 25, loss, from 1 epoch": {"type": "percentile", "percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": "epoch", "metric": "loss"},
    "percentile 33, loss, from 1 epoch": {"type": "percentile", "percentile": 33.0, "n_startup_trials": 3, "n_warmup_steps": "epoch", "metric": "loss"},
    "percentile 40, loss": {"type": "percentile", "percentile": 40.0, "n_startup_trials": 3, "n_warmup_steps": "half", "metric": "loss"},
    "halving": {"type": "successive_halving", "reduction_factor": 2},
    "halving, loss": {"type": "successive_halving", "reduction_factor": 2, "metric": "loss"},
}


def replay(spec, trials: list[dict]) -> tuple[int, float, int]:
    """Training examples, best final metric and trials pruned under ``spec``'s pruner."""
    import optuna

    from hpo.pruners import build_pruner

    study = optuna.create_study(direction=spec.direction, pruner=build_pruner(spec))
    better = max if spec.direction == "maximize" else min
    examples = pruned = 0
    best = None
    for record in sorted(trials, key=lambda r: r["number"]):
        curve = record["metrics"]
        steps, reported, scores = curve["examples"], curve[spec.pruning_metric], curve[spec.metric]
        trial = study.ask()
        for i, (step, value) in enumerate(zip(steps, reported)):
            trial.report(value, step)
            if i < len(steps) - 1 and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                examples += step
                pruned += 1
                break
        else:
            final = better(scores)  # the objective returns the best point
            study.tell(trial, final)
            examples += steps[-1]
            best = final if best is None else better(best, final)
    return examples, best, pruned


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dumps", nargs="+")
    parser.add_argument("--train", type=int, default=1000, help="training examples per epoch in the dumped studies")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = []
    for path in args.dumps:
        with open(path) as f:
            records = [r for r in json.load(f) if r["pruner"] == "none" and r.get("metrics")]
        # The baseline: the study as it ran, every trial to its end.
        studies.append((path, records, replay(demo_study("sqlite://", pruner={"type": "none"}), records)))
    rows, summary = [], []
    for name, options in PRUNERS.items():
        warmup = {"half": args.train // 2, "epoch": args.train}.get(options.get("n_warmup_steps"))
        options = {**options, "n_warmup_steps": warmup} if warmup is not None else options
        spec = demo_study("sqlite://", pruner=options)
        ratios, gaps = [], []
        for path, records, (base_examples, base_best, _) in studies:
            examples, best, pruned = replay(spec, records)
            ratios.append(examples / base_examples)
            gaps.append(100 * (best - base_best))
            rows.append([name, path, base_examples, examples, f"{1 - examples / base_examples:.0%}", f"{base_best:.4f}",
                         f"{best:.4f}", f"{100 * (best - base_best):+.1f}", pruned])
        summary.append([name, f"{1 - geometric_mean(ratios):.0%}", f"{min(1 - r for r in ratios):.0%}",
                        f"{sum(gaps) / len(gaps):+.1f}", f"{min(gaps):+.1f}"])
    print(table(["pruner", "study", "examples (none)", "examples", "saved", "best (none)", "best", "points", "pruned"], rows))
    print()
    print(table(["pruner", "compute saved (geo. mean)", "least saved", "best change, mean", "worst"], summary))


if __name__ == "__main__":
    main()
