"""What may be switched off only on a loopback-bound API: auth, private targets, plain http.

Development settings open holes that are harmless while only this machine can reach the API
(no API keys; webhooks and image URLs on loopback and private networks; plain-http webhooks)
and dangerous on any other address: anyone who can reach the port could submit as the
default tenant or use the service to probe the internal network. Binding elsewhere with any
of them on is refused, unless `insecure_bind_override` is set, which is logged loudly.
"""

from __future__ import annotations

import ipaddress
import logging

from core.config import Settings

log = logging.getLogger("core.exposure")
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


class UnsafeBind(RuntimeError):
    """The API would be reachable from other hosts with development holes open."""


def is_loopback(host: str) -> bool:
    """Whether an address to bind is reachable from this machine only."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def open_holes(settings: Settings) -> list[str]:
    """The development-only settings that are on."""
    holes = {
        "auth_enabled=false": not settings.auth_enabled,
        "webhook_allow_private=true": settings.webhook_allow_private,
        "webhook_allow_http=true": settings.webhook_allow_http,
        "image_fetch_allow_private=true": settings.image_fetch_allow_private,
    }
    return [name for name, on in holes.items() if on]


def check_bind(settings: Settings, host: str) -> None:
    """Refuse (UnsafeBind) to serve on a non-loopback address with development holes open."""
    holes = open_holes(settings)
    if not holes or is_loopback(host):
        return
    message = (
        f"the API would listen on {host}, reachable from other hosts, with "
        f"{', '.join(holes)}: anyone reaching it could use them"
    )
    if not settings.insecure_bind_override:
        raise UnsafeBind(
            f"{message}. Bind 127.0.0.1, turn them off, or set "
            "INTERNVL_JOBS_INSECURE_BIND_OVERRIDE=true to accept the risk."
        )
    for _ in range(3):  # repeated so it cannot scroll past unseen
        log.warning("INSECURE: %s (insecure_bind_override=true)", message)
