"""``hpo export STUDY -o best.yaml``: the winner as a complete, re-runnable study file."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from hpo import storage
from hpo.cli.status import load_existing
from hpo.errors import UserError
from hpo.cli import common
from hpo.spec import StudySpec
from hpo.yamlio import dump_yaml


def add_parser(sub) -> None:
    parser = sub.add_parser("export", help="write the best configuration as a re-runnable study file")
    common.add_study_argument(parser)
    parser.add_argument("-o", "--output", required=True, help="where to write (best.yaml)")
    parser.set_defaults(handler=run)


def best_spec(spec: StudySpec) -> tuple[StudySpec, int, float]:
    """The study with the winner's parameters fixed, as its own one-trial study."""
    study = load_existing(spec)
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(f"study {spec.name!r} has no completed trial yet; nothing to export") from None
    winner = spec.with_fixed(best.params).model_copy(
        update={"name": f"{spec.name}-best", "n_trials": 1, "timeout": None}
    )
    return winner, best.number, best.value


def best_yaml(spec: StudySpec) -> str:
    winner, number, value = best_spec(spec)
    document = winner.model_dump(mode="json")
    document["pruner"] = {"type": "none"}
    if storage.mask_url(spec.storage) != spec.storage:
        document.pop("storage")  # never write a password to disk; HPO_STORAGE supplies it
    header = (
        f"# Best trial #{number} of study {spec.name!r}: {spec.metric} = {value:.4f} on validation.\n"
        f"# Re-run it with: hpo launch <this file>\n"
    )
    return header + dump_yaml(document)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(staging, path)


def run(args: argparse.Namespace) -> int:
    spec = common.load(args)
    output = Path(args.output)
    write_atomically(output, best_yaml(spec))
    print(f"wrote {output}")
    return 0
