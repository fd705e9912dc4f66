"""The soak (bench/soak.py) at CI size: a fixed seed, under a minute of faults, the study ends exact.

Four real worker processes on a PostgreSQL server of the soak's own (so its
restarts disturb no other test), with kill -9, SIGTERM, server restarts and
dropped connections on a seeded schedule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# serial: four workers and a PostgreSQL server of its own under a 150 s bound; beside other tests on 2 cores it overran.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def test_a_short_seeded_soak_ends_exact():
    result = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "0.3", "--seed", "1", "--fault-every", "1.2", "--trial-seconds", "2", "--port", "5498"],
        capture_output=True, text=True, timeout=150, env={**os.environ, "PYTHONPATH": str(SOAK.parent.parent)},
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert summary["faults"] >= 10 and all(summary["faults_by_kind"].values()), summary
    assert summary["budget_error"] == 0 and summary["running_left"] == 0 and summary["results_lost"] == 0, summary
    assert summary["duplicates"] == 0, summary
