"""Outbound HTTP that cannot be turned against the service's own network (SSRF protection).

Two checks: `validate_url` when a URL is accepted (scheme, odd host notations, literal private
addresses), and `guarded_client` when it is used: its transport resolves the host itself,
refuses the connection if any address is not public, then connects to the checked address
while the Host header and the TLS server name stay those of the URL. Checking at connect time
is what defeats DNS names that point (or are re-pointed) at internal addresses.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

from core.errors import InvalidRequest
from core.time_budget import BudgetStream, call_within_budget, time_left

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

LOOPBACK = "loopback"
PRIVATE = "private"
LINK_LOCAL = "link-local"
SHARED = "shared address space (CGNAT)"
UNSPECIFIED = "unspecified"
MULTICAST = "multicast"
METADATA = "cloud metadata"
RESERVED = "reserved"
# What a development setting may open up; the other kinds are never a webhook or image host.
PRIVATE_KINDS = frozenset({LOOPBACK, PRIVATE, LINK_LOCAL, SHARED})

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_V4_KINDS: list[tuple[ipaddress.IPv4Network, str]] = [
    (_V4("0.0.0.0/8"), UNSPECIFIED),
    (_V4("127.0.0.0/8"), LOOPBACK),
    (_V4("10.0.0.0/8"), PRIVATE),
    (_V4("172.16.0.0/12"), PRIVATE),
    (_V4("192.168.0.0/16"), PRIVATE),
    (_V4("169.254.0.0/16"), LINK_LOCAL),
    (_V4("100.64.0.0/10"), SHARED),
    (_V4("224.0.0.0/4"), MULTICAST),
    (_V4("192.0.0.0/24"), RESERVED),
    (_V4("192.0.2.0/24"), RESERVED),
    (_V4("192.88.99.0/24"), RESERVED),
    (_V4("198.18.0.0/15"), RESERVED),
    (_V4("198.51.100.0/24"), RESERVED),
    (_V4("203.0.113.0/24"), RESERVED),
    (_V4("240.0.0.0/4"), RESERVED),
]
_V6_KINDS: list[tuple[ipaddress.IPv6Network, str]] = [
    (_V6("::/128"), UNSPECIFIED),
    (_V6("::1/128"), LOOPBACK),
    (_V6("fe80::/10"), LINK_LOCAL),
    (_V6("fc00::/7"), PRIVATE),
    (_V6("fec0::/10"), PRIVATE),
    (_V6("64:ff9b:1::/48"), PRIVATE),
    (_V6("ff00::/8"), MULTICAST),
    (_V6("2001::/23"), RESERVED),
    (_V6("2001:db8::/32"), RESERVED),
]
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
# IPv6 forms that carry an IPv4 address, which is what the packet finally reaches.
_EMBEDDED_V4 = [_V6("::ffff:0:0/96"), _V6("::/96"), _V6("64:ff9b::/96")]
_SIXTOFOUR = _V6("2002::/16")

_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class UnsafeUrl(InvalidRequest):
    """A URL the service refuses to call: bad scheme, odd notation or a non-public address."""

    code = "unsafe_url"
    title = "Unsafe URL"


class UnsafeAddress(httpx.ConnectError):
    """A connection refused because the host resolved to a non-public address."""


def address_kind(address: IPAddress) -> str | None:
    """Why an address is not a public unicast one ('loopback', 'private', ...), or None."""
    address = _embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return METADATA
    if isinstance(address, ipaddress.IPv4Address):
        return next((kind for net, kind in _V4_KINDS if address in net), None)
    kind = next((kind for net, kind in _V6_KINDS if address in net), None)
    if kind is None and address not in _GLOBAL_UNICAST_V6:
        kind = RESERVED
    return kind


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    plain = (
        address if address.scope_id is None else ipaddress.IPv6Address(str(address).split("%")[0])
    )
    if plain in _SIXTOFOUR:
        return plain.sixtofour
    if int(plain) <= 1:  # :: and ::1 are IPv6's own unspecified and loopback addresses
        return None
    if any(plain in net for net in _EMBEDDED_V4):
        return ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """The reason to refuse connecting to this address, or None when it may be used."""
    kind = address_kind(address)
    if kind is None or (allow_private and kind in PRIVATE_KINDS):
        return None
    return f"{address} is a {kind} address"


def validate_url(url: str, *, allow_private: bool, allow_http: bool = False) -> str:
    """Check a URL before accepting it; raise UnsafeUrl naming the problem, else return its
    normal form (lower-case scheme, host as ASCII after IDNA/NFKC mapping), which is what the
    fetcher and the webhook sender use: the checks apply to the host actually called."""
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in url):
        raise UnsafeUrl("the URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeUrl(f"the URL is malformed: {exc}") from exc
    schemes = ("http", "https") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        raise UnsafeUrl(f"the URL scheme must be {' or '.join(schemes)}")
    if "@" in parts.netloc:
        raise UnsafeUrl("credentials in URLs are not accepted")
    try:
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl("the URL's port is not a number from 1 to 65535") from exc
    if port == 0:
        raise UnsafeUrl("the URL's port is not a number from 1 to 65535")
    host = _check_host(parts.netloc.rsplit(":", 1)[0] if port else parts.netloc, allow_private)
    netloc = f"{host}:{port}" if port else host
    normal = urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, parts.fragment))
    try:
        httpx.URL(normal)  # what the client will be given must be a URL it accepts
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnsafeUrl(f"the URL cannot be used: {exc}") from exc
    return normal


def _check_host(host: str, allow_private: bool) -> str:
    """The host in its normal ASCII form, once checked; UnsafeUrl if it is refused."""
    if host.startswith("["):
        literal = host[1:-1] if host.endswith("]") else ""
        if not literal or "%" in literal:
            raise UnsafeUrl("the URL's IPv6 address is malformed")
        try:
            address: IPAddress = ipaddress.IPv6Address(literal)
        except ValueError as exc:
            raise UnsafeUrl("the URL's IPv6 address is malformed") from exc
        _refuse_address(address, allow_private)
        return host.lower()
    if not host:
        raise UnsafeUrl("the URL has no host")
    name = _ascii_host(host)
    labels = name.rstrip(".").split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Browsers and resolvers read 2130706433, 0177.1 or 0x7f.1 as IPv4 addresses.
        if not _DOTTED_QUAD.match(name):
            raise UnsafeUrl("IPv4 addresses must be written as four decimal numbers (a.b.c.d)")
        _refuse_address(ipaddress.IPv4Address(name), allow_private)
        return name
    _check_hostname(name, allow_private)
    return name


def _ascii_host(host: str) -> str:
    # NFKC and IDNA first: fullwidth digits and letters (１２７.０.０.１) become ASCII here,
    # so every later check sees the host that will really be resolved.
    try:
        name = unicodedata.normalize("NFKC", host).lower()
        return name if name.isascii() else name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise UnsafeUrl("the URL's host name is not a valid domain name") from exc


def _check_hostname(name: str, allow_private: bool) -> None:
    if len(name) > 253 or not _HOSTNAME.match(name):
        raise UnsafeUrl("the URL's host name is not a valid domain name")
    bare = name.rstrip(".")
    internal = "." not in bare or bare == "localhost" or bare.endswith(_INTERNAL_SUFFIXES)
    if internal and not allow_private:
        raise UnsafeUrl(f"{bare} names a local or internal host")


def _refuse_address(address: IPAddress, allow_private: bool) -> None:
    reason = address_refusal(address, allow_private=allow_private)
    if reason:
        raise UnsafeUrl(f"the URL points to a non-public address: {reason}")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (A and AAAA records)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves each host, refuses non-public addresses, connects to the checked address."""

    def __init__(self, *, allow_private: bool, resolver: Resolver = system_resolver) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first checked address of host; every address must pass the check.

        Inside a `time_budget`, resolving, connecting and every later read and write of the
        connection end by its deadline.
        """
        addresses = self._resolve(host, port)
        last_error: Exception | None = None
        for address in addresses:
            try:
                wait_s = time_left(timeout, httpcore.ConnectTimeout)
                stream = self._inner.connect_tcp(
                    str(address), port, wait_s, local_address, socket_options
                )
                return BudgetStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            names = call_within_budget(self.resolver, host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(name) for name in names]
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            reason = address_refusal(address, allow_private=self.allow_private)
            if reason:
                raise UnsafeAddress(f"refused to connect to {host}: {reason}")
        return addresses

    def sleep(self, seconds: float) -> None:
        """Pause between connection retries."""
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool built on the GuardedBackend."""

    def __init__(self, backend: GuardedBackend, *, verify: Any = True) -> None:
        super().__init__(verify=verify, trust_env=False)
        # httpx has no switch for the network backend, so the pool is rebuilt around ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            network_backend=backend,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
        )


def guarded_client(
    *,
    allow_private: bool,
    timeout_s: float,
    resolver: Resolver = system_resolver,
    verify: Any = True,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An httpx client for untrusted URLs: checked at connect time, no redirects, no proxies."""
    backend = GuardedBackend(allow_private=allow_private, resolver=resolver)
    return httpx.Client(
        transport=GuardedTransport(backend, verify=verify),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
        headers=headers,
    )


def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """At most max_bytes of a streamed response body, as sent (no decompression)."""
    received = bytearray()
    for chunk in response.iter_raw():
        received.extend(chunk)
        if len(received) >= max_bytes:
            break
    return bytes(received[:max_bytes])
