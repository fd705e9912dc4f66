"""``hpo retrain STUDY``: retrain the winner once per seed, test it once, record the results on the study."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from hpo import retrain
from hpo.cli import common
from hpo.cli.status import load_existing
from hpo.errors import UserError
from hpo.spec import RetrainSpec, StudySpec


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "retrain", help="retrain the winner once per seed, test it once on the test split, record the results"
    )
    common.add_study_argument(parser)
    parser.add_argument("--top-k", type=int, metavar="K", help="re-run the K best trials on every seed and keep the best mean (default: retrain.top_k, 1)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds to retrain with (default: retrain.seeds, 0 1 2)")
    parser.add_argument("--train-on", choices=["train+validation", "train"], help="what to retrain on (default: retrain.train_on, train+validation)")
    parser.add_argument("--force", action="store_true", help="retrain even if the study was already retrained with these settings")
    parser.set_defaults(handler=run)


def with_overrides(spec: StudySpec, args: argparse.Namespace) -> StudySpec:
    """The study's ``retrain`` section with the command line's options applied, checked like the file."""
    options = {"top_k": args.top_k, "seeds": args.seeds, "train_on": args.train_on}
    changes = {key: value for key, value in options.items() if value is not None}
    try:
        settings = RetrainSpec.model_validate({**spec.retrain.model_dump(), **changes})
    except ValidationError as exc:
        flags = {"top_k": "--top-k", "seeds": "--seeds", "train_on": "--train-on", "on": "--train-on"}
        problems = [f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise UserError("; ".join(dict.fromkeys(problems))) from None
    return spec.model_copy(update={"retrain": settings})


def run(args: argparse.Namespace) -> int:
    spec = with_overrides(common.load(args), args)
    study = load_existing(spec)
    plan = retrain.make_plan(study, spec)  # no completed trial: exit 2 before anything is loaded
    done = None if args.force else retrain.still_valid(study, plan)  # --force replaces even a record it cannot read
    if done:
        print(retrain.report(done))
        print(f"\nalready retrained with these settings on {done.finished_at}; nothing to do (--force retrains again)")
        return 0
    import objectives  # the edge is the one place that wires the objective to the search

    objective = objectives.build(spec)
    record = retrain.run(spec, study, plan, objective)
    print(retrain.report(record))
    return 0
