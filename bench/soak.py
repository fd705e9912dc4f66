"""Soak: a fleet of workers on PostgreSQL under a seeded storm of faults; does the study end exact?

    python bench/soak.py [--minutes 10] [--seed 0] [--workers 4] [--fault-every 4] [--trial-seconds 3]

Starts a PostgreSQL server of its own (initdb in a temporary folder, a port
of its own), so restarting it disturbs no one else, and stops it at the end
whatever happens. Four worker processes (``--worker`` mode of this script:
hpo's runner with an objective that sleeps a few seconds and reports on the
way) share one study, restarted by this supervisor whenever they die, as a
scheduler would restart a pod. On a seeded schedule (one fault every
``--fault-every`` seconds on average) it injects: kill -9 of a worker, SIGTERM
of a worker, a PostgreSQL restart, and connection drops (pg_terminate_backend
of one worker's connections, or of every worker's). Faults go on until the
study has finished its budget, which is sized for about ``--minutes``.

Prints the faults injected, trials finished, the budget error (finished minus
n_trials), trials left RUNNING, results lost (a value the objective computed
that is neither in its trial nor in ``lost_results``, leaving out those of a
worker killed with -9 before it could record them, which are retried), and
the claim latency (from the end of one trial, or the study's opening, to the
start of the next). The last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_BIN = Path("/usr/lib/postgresql") / (sorted(os.listdir("/usr/lib/postgresql"))[-1] if Path("/usr/lib/postgresql").is_dir() else "15") / "bin"
KINDS = ("kill9", "sigterm", "pg_restart", "drop_one", "drop_all")
WEIGHTS = (3, 3, 1, 2, 1)


# ---- the worker process -------------------------------------------------------------------------

def worker(study_path: str, index: int, trial_seconds: float, events: str) -> int:
    """One worker: hpo's runner, a sleeping objective, and a line per event for the supervisor."""
    import logging

    from hpo.runner import Preempted, WorkerOptions, run_worker
    from hpo.spec import load_spec

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [w{index}/{os.getpid()}] %(message)s", datefmt="%H:%M:%S")
    spec = load_spec(study_path)
    out = open(events, "a", buffering=1)
    last = {"t": time.monotonic()}

    def event(kind: str, **data) -> None:
        out.write(json.dumps({"event": kind, "pid": os.getpid(), **data}) + "\n")

    def objective(trial):
        params = spec.sample(trial)
        rng = random.Random(trial.number)
        seconds = trial_seconds * rng.uniform(0.5, 1.5)
        for step in range(1, 4):
            time.sleep(seconds / 3)
            trial.report(params.learning_rate * step, step=step)
        event("computed", number=trial.number, value=params.learning_rate)
        return params.learning_rate

    def opened(study) -> None:
        last["t"] = time.monotonic()

    def started(name, trial) -> None:
        event("claimed", number=trial.number, latency=time.monotonic() - last["t"])

    def ended(ev) -> None:
        event("recorded", number=ev.trial.number, state=ev.trial.state.name)
        last["t"] = time.monotonic()

    options = WorkerOptions(
        name=f"w{index}", index=index, poll_interval=0.5, handle_signals=True,
        on_study_open=opened, on_trial_start=started, on_trial_end=ended,
    )
    try:
        run_worker(spec, objective, options)
    except Preempted:
        return 143
    except KeyboardInterrupt:
        return 130
    return 0


# ---- a PostgreSQL server of our own -------------------------------------------------------------

class PrivateServer:
    def __init__(self, folder: Path, port: int):
        self.data, self.port, self.log = folder / "pgdata", port, folder / "pg.log"
        self.sockets = folder / "sock"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        self.sockets.mkdir(parents=True)
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, "postgres")
            for path in (self.data, self.sockets):
                shutil.chown(path, "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", *args)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass


def _sql(url: str, statement: str, **params) -> list:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(text(statement), params))
            conn.commit()
            return rows
    finally:
        engine.dispose()


# ---- the supervisor -----------------------------------------------------------------------------

def soak(args: argparse.Namespace) -> dict:
    import yaml

    folder = Path(tempfile.mkdtemp(prefix="hpo-soak-"))
    server = PrivateServer(folder, args.port)
    rng = random.Random(args.seed)
    # The objective plus what faults cost (restarts, trials lost and run again): about 0.8 s a
    # trial on the 2-core machine (550 trials in 526 s with 4 workers, 3 s trials, a fault every 4 s).
    per_trial = args.trial_seconds + 0.8
    n_trials = args.n_trials or max(20, int(args.minutes * 60 * args.workers / per_trial))
    events = folder / "events.jsonl"
    study_path = folder / "soak.yaml"
    faults: dict[str, int] = {kind: 0 for kind in KINDS}
    killed9: set[int] = set()
    children: dict[int, subprocess.Popen] = {}
    exits: list[int] = []
    logs = open(folder / "workers.log", "w")
    start = time.monotonic()
    try:
        server.init()
        study_path.write_text(yaml.safe_dump({
            "name": f"soak-{uuid.uuid4().hex[:8]}", "storage": server.url, "n_trials": n_trials,
            "model": "unused", "data": {"source": "demo"}, "sampler": {"type": "random"}, "pruner": {"type": "none"},
            "heartbeat": {"interval": 1, "grace_period": 6, "max_retry": 50},
            "search_space": {"learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True}, "batch_size": {"choices": [8, 16, 32]},
                             "epochs": 1, "freeze_depth": 0},
        }))
        spec_name = yaml.safe_load(study_path.read_text())["name"]

        def spawn(index: int) -> None:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(study_path), str(index),
                       str(args.trial_seconds), str(events)]
            children[index] = subprocess.Popen(command, env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)

        for index in range(args.workers):
            spawn(index)
        next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * args.fault_every
        deadline = start + args.minutes * 60 * 3 + 300
        done = False
        while not done:
            time.sleep(0.2)
            for index, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                exits.append(code)
                del children[index]
                if code != 0:
                    spawn(index)  # what a scheduler does with a failed pod
            if time.monotonic() >= next_fault and children:
                kind = rng.choices(KINDS, WEIGHTS)[0]
                victim = children[rng.choice(sorted(children))]
                try:
                    if kind == "kill9":
                        killed9.add(victim.pid)
                        victim.send_signal(signal.SIGKILL)
                    elif kind == "sigterm":
                        victim.send_signal(signal.SIGTERM)
                    elif kind == "pg_restart":
                        server.restart()
                    elif kind == "drop_one":
                        _sql(server.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a",
                             a=f"hpo-{victim.pid}")
                    else:
                        _sql(server.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'hpo-%'")
                    faults[kind] += 1
                except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                    print(f"fault {kind} not injected: {exc}", file=sys.stderr)
                next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * args.fault_every
            if not children:
                done = True  # every worker left with 0: the budget is spent
            elif time.monotonic() > deadline:
                print("soak: deadline passed; the fleet did not finish", file=sys.stderr)
                break
        for child in children.values():
            child.kill()
            child.wait()
        return _measure(server.url, spec_name, n_trials, events, killed9, faults, exits, time.monotonic() - start, folder, done)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
        server.stop()
        logs.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def _measure(url, name, n_trials, events: Path, killed9, faults, exits, elapsed, folder, finished_cleanly) -> dict:
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=name, storage=url.replace("postgresql+psycopg", "postgresql+psycopg"))
    trials = study.trials
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    lost_attr = study.user_attrs.get("lost_results", {})
    by_number = {t.number: t for t in trials}
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    recorded = {(e["pid"], e["number"]) for e in lines if e["event"] == "recorded"}
    lost, retried_after_kill = [], 0
    for e in (e for e in lines if e["event"] == "computed"):
        trial = by_number.get(e["number"])
        kept = trial is not None and trial.state == TrialState.COMPLETE and trial.value == e["value"]
        if kept or lost_attr.get(str(e["number"]), {}).get("value") == e["value"]:
            continue
        if e["pid"] in killed9 and (e["pid"], e["number"]) not in recorded:
            retried_after_kill += 1
            continue
        lost.append(e["number"])
    originals = [tuple(sorted(t.params.items())) for t in trials if t.params and "retry_of" not in t.user_attrs]
    duplicates = len(originals) - len(set(originals))  # the same parameters twice, not as a declared retry
    latencies = sorted(e["latency"] for e in lines if e["event"] == "claimed")
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    return {
        "elapsed_s": round(elapsed, 1),
        "faults": sum(faults.values()),
        "faults_by_kind": faults,
        "n_trials": n_trials,
        "finished": finished,
        "budget_error": finished - n_trials,
        "running_left": states[TrialState.RUNNING],
        "waiting_left": states[TrialState.WAITING],
        "failed": states[TrialState.FAIL],
        "results_lost": len(lost),
        "duplicates": duplicates,
        "lost_numbers": lost[:20],
        "computed_by_killed_workers_retried": retried_after_kill,
        "lost_results_attr": len(lost_attr),
        "worker_exits": {str(code): exits.count(code) for code in sorted(set(exits))},
        "claim_latency_s": {
            "max": round(latencies[-1], 2) if latencies else None,
            "p50": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "p99": round(latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        },
        "finished_cleanly": finished_cleanly,
        "folder": str(folder),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return worker(argv[1], int(argv[2]), float(argv[3]), argv[4])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="about how long the study lasts (sizes n_trials)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults")
    parser.add_argument("--trial-seconds", type=float, default=3.0, help="mean seconds an objective sleeps")
    parser.add_argument("--n-trials", type=int, help="the budget (default: sized from --minutes)")
    parser.add_argument("--port", type=int, default=5499, help="port of the private PostgreSQL server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server log, worker logs, events)")
    args = parser.parse_args(argv)
    result = soak(args)
    print(f"faults injected:   {result['faults']} ({', '.join(f'{k} {v}' for k, v in result['faults_by_kind'].items())})")
    print(f"trials finished:   {result['finished']} of n_trials {result['n_trials']} in {result['elapsed_s']:.0f}s"
          f" ({result['failed']} FAIL, {result['waiting_left']} WAITING left)")
    print(f"budget error:      {result['budget_error']}")
    print(f"RUNNING left:      {result['running_left']}")
    print(f"duplicate trials:  {result['duplicates']} (same parameters, not a declared retry)")
    print(f"results lost:      {result['results_lost']}  (computed by workers killed -9 before recording, retried: "
          f"{result['computed_by_killed_workers_retried']}; kept in lost_results: {result['lost_results_attr']})")
    latency = result["claim_latency_s"]
    print(f"claim latency:     max {latency['max']}s, p99 {latency['p99']}s, p50 {latency['p50']}s")
    print(f"worker exits:      {result['worker_exits']}")
    print(json.dumps(result))
    ok = not (result["budget_error"] or result["running_left"] or result["results_lost"] or result["duplicates"]) and result["finished_cleanly"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
