"""``hpo export STUDY -o DIR``: everything needed to use or reproduce the winner.

``-o exports/demo`` writes a folder (best.yaml, training_args.json,
metrics.json, README.md and, once retrained, model/), swapped in whole;
``-o best.yaml`` (a path ending .yaml or .yml) writes the study file alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpo import atomic, export
from hpo.cli import common
from hpo.cli.status import load_existing


def add_parser(sub) -> None:
    parser = sub.add_parser("export", help="write the winner: study file, Trainer arguments, metrics, model card and model")
    common.add_study_argument(parser)
    parser.add_argument(
        "-o", "--output", required=True,
        help="a folder for the whole export (exports/demo), or a file ending .yaml for the study file alone (best.yaml)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = common.load(args)
    output = Path(args.output)
    study = load_existing(spec)
    winner = export.find_winner(study, spec)
    if output.suffix.lower() in (".yaml", ".yml"):
        atomic.write_text(output, export.best_yaml(spec, winner))
        print(f"wrote {output}")
        return 0
    model = export.export_folder(output, spec, study, winner)
    names = ", ".join(export.ENTRIES[:-1])
    if model is None:
        print(f"wrote {output}: {names}")
        print(f"no model exists yet: run `hpo retrain {args.study}` to retrain and test the winner, then export again")
    else:
        print(f"wrote {output}: {names}, model/ (trial #{winner.trial.number}, seed {winner.record.model.seed})")
    return 0
