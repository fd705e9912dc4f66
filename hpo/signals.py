"""Ctrl-C and SIGTERM that interrupt training, never the bookkeeping around it.

A signal that lands while a worker claims or records a trial (a storage write)
would leave a trial RUNNING forever. So signals raise at once only while the
objective runs; anywhere else they are remembered, the worker stops after the
current storage operation, and the interruption is raised then.

A trial that can save itself (checkpoints) asks for SIGTERM to be deferred
while it trains: the signal then only raises a flag that the training loop
reads at its next batch boundary, where it writes a checkpoint and raises
``Preempted`` itself. Should the loop not get there within ``hard_after``
seconds (a long evaluation, a hung kernel), the signal is delivered again
and raises at once, so the worker still exits inside the scheduler's grace
period (30 s on Kubernetes and Docker) with the last checkpoint written.
"""

from __future__ import annotations

import contextlib
import os
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
        deferral = _deferral
        if self._in_objective and exc is Preempted and deferral is not None and not deferral.requested:
            deferral.request()
            self._stop.set()
            return
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


HARD_AFTER = 20.0  # seconds a deferred SIGTERM waits for the loop's checkpoint before it raises anyway


class Deferral:
    """A SIGTERM the training loop has been asked to act on at its next batch boundary."""

    def __init__(self, hard_after: float):
        self.hard_after = hard_after
        self.requested = False
        self.requested_at: float | None = None
        self._timer: threading.Timer | None = None

    def request(self) -> None:
        import time

        self.requested, self.requested_at = True, time.monotonic()
        self._timer = threading.Timer(self.hard_after, os.kill, (os.getpid(), signal.SIGTERM))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


_deferral: Deferral | None = None


def follower_sigterm(signum, frame) -> None:
    """SIGTERM on a rank other than 0 of a trial on several processes (torchrun forwards the launcher's to
    every rank). While a checkpointing trial trains it is only noted: rank 0 got the same signal and tells
    every rank, at the next step boundary, to save together and stop (a follower gone before that save
    would break it). Should rank 0 not do so within ``sigterm_wait``, the deferral's timer delivers it again
    and it raises. Anywhere else it raises at once, as it always did."""
    deferral = _deferral
    if deferral is not None and not deferral.requested:
        deferral.request()
        return
    raise Preempted()


@contextlib.contextmanager
def deferred_preemption(hard_after: float = HARD_AFTER) -> Iterator[Deferral]:
    """Inside, SIGTERM sets ``requested`` instead of raising (see the module's docstring)."""
    global _deferral
    previous, _deferral = _deferral, Deferral(hard_after)
    current = _deferral
    try:
        yield current
    finally:
        current.cancel()
        _deferral = previous
