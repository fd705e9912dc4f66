"""``hpo report STUDY -o DIR``: a static HTML report with PNG figures, to share."""

from __future__ import annotations

import argparse
from pathlib import Path

from optuna.trial import TrialState

from hpo.cli import common
from hpo.cli.status import load_existing
from hpo.errors import UserError
from hpo.report import write_report


def add_parser(sub) -> None:
    parser = sub.add_parser("report", help="write a static HTML report with PNG figures (index.html in DIR)")
    common.add_study_argument(parser)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for index.html and the figures (created if missing)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = common.load(args)
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {folder}: exists and is not a folder")
    study = load_existing(spec)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        failed = sum(t.state == TrialState.FAIL for t in trials)
        why = f" ({failed} failed: see `hpo status`)" if failed else ""
        raise UserError(f"study {spec.name!r} has no complete or pruned trial yet{why}; nothing to report")
    index, figures = write_report(spec, study, folder)
    drawn = [f for f in figures if f.path is not None]
    print(f"wrote {index} and {len(drawn)} figures: {', '.join(f.file for f in drawn)}")
    for figure in figures:
        if figure.path is None:
            print(f"  not drawn: {figure.title} ({figure.skipped})")
    return 0
