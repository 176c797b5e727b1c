"""`internvl-jobs keys create|list|revoke --tenant NAME`: API keys, managed on the database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.config import get_settings
from core.db import make_engine, make_session_factory, transaction
from core.errors import NotFound
from core.tenants import create_api_key, ensure_tenant, find_tenant, list_api_keys, revoke_api_key


def cmd_keys(args: argparse.Namespace) -> int:
    """Create, list or revoke a tenant's API keys."""
    engine = make_engine(get_settings().database_url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            ACTIONS[args.action](session, args)
    except NotFound as exc:
        _err(f"internvl-jobs keys: {exc.detail}\n")
        return 1
    finally:
        engine.dispose()
    return 0


def _create(session: Session, args: argparse.Namespace) -> None:
    tenant = ensure_tenant(session, args.tenant)
    key, plaintext = create_api_key(session, tenant.id, name=args.name)
    _out(f"{plaintext}\n")
    _err(f"key {key.id} ({key.prefix}) for tenant {tenant.name}: shown once, keep it\n")


def _list(session: Session, args: argparse.Namespace) -> None:
    tenant = find_tenant(session, args.tenant)
    _out(_row("id", "prefix", "name", "created", "last used", "revoked"))
    for key in list_api_keys(session, tenant.id):
        _out(_row(key.id, key.prefix, key.name, key.created_at, key.last_used_at, key.revoked_at))


def _revoke(session: Session, args: argparse.Namespace) -> None:
    tenant = find_tenant(session, args.tenant)
    key = revoke_api_key(session, tenant.id, args.key)
    _err(f"key {key.id} ({key.prefix}) of tenant {tenant.name} is revoked\n")


ACTIONS: dict[str, Callable[[Session, argparse.Namespace], None]] = {
    "create": _create,
    "list": _list,
    "revoke": _revoke,
}


def _row(*values: Any) -> str:
    cells = [_cell(value) for value in values]
    return (
        f"{cells[0]:<32} {cells[1]:<18} {cells[2]:<20} {cells[3]:<20} {cells[4]:<20} {cells[5]}\n"
    )


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value in (None, "") else str(value)


def _out(text: str) -> None:
    sys.stdout.write(text)


def _err(text: str) -> None:
    sys.stderr.write(text)


def register(sub: Any) -> None:
    """Add the `keys` subcommand to the CLI."""
    parser = sub.add_parser("keys", help=cmd_keys.__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key (the tenant is created if new)")
    create.add_argument("--name", default="", help="a label for the key")
    actions.add_parser("list", help="the tenant's keys (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", help="key id (key_...) or prefix (ivj_...)")
    for action in (create, actions.choices["list"], revoke):
        action.add_argument("--tenant", required=True, help="tenant name")
    parser.set_defaults(func=cmd_keys)
