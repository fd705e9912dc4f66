"""Pieces every subcommand shares: the study argument, loading, printing tables."""

from __future__ import annotations

import argparse
from hpo.fmt import duration, format_params, table  # noqa: F401 - re-exported for subcommands
from hpo.spec import StudySpec, load_spec


def add_study_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="the study file (study.yaml)")
    parser.add_argument(
        "--storage",
        help="database URL overriding the study file's and HPO_STORAGE (e.g. postgresql+psycopg://user@host/db)",
    )


def load(args: argparse.Namespace) -> StudySpec:
    return load_spec(args.study, storage=args.storage)
