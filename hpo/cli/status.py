"""``hpo status STUDY``: trials by state, the best trial, what is running now."""

from __future__ import annotations

import argparse
import datetime as dt

import optuna
from optuna.trial import TrialState

from hpo import retrain, storage
from hpo.cli import common, preflight
from hpo.errors import StorageError, UserError
from hpo.runner import Counts, ranked
from hpo.spec import StudySpec


def add_parser(sub) -> None:
    parser = sub.add_parser("status", help="show trials by state, the best trial and running trials")
    common.add_study_argument(parser)
    parser.add_argument("--top", type=int, default=5, help="how many of the best trials to list (default 5)")
    parser.set_defaults(handler=run)


def load_existing(spec: StudySpec) -> optuna.Study:
    """The study, or a clear error if it was never launched. Creates nothing."""
    storage.check_reachable(spec.storage)
    if storage.existing_direction(spec.storage, spec.name) is None:
        raise StorageError(f"no study named {spec.name!r} in {storage.mask_url(spec.storage)}; run `hpo launch` first")
    preflight.check_resume(spec, reading=True)
    return optuna.load_study(study_name=spec.name, storage=storage.open_storage(spec.storage))


def study_report(spec: StudySpec, top: int = 5) -> str:
    study = load_existing(spec)
    trials = study.get_trials(deepcopy=False)
    counts = Counts.of(trials)
    lines = [
        f"study   {spec.name}  ({storage.mask_url(spec.storage)})  metric {spec.metric} ({spec.direction})",
        f"trials  {counts.finished}/{spec.n_trials} finished: {counts.complete} complete, {counts.pruned} pruned; "
        f"{counts.failed} failed, {counts.running} running, {counts.waiting} waiting",
    ]
    top_trials = ranked(study)
    if top_trials:
        best = top_trials[0]
        where = best.user_attrs.get("best_examples")
        lines.append(
            f"best    #{best.number} {spec.metric} {best.value:.4f}"
            + (f" after {where} examples (epoch {best.user_attrs.get('best_epoch')})" if where else "")
        )
        lines.append(f"        {common.format_params(best.params)}")
        rows = [
            [t.number, t.value, *[t.params.get(k) for k in spec.searched], t.user_attrs.get("wall_seconds")]
            for t in top_trials[:top]
        ]
        lines += ["", common.table(["#", spec.metric, *spec.searched, "seconds"], rows)]
    try:
        retrained = retrain.status_lines(retrain.recorded(study))
    except UserError as exc:  # a record of another hpo version: say so, and still show the trials
        retrained = [f"retrain {exc}"]
    if retrained:
        lines += [""] + retrained
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        now = dt.datetime.now()
        rows = [
            [t.number, common.duration((now - t.datetime_start).total_seconds()) if t.datetime_start else None,
             max(t.intermediate_values) if t.intermediate_values else 0, common.format_params(t.params)]
            for t in running
        ]
        lines += ["", "running:", common.table(["#", "for", "examples", "params"], rows)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        lines += ["", "failed:"] + [f"  #{t.number}: {t.user_attrs.get('fail_reason', 'unknown')}" for t in failed[-5:]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UserError(f"--top {args.top}: must be at least 1")
    print(study_report(common.load(args), top=args.top))
    return 0
