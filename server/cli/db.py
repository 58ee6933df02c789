"""`fluxserve backup` and `fluxserve db check`: the SQLite database file, read while the server may
run. A PostgreSQL store has its own tools (pg_dump, pg_amcheck): these say so and exit."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported late at run time: `fluxserve --help` stays quick
    from server.config import Settings


def _settings(config: str | None) -> Settings:
    """The settings, with a store_url that names a database file or a PostgreSQL database (one
    line otherwise)."""
    from server.config import load_settings

    settings = load_settings(config)
    if settings.shared_store:
        return settings
    try:
        settings.db_path  # noqa: B018 - raises for a store_url that names no file
    except ValueError as exc:
        raise SystemExit(f"error: store_url: {exc}") from None
    return settings


def _sqlite_settings(config: str | None) -> Settings:
    """The settings, with a store_url that names a SQLite file: a PostgreSQL store has its own tools."""
    settings = _settings(config)
    if settings.shared_store:
        raise SystemExit(
            f"error: this command reads a SQLite database file; the store is PostgreSQL "
            f"({settings.store_name}): use pg_dump to back it up and pg_amcheck to check it"
        )
    return settings


def _add_backup(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the database (predictions, stored keys, webhook deliveries) to a new file; "
        "safe while the server runs",
    )
    p.add_argument("path", help="the new file (must not exist)")
    p.add_argument(
        "--config", default=None, help="YAML config file (for data_dir / store_url; default: none, built-in)"
    )

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from server.store.sqlite.tools import backup

        source = _sqlite_settings(args.config).db_path
        target = Path(args.path).expanduser().resolve()
        try:
            count = backup(source, target)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"backed up {source} to {target} ({count} predictions)")
        return 0

    p.set_defaults(func=run)


def _add_db(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="examine the database")
    p.add_argument(
        "--config", default=None, help="YAML config file (for data_dir / store_url; default: none, built-in)"
    )
    db = p.add_subparsers(dest="db_command", required=True)
    db.add_parser("check", help="SQLite's integrity check and what the file holds; exit 1 when damaged")

    def run(args: argparse.Namespace) -> int:
        from server.store.sqlite.tools import check

        report = check(_sqlite_settings(args.config).db_path)
        print("\n".join(report.lines))
        return 0 if report.ok else 1

    p.set_defaults(func=run)
