"""`internvl-jobs keys create|list|revoke|limit --tenant NAME`: tenants' API keys and limits.

Managed on the database: `limit --max-running-jobs N` sets how many of the tenant's jobs may
run at once (0: no limit, `default`: follow max_running_jobs_per_tenant).
"""

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
from core.running_limits import effective_limit
from core.tenants import (
    create_api_key,
    ensure_tenant,
    find_tenant,
    list_api_keys,
    revoke_api_key,
    set_running_limit,
)


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
    _err(f"tenant {tenant.name}: {_limit_text(tenant.max_running_jobs)}\n")
    _out(_row("id", "prefix", "name", "created", "last used", "revoked"))
    for key in list_api_keys(session, tenant.id):
        _out(_row(key.id, key.prefix, key.name, key.created_at, key.last_used_at, key.revoked_at))


def _revoke(session: Session, args: argparse.Namespace) -> None:
    tenant = find_tenant(session, args.tenant)
    key = revoke_api_key(session, tenant.id, args.key)
    _err(f"key {key.id} ({key.prefix}) of tenant {tenant.name} is revoked\n")


def _limit(session: Session, args: argparse.Namespace) -> None:
    tenant = set_running_limit(session, args.tenant, args.max_running_jobs)
    _err(f"tenant {tenant.name}: {_limit_text(tenant.max_running_jobs)}\n")


def _limit_text(own: int | None) -> str:
    default = get_settings().max_running_jobs_per_tenant
    limit = effective_limit(own, default)
    running = "no limit" if limit is None else str(limit)
    origin = "default, max_running_jobs_per_tenant" if own is None else "its own"
    return f"max running jobs {running} ({origin})"


def _running_limit(value: str) -> int | None:
    if value == "default":
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise argparse.ArgumentTypeError("give a whole number >= 0 (0: no limit) or 'default'")
    return limit


ACTIONS: dict[str, Callable[[Session, argparse.Namespace], None]] = {
    "create": _create,
    "list": _list,
    "revoke": _revoke,
    "limit": _limit,
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
    limit = actions.add_parser("limit", help="set how many of the tenant's jobs may run at once")
    limit.add_argument(
        "--max-running-jobs",
        type=_running_limit,
        required=True,
        metavar="N|default",
        help="jobs running at once, across workers (0: no limit; default: the setting "
        "max_running_jobs_per_tenant)",
    )
    for action in (create, actions.choices["list"], revoke, limit):
        action.add_argument("--tenant", required=True, help="tenant name")
    parser.set_defaults(func=cmd_keys)
