"""``hpo launch STUDY``: run trials until the study's global budget is spent."""

from __future__ import annotations

import argparse
import signal

from hpo.cli import common, preflight
from hpo.cli.status import study_report
from hpo.progress import LineProgress
from hpo.runner import Preempted, WorkerOptions, run_worker


def add_parser(sub) -> None:
    parser = sub.add_parser("launch", help="run trials until the study's budget (n_trials, timeout) is spent")
    common.add_study_argument(parser)
    parser.set_defaults(handler=run)


def _raise_preempted(signum, frame) -> None:
    raise Preempted()


def study_attributes(spec, objective) -> dict:
    """What the study keeps about itself: the resolved spec (no storage URL: it may hold a password)."""
    attrs = {
        "spec": spec.model_dump(mode="json", exclude={"storage"}),
        "metric": spec.metric,
        "n_trials": spec.n_trials,
    }
    describe = getattr(objective, "describe", None)
    if describe:
        attrs.update(describe())
    return attrs


def run(args: argparse.Namespace) -> int:
    import objectives

    spec = common.load(args)
    preflight.check_search_options(spec)
    preflight.check_storage(spec)
    objective = objectives.build(spec)  # reads data, tokenizes, loads weights: fails before any trial
    progress = LineProgress(spec.metric)
    signal.signal(signal.SIGTERM, _raise_preempted)
    options = WorkerOptions(on_trial_start=progress.trial_started, on_trial_end=progress.trial_ended)
    run_worker(spec, objective, options, study_attributes(spec, objective))
    print()
    print(study_report(spec))
    return 0
