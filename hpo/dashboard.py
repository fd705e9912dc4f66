"""Serving optuna-dashboard in this process, with an optional read-only guard.

The dashboard runs through its Python API (``optuna_dashboard.wsgi``) on a
storage object we opened, so the database URL, password included, is never
on a command line where ``ps`` shows it. optuna-dashboard has no login and
its API can delete studies, rename them and ``tell`` a running trial (which
fails it on its worker), so anything reachable beyond this machine should be
read-only: ``ReadOnly`` lets through only the methods that cannot change
anything (GET, HEAD, OPTIONS) and answers everything else 403.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import socketserver
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger("hpo.dashboard")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REFUSAL = "hpo dashboard is read-only: nothing can be changed here (to edit, start it on 127.0.0.1 without --read-only)"


class ReadOnly:
    """WSGI middleware refusing every request that could write to the storage."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in SAFE_METHODS:
            return self.app(environ, start_response)
        body = json.dumps({"reason": REFUSAL}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(storage, read_only: bool) -> Callable:
    """optuna-dashboard's own WSGI application on our storage, guarded when read-only."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    return ReadOnly(app) if read_only else app


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A page load fetches scripts, the study and its plots at once; serve them side by side."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)


def _server_class(host: str) -> type[_ThreadingServer]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return type("DashboardServer", (_ThreadingServer,), {"address_family": family})


def make(host: str, port: int, app: Callable) -> WSGIServer:
    """Bind now (port 0 picks a free one), so the caller can print the real address before serving."""
    return make_server(host, port, app, server_class=_server_class(host), handler_class=_QuietHandler)


def url(host: str, port: int, path: str = "") -> str:
    """The address to open: the machine's name when bound to every interface."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{path}"
