"""SSRF protection: URLs refused when accepted, and every resolved address checked at connect."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import pytest

from api.problems import http_status
from core.ssrf import UnsafeAddress, UnsafeUrl, guarded_client, read_capped, validate_url
from tests.support.webhook_receiver import Receiver, Reply

# Addresses no webhook may reach in production, written the ways an attacker would try.
REFUSED_HOSTS = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "169.254.170.2",  # ECS task metadata
    "100.64.0.1",  # CGNAT
    "100.100.100.200",  # Alibaba metadata, inside CGNAT
    "192.0.0.192",  # Oracle metadata
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "198.18.0.1",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fc00::1]",
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[ff02::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:10.0.0.1]",
    "[0:0:0:0:0:ffff:7f00:0001]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
    "[2001:db8::1]",
]
ODD_NOTATIONS = [
    "2130706433",  # 127.0.0.1 as one decimal number
    "0x7f000001",
    "017700000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "127.1",
    "127.0.1",
    "127.000.000.001",
    "127.0.0.1.",
    "1.2.3.0x4",
    "%31%32%37.0.0.1",
    "[::1%25eth0]",
    "[::ffff:127.0.0.1",
]
INTERNAL_NAMES = [
    "localhost",
    "LOCALHOST",
    "foo.localhost",
    "metadata.google.internal",
    "printer.local",
    "redis",
]
ACCEPTED = [
    "https://hooks.example.com/internvl",
    "https://hooks.example.com:8443/a?b=c",
    "https://93.184.216.34/hook",
    "https://[2606:4700:4700::1111]/hook",
    "https://bücher.example/hook",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS + ODD_NOTATIONS + INTERNAL_NAMES)
def test_non_public_hosts_are_refused(host: str) -> None:
    with pytest.raises(UnsafeUrl) as refused:
        validate_url(f"https://{host}/hook", allow_private=False)
    assert http_status(refused.value) == 422 and refused.value.code == "unsafe_url"


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_urls_are_accepted(url: str) -> None:
    assert validate_url(url, allow_private=False) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "gopher://hooks.example.com:70/x",
        "javascript:alert(1)",
        "hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
        "https://hooks.example.com@127.0.0.1/x",
        "https://hooks.example.com\\@127.0.0.1/x",
        "https://hooks.example.com:0/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com /x",
        "https:///x",
    ],
)
def test_other_schemes_credentials_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        validate_url(url, allow_private=False)


def test_plain_http_needs_the_development_switch() -> None:
    assert validate_url("http://hooks.example.com/x", allow_private=False, allow_http=True)


def test_private_switch_opens_loopback_and_private_but_never_metadata() -> None:
    for host in ("127.0.0.1", "10.0.0.2", "[::1]", "localhost", "redis"):
        validate_url(f"https://{host}/x", allow_private=True)
    for host in ("169.254.169.254", "[fd00:ec2::254]", "0.0.0.0", "224.0.0.1", "2130706433"):
        with pytest.raises(UnsafeUrl):
            validate_url(f"https://{host}/x", allow_private=True)


def _literal(host: str) -> str:
    return host.strip("[]")


@pytest.mark.parametrize("address", [_literal(h) for h in REFUSED_HOSTS])
def test_connect_time_check_refuses_a_name_resolving_to_any_refused_address(address: str) -> None:
    with Receiver() as sentinel:
        resolver = {"hooks.example.com": [address]}
        with guarded_client(
            allow_private=False, timeout_s=5, resolver=lambda host, port: resolver[host]
        ) as client:
            with pytest.raises(UnsafeAddress):
                client.post(f"http://hooks.example.com:{sentinel.port}/hook", content=b"{}")
    assert sentinel.received == []


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    with Receiver() as sentinel:
        addresses = ["93.184.216.34", "127.0.0.1"]
        client = guarded_client(allow_private=False, timeout_s=5, resolver=lambda h, p: addresses)
        with client, pytest.raises(UnsafeAddress):
            client.get(f"http://hooks.example.com:{sentinel.port}/")
    assert sentinel.received == []


@pytest.mark.parametrize("host", ["localhost", "2130706433", "0x7f.1", "127.1"])
def test_system_resolver_answers_are_checked_too(host: str) -> None:
    # The C resolver reads these as 127.0.0.1: only the connect-time check stands between.
    with Receiver() as sentinel, guarded_client(allow_private=False, timeout_s=5) as client:
        with pytest.raises(UnsafeAddress):
            client.get(f"http://{host}:{sentinel.port}/")
    assert sentinel.received == []


def test_checked_connection_keeps_the_host_header() -> None:
    with Receiver() as receiver:
        with guarded_client(
            allow_private=True, timeout_s=5, resolver=lambda h, p: ["127.0.0.1"]
        ) as client:
            response = client.post(f"http://hooks.example.com:{receiver.port}/h", content=b"x")
    assert response.status_code == 200
    assert receiver.received[0].headers["host"] == f"hooks.example.com:{receiver.port}"


def _tls_pair(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for `name`, and the certificate file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def test_tls_is_verified_against_the_url_host_not_the_checked_address(tmp_path: Path) -> None:
    server_context, cert = _tls_pair(tmp_path, "hooks.example.com")
    trust = ssl.create_default_context(cafile=str(cert))
    with Receiver(tls=server_context) as receiver:
        with guarded_client(
            allow_private=True, timeout_s=5, resolver=lambda h, p: ["127.0.0.1"], verify=trust
        ) as client:
            response = client.post(f"https://hooks.example.com:{receiver.port}/h", content=b"x")
            with pytest.raises(httpx.ConnectError):
                # Same server, another name: verification is really on.
                client.post(f"https://other.example.com:{receiver.port}/h", content=b"x")
    assert response.status_code == 200
    assert len(receiver.received) == 1


def test_redirects_are_not_followed() -> None:
    with Receiver() as target:
        redirect = Reply(302, headers={"location": target.url("/stolen")})
        with (
            Receiver([redirect]) as receiver,
            guarded_client(allow_private=True, timeout_s=5) as client,
        ):
            response = client.post(receiver.url(), content=b"{}")
    assert response.status_code == 302
    assert target.received == []


def test_response_reads_stop_at_the_cap_even_for_an_endless_body() -> None:
    with (
        Receiver([Reply(200, endless=True)]) as receiver,
        guarded_client(allow_private=True, timeout_s=5) as client,
    ):
        with client.stream("POST", receiver.url(), content=b"{}") as response:
            body = read_capped(response, 10_000)
    assert len(body) == 10_000
