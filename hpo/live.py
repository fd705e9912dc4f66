"""A live panel for a person at a terminal, redrawn in place while the study runs.

The panel is drawn from the shared storage, read by a thread of its own every
second: it shows every worker of the study (on this machine or others), and
the running trials' progress comes from what their objectives leave on the
trial (intermediate values, ``examples_seen``/``examples_total``), so the
objective never learns that anyone is watching. Finished trials and log
records scroll above the panel, so the terminal keeps a history as well.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hpo import snapshot, storage
from hpo.fmt import duration, format_params
from hpo.progress import outcome
from hpo.runner import TrialEvent
from hpo.spec import StudySpec

log = logging.getLogger("hpo.live")


class StudyReader:
    """Reads a study's trials without creating anything: waits until a worker has created it."""

    def __init__(self, spec: StudySpec):
        self.spec = spec
        self._storage = None
        self._study_id: int | None = None

    def trials(self) -> list[optuna.trial.FrozenTrial] | None:
        if self._study_id is None:
            if storage.existing_direction(self.spec.storage, self.spec.name) is None:
                return None
            self._storage = storage.open_storage(self.spec.storage)
            self._study_id = self._storage.get_study_id_from_name(self.spec.name)
        return self._storage.get_all_trials(self._study_id, deepcopy=False)


class LiveProgress:
    def __init__(self, spec: StudySpec, console: Console | None = None, interval: float = 1.0):
        self.spec = spec
        self.console = console or Console()
        self.interval = interval
        self.since = dt.datetime.now()
        self.reader = StudyReader(spec)
        self.latest: snapshot.Snapshot | None = None
        self.problem: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the poller and the runner's callbacks both refresh
        self._thread = threading.Thread(target=self._poll, name="hpo-live", daemon=True)
        self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=2, transient=True)
        self._saved_handlers: list[logging.Handler] = []

    # --- the runner's callbacks ------------------------------------------------

    def trial_started(self, worker: str, trial: optuna.Trial) -> None:
        self.refresh(draw=True)  # now, not at the next tick: a short trial could pass unseen

    def trial_ended(self, event: TrialEvent) -> None:
        best = f"best {event.best.value:.4f} (#{event.best.number})" if event.best else "no best yet"
        self.console.print(
            f"[{event.worker}] trial {event.trial.number} {outcome(event.trial, self.spec.metric, event.reason, self.spec.pruning_metric)} | {best} | "
            f"{format_params(event.trial.params)}",
            markup=False,
            highlight=False,
        )
        self.refresh(draw=True)

    # --- lifetime --------------------------------------------------------------

    def __enter__(self) -> "LiveProgress":
        root = logging.getLogger()
        self._saved_handlers = list(root.handlers)
        handler = RichHandler(console=self.console, show_path=False, show_level=False, markup=False, log_time_format="%H:%M:%S", rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.handlers = [handler]  # log records print above the panel instead of through it
        self.refresh()
        self._live.start()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._live.stop()
        logging.getLogger().handlers = self._saved_handlers

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self, draw: bool = False) -> None:
        """Read the storage once; a failed read keeps the last picture and says so."""
        try:
            with self._lock:
                trials = self.reader.trials()
        except Exception as exc:  # noqa: BLE001 - the panel must outlive a database hiccup
            self.problem = storage.mask_text(f"storage unreachable: {type(exc).__name__}", self.spec.storage)
            log.debug("live progress could not read the storage: %s", storage.mask_text(str(exc), self.spec.storage))
            return
        self.problem = None
        if trials is not None:
            self.latest = snapshot.take(trials, self.spec.n_trials, self.spec.direction == "maximize", self.since)
        if draw and self._live.is_started:
            self._live.refresh()

    # --- drawing ---------------------------------------------------------------

    def render(self):
        return render(self.spec, self.latest, self.problem, self.since)


def _bar(completed: float, total: float, width: int = 30) -> ProgressBar:
    return ProgressBar(total=max(total, 1), completed=min(completed, total), width=width)


def render(spec: StudySpec, snap: snapshot.Snapshot | None, problem: str | None = None, since: dt.datetime | None = None):
    """The panel: totals against the budget, the best so far, the running trials, time spent and left."""
    arrow = "higher is better" if spec.direction == "maximize" else "lower is better"
    if snap is None:
        elapsed = (dt.datetime.now() - since).total_seconds() if since else 0.0
        return Text(f"{spec.name}: waiting for the first trial ({duration(elapsed)} elapsed)", style="bold")
    counts = snap.counts
    eta = "done" if snap.remaining == 0 else (f"~{duration(snap.eta)} left" if snap.eta is not None else "estimating time left")
    head = Text.assemble((spec.name, "bold"), f"  {spec.metric} ({arrow})  ", f"{duration(snap.elapsed)} elapsed, {eta}")
    if problem:
        head.append(f"  [{problem}]", style="yellow")

    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column()
    grid.add_row(
        "trials",
        _bar(counts.finished, snap.n_trials),
        f"{counts.finished}/{snap.n_trials} finished: {counts.complete} complete, {counts.pruned} pruned; "
        f"{counts.failed} failed, {counts.running} running",
    )
    if snap.best is not None:
        where = snap.best.user_attrs.get("best_examples")
        grid.add_row(
            "best",
            Text(f"#{snap.best.number} {spec.metric} {snap.best.value:.4f}", style="green"),
            format_params(snap.best.params) + (f" (after {where} examples)" if where else ""),
        )
    else:
        grid.add_row("best", "-", "no complete trial yet")
    for trial in snap.running:
        seen = f"{trial.examples:,}" + (f"/{trial.total:,}" if trial.total else "") + " examples"
        score = f", {spec.pruning_metric} {trial.latest:.4f}" if trial.latest is not None else ""
        grid.add_row(
            f"#{trial.number}",
            _bar(trial.examples, trial.total) if trial.total else Text(duration(trial.seconds)),
            f"{seen}{score}, {duration(trial.seconds)}  {format_params(trial.params)}",
        )
    return Group(head, grid)
