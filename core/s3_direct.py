"""S3 object calls signed with botocore's SigV4 signer and sent over urllib3, without boto3.

A boto3 call spends most of its CPU on its event hooks, parameter validation and response
parsing; for a job's one conditional PUT and one GET that is over half the cost. This path
signs the same requests with the same signer and sends them on a pool of its own, keeping
boto3's "standard" retries and raising the exceptions boto3 raises (ClientError,
EndpointConnectionError, ...), so callers cannot tell the two apart.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import responses
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass
from xml.etree import ElementTree

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.httpsession import get_cert_path
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout

# What boto3's "standard" retry mode retries, besides connection errors and read timeouts.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
RETRY_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestTimeout"}
    | {"RequestTimeoutException", "PriorRequestNotComplete", "TooManyRequestsException"}
)
# Bucket names AWS can address as a host name (no dots: they break the TLS wildcard).
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# The payload hash: sha256 of the body for PUT, UNSIGNED-PAYLOAD for bodiless GET/HEAD.
_SIGN_BODY = {True: Config(s3={"payload_signing_enabled": True}),
              False: Config(s3={"payload_signing_enabled": False})}  # fmt: skip


@dataclass(frozen=True)
class Response:
    """A successful answer: status, headers and the whole body."""

    status: int
    headers: Any
    body: bytes


class DirectS3:
    """One bucket's object calls, signed per request (refreshable credentials keep working)."""

    def __init__(
        self,
        *,
        base_url: str,
        region: str,
        credentials: Any,
        max_attempts: int = 5,
        max_pool_connections: int = 32,
        connect_timeout_s: float = 5,
        read_timeout_s: float = 30,
        backoff_s: float = 1.0,
        max_backoff_s: float = 20.0,
        ca_bundle: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        self.base_url = base_url.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self.region = region
        self._credentials = credentials
        self._base_path = parts.path.rstrip("/")
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=max_pool_connections,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=False,
            ca_certs=ca_bundle,
        ).connection_from_url(self.base_url)

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> Response:
        """PUT an object; ClientError on any HTTP error that retries did not cure."""
        return self.request("PUT", key, "PutObject", body=data, headers=headers)

    def get(self, key: str) -> Response:
        """GET an object's bytes."""
        return self.request("GET", key, "GetObject")

    def head(self, key: str) -> Response:
        """HEAD an object."""
        return self.request("HEAD", key, "HeadObject")

    def request(
        self,
        method: str,
        key: str,
        operation: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Sign and send one request, retrying what boto3's standard mode retries."""
        # S3 takes the key percent-encoded once, as SigV4's canonical URI wants it (S3's
        # signer does not encode it again).
        path = f"{self._base_path}/{quote(key, safe='/~')}"
        url = self._origin + path
        for attempt in range(1, self._max_attempts + 1):
            last = attempt == self._max_attempts
            try:
                answer = self._send(method, url, path, body, headers or {})
            except (Urllib3Error, OSError) as exc:
                if last:  # boto3 retries every connection failure and timeout
                    raise _as_botocore_error(exc, url) from exc
            else:
                if answer.status < 300:
                    return Response(answer.status, answer.headers, answer.data)
                error = client_error(answer.status, answer.headers, answer.data, operation)
                retry = answer.status in RETRY_STATUSES or error.response["Error"]["Code"] in (
                    RETRY_CODES
                )
                if last or not retry:
                    error.response["ResponseMetadata"]["RetryAttempts"] = attempt - 1
                    raise error
            # Full jitter, as botocore's standard mode: up to 1 s, 2 s, 4 s, ... capped.
            ceiling = min(self._backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
            self._sleep(random.random() * ceiling)  # noqa: S311 - jitter, not a secret
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _send(
        self, method: str, url: str, path: str, body: bytes, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        request = AWSRequest(method=method, url=url, data=body or None, headers=headers)
        request.context["client_config"] = _SIGN_BODY[bool(body)]
        credentials = self._credentials.get_frozen_credentials()
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        return self._pool.urlopen(
            method,
            path,  # the path as signed: urllib3 would normalise a full URL's dot segments
            body=body or None,
            headers=dict(request.headers.items()),
            retries=False,
            redirect=False,
            assert_same_host=False,
        )


def client_error(status: int, headers: Any, body: bytes, operation: str) -> ClientError:
    """The ClientError boto3 would raise for an S3 error answer (its XML body parsed)."""
    code, message = str(status), responses.get(status, "")  # HEAD answers carry no body
    if body:
        try:
            root = ElementTree.fromstring(body)  # noqa: S314 - S3's own answer, no entities
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
        except ElementTree.ParseError:  # a proxy's HTML page, say
            pass
    metadata = {
        "HTTPStatusCode": status,
        "HTTPHeaders": {name.lower(): value for name, value in headers.items()},
        "RequestId": headers.get("x-amz-request-id", ""),
        "RetryAttempts": 0,
    }
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}
    return ClientError(response, operation)


def _as_botocore_error(exc: BaseException, url: str) -> Exception:
    """The botocore exception boto3 raises for the same urllib3 failure."""
    if isinstance(exc, NewConnectionError | urllib3.exceptions.NameResolutionError):
        return EndpointConnectionError(endpoint_url=url, error=exc)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return ConnectTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, Urllib3ReadTimeout):
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, ProtocolError):
        return ConnectionClosedError(endpoint_url=url)
    return EndpointConnectionError(endpoint_url=url, error=exc)


def direct_for(
    client: Any, bucket: str, credentials: Any, *, endpoint_configured: bool, ca_bundle: str | None
) -> DirectS3 | None:
    """The direct path to a boto3 client's bucket, or None where only boto3 can address it."""
    if credentials is None:  # boto3 raises NoCredentialsError; let it
        return None
    region = client.meta.region_name or "us-east-1"
    endpoint = client.meta.endpoint_url.rstrip("/")
    if endpoint_configured:  # MinIO, Ceph, moto: path-style, as boto3 addresses them
        base = f"{endpoint}/{quote(bucket, safe='')}"
    elif urlsplit(endpoint).hostname in (f"s3.{region}.amazonaws.com", "s3.amazonaws.com") and (
        _DNS_BUCKET.match(bucket)
    ):
        base = f"https://{bucket}.s3.{region}.amazonaws.com"
    else:  # dotted buckets, FIPS, dual-stack, other partitions: boto3 knows their addresses
        return None
    if urlsplit(base).scheme in getproxies() and not proxy_bypass(urlsplit(base).hostname or ""):
        return None  # boto3 goes through the proxy; this path would not
    config = client.meta.config
    return DirectS3(
        base_url=base,
        region=region,
        credentials=credentials,
        max_attempts=_total_attempts(config.retries or {}),
        max_pool_connections=config.max_pool_connections,
        connect_timeout_s=config.connect_timeout,
        read_timeout_s=config.read_timeout,
        ca_bundle=ca_bundle,
    )


def direct_for_session(
    session: Any, client: Any, bucket: str, endpoint_url: str | None
) -> DirectS3 | None:
    """The direct path for a client made from a botocore session (its credentials and CA)."""
    # Verify TLS as the client does: AWS_CA_BUNDLE or the configured bundle, else certifi's.
    ca_bundle = session.get_config_variable("ca_bundle") or get_cert_path(True)
    return direct_for(
        client,
        bucket,
        session.get_credentials(),
        endpoint_configured=endpoint_url is not None,
        ca_bundle=ca_bundle,
    )


def _total_attempts(retries: dict[str, Any]) -> int:
    """Attempts in all, as botocore counts them: its max_attempts does not count the first."""
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    return int(retries.get("max_attempts", 2)) + 1  # standard mode's default: 3 in all
