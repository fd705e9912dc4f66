"""``hpo dashboard STUDY``: optuna-dashboard on the study's storage, in this process."""

from __future__ import annotations

import argparse
import errno
import sys

from hpo import dashboard, optuna_compat, storage
from hpo.cli import common
from hpo.cli.status import load_existing
from hpo.errors import UserError


def add_parser(sub) -> None:
    parser = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage (127.0.0.1:8080)")
    common.add_study_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--read-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse every change to the storage (default: on when bound beyond loopback)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = common.load(args)
    study = load_existing(spec)  # a clear error, and nothing created, if it was never launched
    local = dashboard.is_loopback(args.host)
    read_only = (not local) if args.read_only is None else args.read_only
    if not local:
        print(
            f"hpo: warning: the dashboard has no login; binding {args.host} lets anyone who can reach this "
            f"machine see the study{'' if read_only else ' and change or delete it'}",
            file=sys.stderr,
        )
    # A storage of our own, unwrapped, as optuna-dashboard expects; the URL stays in this process.
    app = dashboard.build_app(storage.open_storage(spec.storage), read_only)
    try:
        server = dashboard.make(args.host, args.port, app)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} on {args.host} is in use; choose another with --port") from None
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = server.server_address[1]
    print(f"optuna-dashboard for {spec.name} on {storage.mask_url(spec.storage)}"
          f"{' (read-only)' if read_only else ''}", flush=True)
    print(f"open {dashboard.url(args.host, port, f'/dashboard/studies/{optuna_compat.study_id(study)}')}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        server.server_close()
    return 0
