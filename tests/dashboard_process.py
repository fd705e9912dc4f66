"""Start ``hpo dashboard`` as a user would, and talk to it over HTTP, for the dashboard and browser tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def dashboard(study: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    """Yields (study page URL, process, lines printed before serving); stops the server afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", str(study), "--port", "0", *args],
        cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            found = re.search(r"open (http://\S+)", line)
            url = found.group(1) if found else None
        if url is None:
            process.kill()
            raise AssertionError(f"the dashboard did not start: {lines} {process.stderr.read()}")
        yield url, process, lines
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        process.stdout.close()
        process.stderr.close()


def request(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def base(url: str) -> str:
    """http://host:port of a dashboard page URL."""
    return re.match(r"(http://[^/]+)", url).group(1)
