"""The ``hpo`` command line: parse once, print, map errors to exit codes.

Exit codes: 0 success, 1 the study ran but could not finish (every trial
failing), 2 bad input (study file, storage, data or model; one line, no
traceback unless ``--debug``), 130 Ctrl-C, 143 preempted by SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from hpo import __version__
from hpo.cli import dashboard, export, launch, report, retrain, status, validate
from hpo.errors import UserError

COMMANDS = (validate, launch, status, export, dashboard, report, retrain)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PREEMPTED = 0, 1, 2, 130, 143


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes read like every other bad input: one line, exit 2 (argparse prints its usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"hpo: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="hpo", description="Hyperparameter search for fine-tuning pretrained models.")
    top.add_argument("--version", action="version", version=f"hpo {__version__}")
    top.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return top


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    # PEFT asks transformers 5 a renamed question on every adapter it attaches: once per trial.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)
    logging.getLogger("optuna").setLevel(logging.WARNING)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("urllib3", "filelock", "fsspec", "httpx", "httpcore", "datasets", "huggingface_hub", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from objectives.errors import ObjectiveError  # the edge is the one place that knows both parts

    return (UserError, ObjectiveError)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_libraries()
    _setup_logging(args.debug)
    try:
        return args.handler(args) or EXIT_OK
    except _user_error_types() as exc:
        if args.debug:
            raise
        print(f"hpo: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from hpo.errors import GroupOutOfStep
        from hpo.runner import TooManyFailures

        if isinstance(exc, (TooManyFailures, GroupOutOfStep)) and not args.debug:
            print(f"hpo: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise
    except BaseException as exc:
        from hpo.runner import Preempted

        if isinstance(exc, Preempted):
            print("hpo: preempted (SIGTERM); the running trial was recorded and re-queued", file=sys.stderr)
            return EXIT_PREEMPTED
        raise


if __name__ == "__main__":
    sys.exit(main())
