"""Object storage: the S3 backend against an S3-protocol server, and the local directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import Unavailable
from core.storage import (
    LocalStorage,
    ObjectNotFound,
    ObjectStorage,
    S3Storage,
    image_key,
    open_storage,
    sha256_hex,
    store_once,
)


@pytest.fixture(params=["s3", "s3-boto3", "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    s3_url = request.getfixturevalue("s3_url")
    direct = request.param == "s3"  # puts, gets and HEADs off boto3; s3-boto3: all on it
    return open_storage(
        s3_url, endpoint_url=request.getfixturevalue("s3_endpoint"), s3_direct=direct
    )


def keys(storage: ObjectStorage, prefix: str) -> list[str]:
    return [stored.key for stored in storage.list_objects(prefix)]


def test_put_get_exists_delete_round_trip(storage: ObjectStorage) -> None:
    storage.put("a/b/object", b"hello", content_type="text/plain")
    assert storage.exists("a/b/object")
    assert storage.get("a/b/object") == b"hello"
    storage.delete("a/b/object")
    assert not storage.exists("a/b/object")


def test_missing_object_raises_object_not_found(storage: ObjectStorage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.get("images/00/nothing-here")


def test_same_bytes_are_stored_once_under_their_sha256(storage: ObjectStorage) -> None:
    first = store_once(storage, b"image bytes", content_type="image/png")
    second = store_once(storage, b"image bytes", content_type="image/png")
    digest = sha256_hex(b"image bytes")
    assert first == (digest, True)
    assert second == (digest, False)
    assert keys(storage, "images/") == [image_key(digest)]


def test_list_objects_filters_by_prefix(storage: ObjectStorage) -> None:
    storage.put("images/aa/1", b"1")
    storage.put("other/2", b"2")
    assert keys(storage, "images/") == ["images/aa/1"]


def test_listed_objects_carry_when_they_were_written(storage: ObjectStorage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)  # S3 keeps whole seconds
    storage.put("images/ab/1", b"1")
    storage.put("images/cd/2", b"2")
    listed = list(storage.list_objects("images/ab/"))
    assert [stored.key for stored in listed] == ["images/ab/1"]
    assert before <= listed[0].modified <= datetime.now(UTC) + timedelta(seconds=5)
    assert list(storage.list_objects("images/ef/")) == []  # a folder nothing was stored in


def test_check_passes_when_reachable(storage: ObjectStorage) -> None:
    storage.check()


@pytest.mark.parametrize("direct", [True, False])
def test_s3_prefix_keeps_tenants_of_one_bucket_apart(
    s3_bucket: str, s3_endpoint: str, direct: bool
) -> None:
    one = open_storage(f"s3://{s3_bucket}/one", endpoint_url=s3_endpoint, s3_direct=direct)
    two = open_storage(f"s3://{s3_bucket}/two", endpoint_url=s3_endpoint, s3_direct=direct)
    one.put("k", b"1")
    assert one.exists("k")
    assert not two.exists("k")
    with pytest.raises(ObjectNotFound):
        two.get("k")


def test_s3_check_reports_a_missing_bucket(s3_endpoint: str) -> None:
    storage = S3Storage("no-such-bucket-here", endpoint_url=s3_endpoint)
    with pytest.raises(Unavailable, match="no-such-bucket-here"):
        storage.check()


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes"):
        storage.put("../outside", b"x")


def test_storage_url_schemes(tmp_path: Path) -> None:
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    with pytest.raises(ValueError, match="unsupported storage URL"):
        open_storage("ftp://host/x")


def test_put_if_absent_never_replaces_an_object(storage: ObjectStorage) -> None:
    assert storage.put_if_absent("images/ab/x", b"first") is True
    assert storage.put_if_absent("images/ab/x", b"second") is False
    assert storage.get("images/ab/x") == b"first"
    assert keys(storage, "images/") == ["images/ab/x"]


# Keys S3 needs percent-encoded, each once: a double-encoded key lands under another name.
AWKWARD_KEYS = ["a b/c d", "ünïcödé/キー", "a+b=c", "50%/off", "t~ilde;semi,comma&amp"]


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_keys_needing_quoting_round_trip(storage: ObjectStorage, key: str) -> None:
    assert storage.put_if_absent(f"q/{key}", b"awkward") is True
    assert storage.exists(f"q/{key}")
    assert storage.get(f"q/{key}") == b"awkward"
    assert keys(storage, "q/") == [f"q/{key}"]
    assert storage.put_if_absent(f"q/{key}", b"again") is False


def test_direct_writes_are_what_boto3_reads(s3_url: str, s3_endpoint: str) -> None:
    direct = open_storage(s3_url, endpoint_url=s3_endpoint)
    assert isinstance(direct, S3Storage)
    for key in AWKWARD_KEYS:
        direct.put(key, key.encode(), content_type="text/plain")
        answer = direct.client.get_object(Bucket=direct.bucket, Key=direct.prefix + key)
        assert answer["Body"].read() == key.encode()
        assert answer["ContentType"] == "text/plain"


def test_s3_storage_takes_the_direct_path_unless_told_not_to(
    s3_bucket: str, s3_endpoint: str
) -> None:
    import boto3

    assert S3Storage(s3_bucket, endpoint_url=s3_endpoint).direct is not None
    assert S3Storage(s3_bucket, endpoint_url=s3_endpoint, direct=False).direct is None
    given = boto3.client("s3", endpoint_url=s3_endpoint)
    assert S3Storage(s3_bucket, client=given).direct is None  # its own credentials: boto3 only


def test_aws_buckets_are_addressed_by_host_name_unless_dotted() -> None:
    on_aws = S3Storage("ivj-images", region="eu-west-1")
    assert on_aws.direct is not None
    assert on_aws.direct.base_url == "https://ivj-images.s3.eu-west-1.amazonaws.com"
    assert S3Storage("ivj.images", region="eu-west-1").direct is None
