"""``hpo launch STUDY``: run trials until the study's global budget is spent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from hpo.cli import common, preflight
from hpo.cli.status import study_report
from hpo import note, progress as progress_lib
from hpo import distributed, workers
from hpo.errors import UserError
from hpo.runner import Preempted, WorkerOptions, run_worker


def add_parser(sub) -> None:
    parser = sub.add_parser("launch", help="run trials until the study's budget (n_trials, timeout) is spent")
    common.add_study_argument(parser)
    parser.add_argument("--gpus", help="'all' or a list such as 0,2: one worker process per GPU, pinned to it")
    parser.add_argument("--workers", type=int, help="worker processes (per GPU with --gpus; CPU workers without)")
    parser.add_argument("--workers-per-gpu", choices=["auto"], dest="per_gpu",
                        help="with --gpus: start one worker per GPU, then add one at a time while the first trials' peak "
                             "memory leaves room and the GPU's examples/s still rise (says what it chose)")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    parser.add_argument(
        "--allow-changes", action="store_true",
        help="resume a study whose file changed metric, data, model, task, seed or search space since it was launched "
             "(refused by default: the existing trials ran under the old values)",
    )
    # Internal: set by the parent for each worker process it starts.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
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


def check_flags(args: argparse.Namespace) -> list[str] | None:
    """--workers and --gpus as they will be used, refused before the study file is read.

    Returns the GPUs to pin workers to (None: CPU workers). A GPU that is not
    visible would give a worker named after it running on the CPU.
    """
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    if args.per_gpu and args.worker_index is None:
        if args.gpus is None:
            raise UserError("--workers-per-gpu auto: needs --gpus (it sizes each GPU's share by the trials' memory there)")
        if args.workers is not None:
            raise UserError("--workers-per-gpu auto: drop --workers (auto chooses how many per GPU)")
    if args.gpus is None or args.worker_index is not None:
        return None
    visible = workers.visible_gpus()
    if not visible:
        raise UserError(f"--gpus {args.gpus}: no GPU is visible on this host; use --workers N for CPU workers")
    gpus = workers.parse_gpus(args.gpus, visible)
    unknown = [g for g in gpus if g not in visible and not g.startswith(("GPU-", "MIG-"))]  # UUIDs cannot be checked here
    if unknown:
        raise UserError(f"--gpus {args.gpus}: no GPU {', '.join(unknown)} on this host (visible: {', '.join(visible)})")
    return gpus


def run(args: argparse.Namespace) -> int:
    gpus = check_flags(args)
    group = distributed.from_env()
    spec = common.load(args)
    if group is not None:
        distributed.check_group(group, spec.runtime.processes_per_trial)
        if args.worker_index is None and (args.gpus is not None or args.workers is not None):
            raise UserError("--gpus/--workers: not under torchrun, which placed the processes itself; "
                            "drop them (or run hpo launch without torchrun)")
    leader = group is None or group.leader
    preflight.check_search_options(spec, args.study)
    if leader:  # the other ranks of a trial never open the storage: rank 0 alone talks to the study
        preflight.check_storage(spec)
    if args.quiet and not args.debug:
        logging.getLogger().setLevel(logging.WARNING)
    if args.worker_index is None and leader:  # the parent checked for its workers
        changed = preflight.check_resume(spec, args.allow_changes)
        if changed:
            logging.getLogger("hpo.launch").info("study file changed since the last launch: %s", "; ".join(changed))
    processes = spec.runtime.processes_per_trial
    if processes > 1 and args.per_gpu:
        raise UserError("--workers-per-gpu auto: not with runtime.processes_per_trial > 1 (each trial group has GPUs of its own)")
    if processes > 1 and group is None:
        if args.worker_index is None and (gpus or (args.workers or 1) > 1):
            return _run_groups(args, spec, gpus)
        command = distributed.torchrun_command(processes, sys.argv[1:])
        print(f"starting one trial on {processes} processes: {' '.join(command[1:5])}", flush=True)
        sys.stdout.flush()
        os.environ.update(distributed.TORCHRUN_ENV)
        os.execv(command[0], command)  # torchrun becomes this process: it gets the scheduler's SIGTERM
    if group is not None:
        return _run_rank(args, spec, group)
    if args.worker_index is None and (gpus or (args.workers or 1) > 1):
        return _run_several(args, spec, gpus)
    _run_one_worker(args, spec)
    if args.worker_index is None:
        print()
        print(study_report(spec))
    return 0


def _children_args(args: argparse.Namespace) -> tuple[bool, list[str]]:
    """Whether the parent draws the live panel, and the flags its children get: in a terminal the parent
    draws one panel for every worker (read from the storage) and they keep quiet; elsewhere each worker
    prints its own lines."""
    live = not args.quiet and progress_lib.is_terminal(sys.stdout)
    return live, (["--debug"] if args.debug else []) + (["--quiet"] if args.quiet or live else [])


def _run_several(args: argparse.Namespace, spec, gpus: list[str] | None) -> int:
    tend = None
    if args.per_gpu == "auto":
        from hpo import autoshare

        slots = autoshare.first_slots(gpus)
        tend = autoshare.AutoShare(lambda: _existing_study(spec), gpus).tend
        print(f"starting {len(slots)} workers: {', '.join(s.name for s in slots)}; "
              "more per GPU once the first trials show what fits and pays", flush=True)
    else:
        slots = workers.plan(gpus, args.workers)
        print(f"starting {len(slots)} workers: {', '.join(s.name for s in slots)}", flush=True)
    live, extra = _children_args(args)
    with progress_lib.choose(spec, quiet=not live):
        code = workers.run(args.study, spec.storage, slots, extra, tend=tend)
    print()
    print(study_report(spec))
    return code


def _existing_study(spec):
    """The study once a worker has created it, else None (the parent never creates it)."""
    import optuna

    from hpo import storage

    try:
        return optuna.load_study(study_name=spec.name, storage=storage.open_storage(spec.storage))
    except KeyError:
        return None


def _run_groups(args: argparse.Namespace, spec, gpus: list[str] | None) -> int:
    """Several trials of several processes at once: one torchrun per trial group, each on its own GPUs
    (or its share of the cores) and its own rendezvous, supervised like workers."""
    processes = spec.runtime.processes_per_trial
    slots = workers.plan_groups(gpus, args.workers, processes)
    print(f"starting {len(slots)} trial groups of {processes} processes: {', '.join(s.name for s in slots)}", flush=True)
    live, extra = _children_args(args)
    os.environ.update(distributed.TORCHRUN_ENV)  # the groups inherit it

    def command(slot: workers.WorkerSlot) -> list[str]:
        return distributed.torchrun_command(processes, ["launch", args.study, "--worker-index", str(slot.index), *extra])

    with progress_lib.choose(spec, quiet=not live):
        code = workers.run(args.study, spec.storage, slots, extra, command=command)
    print()
    print(study_report(spec))
    return code


def _name_logs(args: argparse.Namespace, name: str) -> None:
    """A worker started by ``hpo launch --workers/--gpus`` prefixes its lines with its name."""
    if args.worker_index is not None:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s [{name}] %(message)s", "%H:%M:%S"))


def _run_one_worker(args: argparse.Namespace, spec, wrap=lambda objective: objective) -> None:
    import objectives

    name = os.environ.get("HPO_WORKER_NAME", "worker-0")
    _name_logs(args, name)
    objective = objectives.build(spec)  # reads data, tokenizes, loads weights: fails before any trial
    progress = progress_lib.choose(spec, quiet=args.quiet, live=args.worker_index is None)
    signal.signal(signal.SIGTERM, _raise_preempted)  # until run_worker's own guard takes over
    options = WorkerOptions(
        name=name,
        index=args.worker_index or 0,
        on_study_open=lambda study: note.annotate(study, spec),
        on_trial_start=progress.trial_started,
        on_trial_end=progress.trial_ended,
        handle_signals=True,
    )
    # SIGUSR1: finish the trial, then stop (--workers-per-gpu auto retires a worker that did not pay).
    signal.signal(signal.SIGUSR1, lambda signum, frame: options.stop.set())
    with progress:
        run_worker(spec, wrap(objective), options, study_attributes(spec, objective))


def _run_rank(args: argparse.Namespace, spec, group: distributed.Group) -> int:
    """One rank of a trial group under torchrun (ours, or one a user or scheduler started across nodes):
    global rank 0 is the worker, the others follow it."""
    import objectives

    distributed.watch_parent()  # torchrun killed -9: its ranks must not train on beside the one started again
    distributed.init(group, timeout=spec.heartbeat.grace_period)
    try:
        if not group.leader:  # rank 0 prints the trial's progress; the others only what is theirs
            _name_logs(args, os.environ.get("HPO_WORKER_NAME", "worker-0"))
            logging.getLogger().setLevel(logging.WARNING)
            logging.getLogger("hpo.distributed").setLevel(logging.WARNING if args.quiet else logging.INFO)
            distributed.follow(objectives.build(spec), group)
            return 0
        _run_one_worker(args, spec, wrap=lambda objective: distributed.Leader(objective, spec.sample))
        distributed.Leader.stop()
        if args.worker_index is None:  # a trial group of several prints nothing: its parent reports
            print()
            print(study_report(spec))
        return 0
    finally:
        distributed.close()
