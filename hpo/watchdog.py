"""A wall-clock limit per trial, for trials that hang rather than die.

Heartbeats catch dead processes; a deadlocked data loader keeps its process
alive and its heartbeat beating. The soft limit raises ``TrialTimeout`` in the
worker's main thread (through SIGALRM), which ends anything waiting in
Python. Native code that never returns to Python cannot be interrupted that
way, so a hard limit a little later records the failure and ends the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Callable, Iterator

log = logging.getLogger("hpo.watchdog")

# Seconds past the soft limit before the process is ended (shorter in tests of the hard limit).
HARD_LIMIT_EXTRA = float(os.environ.get("HPO_HARD_LIMIT_EXTRA", "60"))
EXIT_HUNG = 124


class TrialTimeout(Exception):
    """The trial ran past ``trial_timeout``."""


@contextlib.contextmanager
def time_limit(seconds: float | None, on_hard_limit: Callable[[], None]) -> Iterator[None]:
    if not seconds:
        yield
        return
    soft = threading.current_thread() is threading.main_thread()
    if soft:
        def _raise(signum, frame):
            raise TrialTimeout(f"trial_timeout: ran longer than {seconds:g}s")

        previous = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _hard():
        log.error("trial still running %gs past trial_timeout; ending this worker", HARD_LIMIT_EXTRA)
        try:
            on_hard_limit()
        finally:
            os._exit(EXIT_HUNG)

    hard = threading.Timer(seconds + (HARD_LIMIT_EXTRA if soft else 0.0), _hard)
    hard.daemon = True
    hard.start()
    try:
        yield
    finally:
        hard.cancel()
        if soft:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
