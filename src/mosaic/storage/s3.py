"""Blobs as objects in an S3-compatible store (AWS S3, MinIO, Ceph RGW, …)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mosaic.core.errors import StorageFailure
from mosaic.storage.base import BlobSource, StoredBlob, iter_chunks, new_key, sha256_of

if TYPE_CHECKING:
    from mosaic.config import StorageSettings


class S3BlobStore:
    name = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> S3BlobStore:
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )
        store = cls(client, settings.s3_bucket, settings.s3_prefix)
        if settings.s3_create_bucket:
            try:
                client.head_bucket(Bucket=settings.s3_bucket)
            except ClientError:
                client.create_bucket(Bucket=settings.s3_bucket)
        return store

    def local_files(self) -> None:
        """Objects are not files here: readers stream or range-read them."""
        return None

    def _object_key(self, key: str) -> str:
        return self.prefix + key

    def write(self, source: BlobSource, sha256: str | None = None) -> StoredBlob:
        """Upload to a new key; the hash is always recomputed from what is uploaded."""
        key = new_key()
        try:
            with contextlib.ExitStack() as cleanup:
                if isinstance(source, bytes):
                    sha256, size = sha256_of(source)
                    body: BinaryIO = io.BytesIO(source)
                elif isinstance(source, Path):
                    sha256, size = sha256_of(source)
                    body = cleanup.enter_context(open(source, "rb"))
                elif _seekable(source):
                    # Hash from the current position, then upload from that same position.
                    start = source.tell()
                    sha256, size = sha256_of(source)
                    source.seek(start)
                    body = source
                else:
                    # A forward-only stream (socket, pipe) cannot be read twice: hash while spooling it.
                    spool = cleanup.enter_context(tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY))
                    digest = hashlib.sha256()
                    size = 0
                    for chunk in iter_chunks(source):
                        digest.update(chunk)
                        size += len(chunk)
                        spool.write(chunk)
                    sha256 = digest.hexdigest()
                    spool.seek(0)
                    body = spool  # type: ignore[assignment]
                self.client.upload_fileobj(body, self.bucket, self._object_key(key),
                                           ExtraArgs={"Metadata": {"sha256": sha256}})
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageFailure(f"cannot write blob {key} to s3://{self.bucket}: {exc}") from exc
        return StoredBlob(key=key, size=size, sha256=sha256)

    def flush(self, blob: StoredBlob) -> None:
        """Nothing to wait for: an upload is durable when it returns."""

    def commit(self, blob: StoredBlob) -> None:
        """Nothing to do: the object is complete once the upload returns."""

    def revoke(self, blob: StoredBlob) -> None:
        self.delete(blob.key)

    def _missing(self, key: str, exc: ClientError) -> Exception:
        """``FileNotFoundError`` for a missing object (as the filesystem backend), else ``StorageFailure``."""
        location = f"s3://{self.bucket}/{self._object_key(key)}"
        if _is_not_found(exc):
            return FileNotFoundError(location)
        return StorageFailure(f"cannot read {location}: {exc}")

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            raise self._missing(key, exc) from exc
        return response["Body"]  # type: ignore[no-any-return]

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._object_key(key), Range=f"bytes={start}-{start + length - 1}"
            )
        except ClientError as exc:
            raise self._missing(key, exc) from exc
        return response["Body"].read()  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise self._missing(key, exc) from exc
        return True

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            raise self._missing(key, exc) from exc
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def iter_keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]


_SPOOL_IN_MEMORY = 8 * 1024 * 1024
"""A forward-only stream is spooled in memory up to this size, then in a temporary file."""


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in {"404", "NoSuchKey", "NotFound"} or status == 404
