"""`fluxserve keys`: API keys stored (as hashes) in the server's database."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from server.cli.db import _settings

if TYPE_CHECKING:  # imported late at run time: `fluxserve --help` stays quick
    from server.auth.keyring import Identity
    from server.config import Settings
    from server.store.keys import KeyStore


def _key_settings(config: str | None):
    """The settings, for a command that reads or writes stored keys: the database's folder is
    made (as `serve` makes it), and keys an earlier version kept elsewhere are carried over."""
    from server.store.carryover import carry_over_keys

    settings = _settings(config)
    if settings.shared_store:
        return settings  # the keys live in the PostgreSQL database; nothing to make or carry
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    carried = carry_over_keys(settings)
    if carried:
        print(carried, file=sys.stderr)
    return settings


def _keystore(config: str | None) -> tuple[Settings, KeyStore]:
    """The settings of ``config`` and the key store in their database."""
    from server.store import open_key_store

    settings = _key_settings(config)
    return settings, open_key_store(settings.resolved_store_url)


def _key_named(config: str | None, name: str) -> tuple[Settings, Identity | None]:
    """(settings, the identity of the key called ``name``: a stored key, ``config-N`` for a static
    key, or ``anonymous``; None when there is none). The one name lookup of every command."""
    from server.auth.keyring import identity_named

    settings, keys = _keystore(config)
    try:
        return settings, identity_named(name, settings.api_keys, keys)
    finally:
        keys.close()


def _no_key(name: str, hint: str | None = None) -> int:
    print(f"error: no active key named {name!r}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    return 1


def _rotate_webhook_secret(config: str | None, name: str) -> int:
    """Give the key called ``name`` (stored, ``config-N`` or ``anonymous``) a new signing secret."""
    from server.store import open_delivery_store

    settings, identity = _key_named(config, name)
    if identity is None:
        return _no_key(name)
    deliveries = open_delivery_store(settings.resolved_store_url)
    try:
        print(deliveries.rotate_signing_secret(identity.key_id))
    finally:
        deliveries.close()
    print(
        f"rotated the webhook signing secret of key {name!r}: its webhooks are signed with this one "
        "from now on (GET /v1/webhooks/default/secret with the key shows it too)",
        file=sys.stderr,
    )
    return 0


def _adopt_open(config: str | None, name: str) -> int:
    """Hand every prediction made while the server ran open (owner ``anonymous``) to the key
    called ``name``: a stored key or ``config-N`` for a static one."""
    from server.auth.keyring import ANONYMOUS
    from server.store import open_store

    settings, identity = _key_named(config, name)
    if identity is None:
        return _no_key(name, f"create it with `fluxserve keys create {name}`, or name a static key config-N")
    if identity == ANONYMOUS:
        print(
            "error: 'anonymous' owns the predictions made in open mode already: name a key", file=sys.stderr
        )
        return 2
    store = open_store(settings.resolved_store_url)
    try:
        moved = store.reassign_owner(ANONYMOUS.key_id, identity.key_id)
    finally:
        store.close()
    print(f"handed {moved} prediction(s) made in open mode to key {name!r}")
    return 0


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="manage API keys stored (as hashes) in the server's database")
    p.add_argument(
        "--config", default=None, help="YAML config file (for data_dir / store_url; default: none, built-in)"
    )
    keys = p.add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; it is printed once and only its hash is stored")
    create.add_argument(
        "name", help="a name for the key: up to 64 letters, digits, ., _ and -, unique among active keys"
    )
    keys.add_parser("list", help="names, creation and last use")
    revoke = keys.add_parser("revoke", help="revoke a key (takes effect on the next request)")
    revoke.add_argument("name", help="the stored key's name (see `fluxserve keys list`)")
    rotate = keys.add_parser(
        "rotate-webhook-secret",
        help="give a key a new webhook signing secret, printed on stdout; the old one stops at once",
    )
    rotate.add_argument("name", help="a stored key's name, config-N for a static key, or anonymous")
    adopt = keys.add_parser(
        "adopt-open",
        help="hand every prediction made while the server ran without keys to the key NAME "
        "(they are visible to no key otherwise)",
    )
    adopt.add_argument("name", help="a stored key's name, or config-N for a static key")

    def run(args: argparse.Namespace) -> int:
        if args.keys_command == "rotate-webhook-secret":
            return _rotate_webhook_secret(args.config, args.name)
        if args.keys_command == "adopt-open":
            return _adopt_open(args.config, args.name)
        settings, store = _keystore(args.config)
        if args.keys_command == "create":
            try:
                key = store.create(args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(key)
            print(f"created key {args.name!r}: store it now, it is not shown again", file=sys.stderr)
            return 0
        if args.keys_command == "list":
            rows = store.list()
            print(f"{'NAME':<24} {'CREATED':<24} {'LAST USED':<24} STATE")
            for info in rows:
                state = f"revoked {_when(info.revoked_at)}" if info.revoked else "active"
                print(f"{info.name:<24} {_when(info.created_at):<24} {_when(info.last_used_at):<24} {state}")
            return 0
        if store.revoke(args.name):
            print(f"revoked key {args.name!r}")
            return 0
        from server.auth.keyring import identity_named

        if identity_named(args.name, settings.api_keys, None) is not None:
            print(
                f"error: {args.name!r} is not a stored key: only those can be revoked "
                "(a static key stops working once removed from api_keys)",
                file=sys.stderr,
            )
            return 1
        return _no_key(args.name)

    p.set_defaults(func=run)
