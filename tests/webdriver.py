"""Just enough of the W3C WebDriver protocol to drive headless Chromium through chromedriver.

Debian's ``chromium`` and ``chromium-driver`` packages are the browser; this
talks to chromedriver over HTTP with the standard library, so the tests need
no Selenium.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]


def find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """A chromedriver process and one headless Chromium session, closed by ``close``."""

    def __init__(self, profile: Path, chromium: str, chromedriver: str):
        self.port = _free_port()
        self.driver = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.session = None
        try:
            self._wait_ready()
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]},
            }
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self._call("GET", "/status")["ready"]:
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError("chromedriver did not become ready in 30 s")

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"webdriver {method} {path}: {error.read().decode()[:500]}") from None

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def resize(self, width: int, height: int) -> None:
        self._call("POST", f"/session/{self.session}/window/rect", {"width": width, "height": height})

    def text(self) -> str:
        return self.run("return document.body ? document.body.innerText : ''")

    def wait_for_text(self, wanted: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if wanted in text:
                return text
            time.sleep(0.5)
        raise AssertionError(f"{wanted!r} never appeared on the page; it shows: {text[:500]!r}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))
        return path

    def close(self) -> None:
        try:
            if self.session:
                self._call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=20)
