"""Faults at the storage boundary, on top of the real database.

``FaultyStorage`` is hpo's own retrying RDBStorage with one seam wrapped: the
single real call of an RDBStorage method (``ResilientRDBStorage._attempt``).
At the Nth call of a named method it fails either before the call runs (the
database never saw it) or after it ran and committed (the caller sees an error
as when the connection drops while the commit's reply is on its way). The
error is the one SQLAlchemy raises for a lost connection; on PostgreSQL the
process's connections are also really terminated, so the next call has to
reconnect. ``FaultyLock`` does the same to the study lock, where on PostgreSQL
"after" really drops the lock's connection (PostgreSQL then releases the
advisory lock, which is the dangerous case) while the claim goes on.

Tests install both with ``install(monkeypatch, plan)``; the runner then opens
them through hpo.storage as it opens the real ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from hpo import resilient
from hpo import storage as storage_lib


@dataclass
class Fault:
    method: str  # an RDBStorage method ("_create_new_trial", "record_heartbeat", ...), or "lock" / "unlock"
    when: str = "before"  # "before": the call never ran; "after": it ran and committed, then the caller saw an error
    nth: int = 1  # the Nth matching call fails (1: the first)
    match: Callable[[tuple], bool] | None = None  # only calls whose arguments match count
    times: int = 1  # how many consecutive matching calls fail from the Nth on
    calls: int = 0
    fired: int = 0

    def hits(self, method: str, args: tuple) -> bool:
        if method != self.method or (self.match is not None and not self.match(args)):
            return False
        self.calls += 1
        if self.nth <= self.calls < self.nth + self.times:
            self.fired += 1
            return True
        return False


@dataclass
class FaultPlan:
    faults: list[Fault]
    url: str = ""
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, method: str, when: str, args: tuple) -> bool:
        with self._lock:
            for fault in self.faults:
                if fault.when == when and fault.hits(method, args):
                    self.log.append(f"{method}/{when}#{fault.calls}")
                    return True
        return False

    @property
    def fired(self) -> int:
        return sum(f.fired for f in self.faults)


def connection_lost(what: str) -> sa_exc.OperationalError:
    """What SQLAlchemy raises when the server goes away mid-call."""

    class Orig(Exception):
        pass

    return sa_exc.OperationalError(
        f"-- {what}", {}, Orig("server closed the connection unexpectedly"), connection_invalidated=True
    )


def drop_connections(url: str, pid: int | None = None) -> None:
    """Terminate this process's PostgreSQL connections (or one backend), as a network cut would."""
    if not url.startswith("postgresql"):
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if pid is not None:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            else:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a AND pid <> pg_backend_pid()"),
                    {"a": storage_lib.application_name()},
                )
            conn.commit()
    finally:
        engine.dispose()


PLAN: FaultPlan | None = None


class FaultyStorage(resilient.ResilientRDBStorage):
    def _attempt(self, name: str, args: tuple, kwargs: dict) -> Any:
        plan = PLAN
        if plan is not None and plan.check(name, "before", args):
            drop_connections(plan.url)
            raise connection_lost(name)
        result = super()._attempt(name, args, kwargs)
        if plan is not None and plan.check(name, "after", args):
            drop_connections(plan.url)
            raise connection_lost(name)
        return result


class FaultyLock(storage_lib.StudyLock):
    def acquire(self) -> None:
        plan = PLAN
        if plan is not None and plan.check("lock", "before", ()):
            raise connection_lost("lock")
        super().acquire()
        if plan is not None and plan.check("lock", "after", ()):
            drop_connections(self.url, self.backend_pid)  # the claim goes on, unaware; PostgreSQL freed the lock

    def release(self) -> bool:
        plan = PLAN
        if plan is not None and plan.check("unlock", "before", ()):
            drop_connections(self.url, self.backend_pid)
        held = super().release()
        if plan is not None and plan.check("unlock", "after", ()):
            return False  # unlocked, but the reply never came: the worker cannot know it held the lock
        return held


def install(monkeypatch, plan: FaultPlan) -> FaultPlan:
    global PLAN
    PLAN = plan
    monkeypatch.setattr(resilient, "ResilientRDBStorage", FaultyStorage)
    monkeypatch.setattr(storage_lib, "StudyLock", FaultyLock)
    monkeypatch.setattr(FaultyStorage, "patience", 20.0)
    return plan


def uninstall() -> None:
    global PLAN
    PLAN = None
