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
    parser.add_argument(
        "--merge", action="store_true",
        help="adapter studies: also write merged/, the adapter folded into its base (loads with the Auto classes, no PEFT)",
    )
    parser.add_argument(
        "--from-checkpoint", action="store_true",
        help="model/ from the best trial's own weights kept by checkpoints.keep: best (no retrain, no test score)",
    )
    parser.set_defaults(handler=run)


def _merger(spec, study):
    """The objective's merge, wired here: the search side never imports the model code."""
    from objectives.merging import merge_adapter

    label_names = study.user_attrs.get("label_names") or []
    return lambda adapter_dir, out_dir: merge_adapter(spec, label_names, adapter_dir, out_dir)


def _kept_writer(spec, study, winner, payload):
    """Writes the kept weights as a model folder (objective code, wired here like the merge)."""
    from hpo import retrain
    from objectives.kept_model import save_kept

    label_names = study.user_attrs.get("label_names") or []
    params = retrain.params_of(spec, winner.trial)
    return lambda out_dir: save_kept(spec, label_names, params, payload, out_dir)


def run(args: argparse.Namespace) -> int:
    spec = common.load(args)
    output = Path(args.output)
    study = load_existing(spec)
    kept = None
    if args.from_checkpoint:
        winner, payload = export.kept_winner(study, spec)
        kept = _kept_writer(spec, study, winner, payload)
    else:
        winner = export.find_winner(study, spec)
    if output.suffix.lower() in (".yaml", ".yml"):
        atomic.write_text(output, export.best_yaml(spec, winner))
        print(f"wrote {output}")
        return 0
    model = export.export_folder(output, spec, study, winner, _merger(spec, study) if args.merge else None, kept)
    names = ", ".join(export.ENTRIES[:4])
    if model is None:
        print(f"wrote {output}: {names}")
        print(f"no model exists yet: run `hpo retrain {args.study}` to retrain and test the winner, then export again")
    else:
        merged = ", merged/" if args.merge else ""
        source = "its own weights from the search, not retrained" if kept else f"seed {winner.record.model.seed}"
        print(f"wrote {output}: {names}, model/{merged} (trial #{winner.trial.number}, {source})")
    return 0
