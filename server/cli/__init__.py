"""The `fluxserve` command line: serve, worker, generate, tiny-model, keys, backup, db, doctor, client.

Each subcommand imports what it needs when it runs, so `fluxserve --help` stays fast and the
server's commands never load torch in the API process.
"""

from __future__ import annotations

import argparse
import sys


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from server.cli.helptext import SERVE_EPILOG

    p = sub.add_parser(
        "serve",
        help="run the prediction server (API + GPU workers)",
        description="Run the HTTP API, the playground and the worker processes that run the model.",
        epilog=SERVE_EPILOG,
    )
    p.add_argument("--config", default=None, help="YAML config file (see configs/; default: none, built-in)")
    p.add_argument("--host", default=None, help="address to bind (setting host; default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=None, help="port to bind, 1-65535 (setting port; default 8000)"
    )
    p.add_argument(
        "--ssl-certfile",
        default=None,
        help="PEM certificate: serve HTTPS (setting tls.certfile; default: none, plain HTTP)",
    )
    p.add_argument(
        "--ssl-keyfile",
        default=None,
        help="PEM private key of the certificate (setting tls.keyfile; default: none)",
    )
    p.add_argument(
        "--no-workers",
        action="store_true",
        help="an API replica only: no worker processes; predictions queue for the worker hosts "
        "(`fluxserve worker`) sharing its PostgreSQL store_url",
    )

    def run(args: argparse.Namespace) -> int:
        from server.cli.serve import cmd_serve

        return cmd_serve(args)

    p.set_defaults(func=run)


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker host (GPU workers, no HTTP) for the API replicas sharing its PostgreSQL store_url",
    )
    p.add_argument("--config", default=None, help="YAML config file (see configs/; default: none, built-in)")
    p.add_argument(
        "--gpus",
        default=None,
        help="GPU indices to use, e.g. 0,1 (setting workers.gpus; default: every visible GPU)",
    )

    def run(args: argparse.Namespace) -> int:
        from server.cli.worker import cmd_worker

        return cmd_worker(args)

    p.set_defaults(func=run)


def _add_client(sub: argparse._SubParsersAction) -> None:
    from server.client.cli import register

    register(sub)


def build_parser() -> argparse.ArgumentParser:
    from server.cli.generate import _add_generate, _add_tiny_model
    from server.cli.helptext import DefaultsHelpFormatter, package_version, use_formatter

    parser = argparse.ArgumentParser(
        prog="fluxserve",
        description="Self-hosted FLUX.1 [dev] prediction server. `fluxserve COMMAND -h` for each command.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_tiny_model(sub)
    for register in _extra_commands():
        register(sub)
    use_formatter(parser)
    return parser


def _extra_commands():
    """Subcommands defined next to the code they drive (serve, worker, keys, backup, db, doctor, client)."""
    from server.cli.db import _add_backup, _add_db
    from server.cli.doctor import _add_doctor, _add_weights
    from server.cli.keys import _add_keys

    return [_add_serve, _add_worker, _add_keys, _add_backup, _add_db, _add_doctor, _add_weights, _add_client]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from server.config import ConfigError
    from server.datalock import ServerBusy
    from server.store.sqlite.db import DatabaseUnusable

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ServerBusy, DatabaseUnusable) as exc:
        # What the operator must fix: one line, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
