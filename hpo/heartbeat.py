"""A heartbeat that survives database hiccups.

Optuna's own heartbeat thread dies silently on the first storage error, after
which another worker declares the live trial stale and its result is lost.
This one logs the error, backs off and keeps beating, so a PostgreSQL restart
shorter than the grace period costs nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from hpo.storage import first_line

log = logging.getLogger("hpo.heartbeat")


class Heartbeat:
    def __init__(self, storage, trial_id: int, interval: float, mask: Callable[[str], str] = str):
        self._mask = mask
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> bool:
        try:
            self._storage.record_heartbeat(self._trial_id)
            return True
        except Exception as exc:  # noqa: BLE001 - any storage error must not end the thread
            log.warning("heartbeat for trial id %s failed (%s: %s); retrying", self._trial_id, type(exc).__name__, self._mask(first_line(exc)))
            return False

    def _run(self) -> None:
        wait = self._interval
        while not self._stop.wait(wait):
            # After a failure, beat again soon rather than a full interval later.
            wait = self._interval if self._beat() else min(1.0, self._interval)
