"""Ctrl-C and SIGTERM that interrupt training, never the bookkeeping around it.

A signal that lands while a worker claims or records a trial (a storage write)
would leave a trial RUNNING forever. So signals raise at once only while the
objective runs; anywhere else they are remembered, the worker stops after the
current storage operation, and the interruption is raised then.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Preempted(BaseException):
    """Raised in the worker's main thread when the scheduler asks it to stop (SIGTERM)."""


class SignalGuard:
    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._in_objective = False
        self.pending: type[BaseException] | None = None

    def _handle(self, signum, frame) -> None:
        exc = Preempted if signum == signal.SIGTERM else KeyboardInterrupt
        if self._in_objective:
            raise exc()
        self.pending = exc
        self._stop.set()

    @contextlib.contextmanager
    def installed(self, enabled: bool) -> Iterator["SignalGuard"]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def objective_running(self) -> Iterator[None]:
        """Deliver signals immediately inside; one that came just before is delivered on entry."""
        self._in_objective = True
        try:
            if self.pending is not None:
                raise self.pending()
            yield
        finally:
            self._in_objective = False

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise self.pending()
