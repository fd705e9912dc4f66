"""A real worker process with a plain objective that sleeps instead of training.

Budget, kill, outage, hang and queue tests are about processes and the
database, not about models; a sleeping objective makes them fast and
lets each test choose how long a trial lasts. Usage:

    python sleepy_worker.py STUDY.yaml WORKER_INDEX SECONDS_PER_TRIAL [hang|native-hang]

``hang`` loops in Python in trial 0 (the soft trial_timeout ends it);
``native-hang`` also ignores SIGALRM there, as code that never returns to
Python would, so only the hard limit (an exit with code 124) ends it.
``deferred`` asks for SIGTERM to be deferred (as a checkpointing trial does)
and then never looks at the request, as a loop stuck in a long evaluation.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

from hpo.runner import Preempted, WorkerOptions, run_worker
from hpo.signals import deferred_preemption
from hpo.spec import load_spec


def main() -> int:
    spec = load_spec(sys.argv[1])
    index, seconds = int(sys.argv[2]), float(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    hang = mode in ("hang", "native-hang")
    logging.basicConfig(level=logging.INFO, format=f"[w{index}] %(message)s")

    def objective(trial):
        params = spec.sample(trial)
        if mode == "deferred":
            with deferred_preemption(hard_after=1.5):
                print(f"started trial {trial.number}", flush=True)  # inside: a SIGTERM from now on is deferred
                time.sleep(seconds)
        else:
            print(f"started trial {trial.number}", flush=True)
        steps = 5
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            trial.report(params.learning_rate * step, step=step)
        if mode == "native-hang" and trial.number == 0:
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while hang and trial.number == 0:
            time.sleep(0.1)  # a deadlocked data loader, as far as anyone can tell
        print(f"finished trial {trial.number}", flush=True)
        return params.learning_rate

    options = WorkerOptions(name=f"w{index}", index=index, poll_interval=0.2, handle_signals=True)
    signal.signal(signal.SIGUSR1, lambda signum, frame: options.stop.set())  # as hpo launch's workers: retire
    try:
        run_worker(spec, objective, options)
    except Preempted:
        return 143
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
