"""Object storage for images: S3-compatible servers through boto3, or a local directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import unquote, urlparse

from core.errors import Unavailable

if TYPE_CHECKING:
    from core.config import Settings
    from core.s3_direct import DirectS3


class ObjectNotFound(KeyError):
    """The key holds no object."""


class StoredObject(NamedTuple):
    """A key and when its object was last written (UTC)."""

    key: str
    modified: datetime


class ObjectStorage(Protocol):
    """What the service needs from a bucket."""

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Store bytes under key, replacing what was there."""

    def put_if_absent(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> bool:
        """Store bytes under key unless an object is there; True when this call stored them."""

    def get(self, key: str) -> bytes:
        """The bytes under key; ObjectNotFound when absent."""

    def exists(self, key: str) -> bool:
        """Whether key holds an object."""

    def delete(self, key: str) -> None:
        """Remove key; absent keys are fine."""

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose key starts with prefix, in key order."""

    def check(self) -> None:
        """Raise Unavailable when the store cannot be reached."""


def sha256_hex(data: bytes) -> str:
    """The content address of some bytes."""
    return hashlib.sha256(data).hexdigest()


def image_key(sha256: str) -> str:
    """Where an image's bytes live: fanned out by the first two hex digits."""
    return f"images/{sha256[:2]}/{sha256}"


class LocalStorage:
    """A directory as a bucket; writes are atomic so readers never see half an object."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_if_absent(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)  # fails if another writer got there first: never replaces
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        folder = self.root / prefix.rpartition("/")[0]  # only the folder the prefix names
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                except FileNotFoundError:  # deleted since the folder was read
                    continue
                yield StoredObject(key, modified)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"storage directory {self.root} is not writable", code="storage_down")


class S3Storage:
    """A bucket on any S3-compatible server (AWS, MinIO, ...); one client per process.

    Puts, gets and HEADs go the direct path (core.s3_direct: botocore's signer on a urllib3
    pool, a third of boto3's CPU per call) unless direct=False, the client was given, or the
    bucket is one only boto3 can address; deletes, listings and checks stay on boto3.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        direct: bool = True,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.direct: DirectS3 | None = None
        if client is not None:  # its credentials and settings are its own: boto3 only
            self.client = client
            return
        from botocore.session import get_session

        session = get_session()  # botocore's, whose credentials and CA bundle the client uses
        self.client = boto3.session.Session(botocore_session=session).client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
                connect_timeout=5,
                read_timeout=30,
            ),
        )
        if direct:
            from core.s3_direct import direct_for_session

            self.direct = direct_for_session(session, self.client, bucket, endpoint_url)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        if self.direct is not None:
            self.direct.put(self.prefix + key, data, {"Content-Type": content_type})
            return
        self.client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type
        )

    def put_if_absent(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> bool:
        from botocore.exceptions import ClientError

        try:
            # A conditional PUT: one round trip instead of HEAD then PUT, and no overwrite.
            if self.direct is not None:
                headers = {"Content-Type": content_type, "If-None-Match": "*"}
                self.direct.put(self.prefix + key, data, headers)
            else:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=data,
                    ContentType=content_type,
                    IfNoneMatch="*",
                )
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):  # already there (412), or being written right now (409)
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        if self.direct is None:
            return self._boto_get(key)
        try:
            return self.direct.get(self.prefix + key).body
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                raise ObjectNotFound(key) from exc
            raise

    def _boto_get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey as exc:
            raise ObjectNotFound(key) from exc
        body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            if self.direct is not None:
                self.direct.head(self.prefix + key)
            else:
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"][len(self.prefix) :], item["LastModified"])

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(
                f"bucket {self.bucket} unreachable: {exc}", code="storage_down"
            ) from exc


def open_storage(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    s3_direct: bool = True,
) -> ObjectStorage:
    """The storage a URL names: s3://bucket/prefix or file:///path (s3_direct: see S3Storage)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return S3Storage(
            parsed.netloc,
            prefix=parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            direct=s3_direct,
        )
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.netloc + parsed.path)))
    raise ValueError(f"unsupported storage URL {url!r}: use s3://bucket/prefix or file:///path")


def settings_storage(settings: Settings) -> ObjectStorage:
    """The storage the settings name (storage_url, s3_endpoint_url, s3_region, s3_direct)."""
    return open_storage(
        settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        s3_direct=settings.s3_direct,
    )


def store_once(storage: ObjectStorage, data: bytes, *, content_type: str) -> tuple[str, bool]:
    """Store bytes under their content address unless already there; (sha256, newly stored)."""
    digest = sha256_hex(data)
    return digest, storage.put_if_absent(image_key(digest), data, content_type=content_type)
