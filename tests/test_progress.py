"""What ``hpo launch`` prints while it runs: lines in logs, a live panel in a terminal, nothing with --quiet."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios

import optuna
import pytest
from rich.console import Console

from conftest import hpo
from hpo import live, snapshot
from hpo.spec import load_spec

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_progress_is_one_line_per_event_when_not_a_terminal(launched_study):
    out = launched_study.result.stdout
    assert not ANSI.search(out) and "\r" not in out  # plain text, fit for a log file
    events = [line for line in out.splitlines() if line.startswith("[worker-0] ")]
    started = [line for line in events if re.fullmatch(r"\[worker-0\] trial \d+ started", line)]
    ended = [line for line in events if line not in started]
    assert len(started) == 4 and len(ended) == 4, out
    for line in ended:
        # One line carries the outcome, the best so far, the totals against the budget, time and parameters.
        assert re.match(r"\[worker-0\] trial \d+ (complete, accuracy \d\.\d{4}|pruned at \d+ examples.*|fail.*) \| ", line), line
        assert re.search(r"\| \d/4 finished \(\d complete, \d pruned, \d failed, \d running\) \| \d+m\d\ds elapsed", line), line
        assert "learning_rate=" in line
    assert "4/4 finished" in ended[-1] and "left" not in ended[-1]
    assert "left" in ended[0]  # an estimate once there is something to go on
    assert re.search(r"^study\s+watched-study", out, re.M)  # the final summary follows


def _run_in_terminal(args: list[str], cwd, columns: int = 140) -> str:
    """Run the CLI with a pseudo-terminal as its stdout and stderr, as a person at a terminal would."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    process = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_live_panel_in_a_terminal(make_study, tmp_path):
    path = make_study(name="live", n_trials=2)
    screen = _run_in_terminal(["launch", str(path)], tmp_path)
    assert ANSI.search(screen), "a terminal gets a panel redrawn in place"
    plain = ANSI.sub("", screen)
    assert re.search(r"\d/2 finished: \d complete, \d pruned; \d failed, 1 running", plain), plain[-3000:]
    assert re.search(r"^#0 +\S+ +[\d,]+(/[\d,]+)? examples", plain, re.M), plain[-3000:]  # the running trial's row
    assert re.search(r"\[worker-0\] trial 1 (complete|pruned)", plain)  # finished trials scroll above the panel
    assert re.search(r"^study\s+live", plain, re.M)  # and the final summary stays


def test_quiet_prints_only_the_final_summary(make_study, tmp_path):
    path = make_study(name="hush", n_trials=1)
    result = hpo("launch", str(path), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.lstrip().startswith("study   hush")
    assert "[worker-0]" not in result.stdout and "1/1 finished" in result.stdout


def test_snapshot_and_panel_show_a_running_trial(launched_study, tmp_path):
    """A trial in progress, as an objective leaves it on the trial, read back by the live view."""
    shutil.copy(launched_study.folder / "hpo.db", tmp_path / "hpo.db")
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.load_study(study_name=launched_study.name, storage=storage)
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-3, 5e-3, log=True)
    trial.report(0.75, step=80)
    trial.set_user_attr("examples_seen", 100)
    trial.set_user_attr("examples_total", 320)

    # The watcher started after the launch's trials ended, and has watched for a minute.
    since = max(t.datetime_complete for t in study.trials if t.datetime_complete) + dt.timedelta(seconds=1)
    snap = snapshot.take(study.get_trials(), n_trials=8, maximize=True, since=since, now=since + dt.timedelta(seconds=60))
    assert snap.counts.running == 1 and snap.counts.finished == 4 and snap.remaining == 4
    assert snap.best.number == study.best_trial.number
    running = snap.running[0]
    assert (running.number, running.examples, running.total, running.latest) == (trial.number, 100, 320, 0.75)
    # Nothing finished since the watcher started; the running trial is 100/320 of one trial's work.
    assert snap.eta == pytest.approx(60 / (100 / 320) * (8 - 4 - 100 / 320), rel=0.02)

    spec = load_spec(launched_study.path, storage=storage)
    console = Console(record=True, width=160, force_terminal=False)
    console.print(live.render(spec, snap))
    text = console.export_text()
    assert "4/8 finished: " in text and "1 running" in text
    assert f"#{trial.number}" in text and "100/320 examples, accuracy 0.7500" in text
    assert f"#{study.best_trial.number} accuracy {study.best_value:.4f}" in text
    assert re.search(r"~\d+m\d\ds left", text)


def test_one_panel_for_several_workers(make_study, tmp_path):
    """The parent draws one panel from the storage; its worker processes keep quiet in the shared terminal."""
    path = make_study(name="team", n_trials=3)
    screen = ANSI.sub("", _run_in_terminal(["launch", str(path), "--workers", "2"], tmp_path))
    assert "starting 2 workers: worker-0, worker-1" in screen
    assert re.search(r"\d/3 finished: \d complete, \d pruned; \d failed, \d running", screen), screen[-3000:]
    assert "[worker-0] trial" not in screen and "[worker-1] trial" not in screen  # no per-worker lines under the panel
    assert re.search(r"^study\s+team", screen, re.M) and "3/3 finished" in screen
