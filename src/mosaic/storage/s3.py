"""Blobs as objects in an S3-compatible store (AWS S3, MinIO, Ceph RGW, …)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mosaic.core.errors import StorageFailure
from mosaic.storage.base import BlobSource, StoredBlob, new_key, sha256_of

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

    def _object_key(self, key: str) -> str:
        return self.prefix + key

    def write(self, source: BlobSource) -> StoredBlob:
        sha256, size = sha256_of(source)
        key = new_key()
        try:
            if isinstance(source, bytes):
                body: BinaryIO = io.BytesIO(source)
                self.client.upload_fileobj(body, self.bucket, self._object_key(key),
                                           ExtraArgs={"Metadata": {"sha256": sha256}})
            elif isinstance(source, Path):
                self.client.upload_file(str(source), self.bucket, self._object_key(key),
                                        ExtraArgs={"Metadata": {"sha256": sha256}})
            else:
                source.seek(0)
                self.client.upload_fileobj(source, self.bucket, self._object_key(key),
                                           ExtraArgs={"Metadata": {"sha256": sha256}})
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageFailure(f"cannot write blob {key} to s3://{self.bucket}: {exc}") from exc
        return StoredBlob(key=key, size=size, sha256=sha256)

    def commit(self, blob: StoredBlob) -> None:
        """Nothing to do: the object is complete once the upload returns."""

    def revoke(self, blob: StoredBlob) -> None:
        self.delete(blob.key)

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            raise FileNotFoundError(f"s3://{self.bucket}/{self._object_key(key)}") from exc
        return response["Body"]  # type: ignore[no-any-return]

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self.client.get_object(
            Bucket=self.bucket, Key=self._object_key(key), Range=f"bytes={start}-{start + length - 1}"
        )
        return response["Body"].read()  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError:
            return False
        return True

    def size(self, key: str) -> int:
        head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def iter_keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]
