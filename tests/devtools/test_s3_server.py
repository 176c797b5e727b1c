"""The benchmarks' S3 server: moto's S3 calls work on it, and a client's connection stays open."""

from __future__ import annotations

import pytest
import urllib3.connection

from core.storage import S3Storage
from devtools.harness import moto_server

pytestmark = pytest.mark.usefixtures("s3_credentials")


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "bench")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_the_service_calls_work_and_one_connection_serves_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sockets: list[object] = []
    new_conn = urllib3.connection.HTTPConnection._new_conn

    def counted(self: urllib3.connection.HTTPConnection) -> object:
        sockets.append(self)
        return new_conn(self)

    with moto_server() as (endpoint, _):
        storage = S3Storage("bench-bucket", endpoint_url=endpoint, region="us-east-1")
        storage.client.create_bucket(Bucket="bench-bucket")
        assert storage.direct is not None
        monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn", counted)
        storage.put("a", b"first", content_type="image/jpeg")
        assert storage.put_if_absent("b", b"second") is True
        assert storage.put_if_absent("b", b"other") is False  # a conditional PUT, refused
        assert [storage.get("a"), storage.get("b")] == [b"first", b"second"]
        assert storage.exists("a") and not storage.exists("missing")
        # Seven requests, one after the other, on the one socket the pool opened.
        assert len(sockets) == 1
