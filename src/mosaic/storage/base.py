"""The blob store interface (Orthanc's IStorageArea, dcm4chee's commit/revoke).

A write is two-phase: :meth:`BlobStore.write` makes the bytes durable under a new key and
returns a :class:`StoredBlob`; the caller then commits its index row and calls
:meth:`BlobStore.commit`, or calls :meth:`BlobStore.revoke` to remove the bytes again. A crash
between the two leaves at worst an orphan blob (found by ``mosaic verify``), never an indexed
object without bytes. Keys are new for every write, so stored bytes are never rewritten.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_SIZE = 1024 * 1024
BlobSource = bytes | Path | BinaryIO


@dataclass(frozen=True)
class StoredBlob:
    """Bytes written in phase one: durable, not yet referenced by the index."""

    key: str
    size: int
    sha256: str


class LocalFiles(Protocol):
    """What a store whose blobs are files on this machine adds: callers read the file itself (no copy) and
    receivers write into the store's own folder (linked or adopted, never copied)."""

    @property
    def incoming(self) -> Path:
        """A folder on the blob store's file system for data sets being received."""

    def local_path(self, key: str) -> Path:
        """The file behind ``key``."""

    def reserve(self) -> Path:
        """A new blob path for a receiver to write into; ingest adopts it, or :meth:`discard` removes it."""

    def discard(self, path: Path) -> None:
        """Delete a reserved path that ingest did not adopt."""


class BlobStore(Protocol):
    """What every backend provides."""

    name: str

    def local_files(self) -> LocalFiles | None:
        """The store's files on this machine (the filesystem backend), or None (object storage): the one way a
        caller learns it may read a blob as a file."""

    def write(self, source: BlobSource, sha256: str | None = None) -> StoredBlob:
        """Phase one: stream ``source`` to a new key, hashing as it goes.

        ``sha256``, when the caller already hashed ``source``, lets a backend skip re-reading it.
        """

    def flush(self, blob: StoredBlob) -> None:
        """Wait until ``blob``'s bytes are durable; called just before the index row naming it commits."""

    def commit(self, blob: StoredBlob) -> None:
        """Phase two: the index now references ``blob``."""

    def revoke(self, blob: StoredBlob) -> None:
        """Undo phase one: the index will never reference ``blob``."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the blob; raises ``FileNotFoundError`` if missing."""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start``."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None:
        """Remove a blob (retention and purge only; originals are otherwise never touched)."""

    def iter_keys(self) -> Iterator[str]:
        """Every committed or orphaned key (for verification and reconciliation)."""


def new_key() -> str:
    """A fresh key: ``YYYY/MM/DD/HH/ab/<uuid>.dcm`` (UTC hour of the write, then 256 folders).

    Folders are made once per hour instead of once per object (a fresh 2-level hash layout creates a
    folder for most of its first hundred thousand objects), recent writes sit together (a reconcile or
    backup of "what arrived since" lists a few folders), and 256 folders per hour keep each small.
    """
    name = uuid.uuid4().hex
    return f"{time.strftime('%Y/%m/%d/%H', time.gmtime())}/{name[:2]}/{name}.dcm"


def iter_chunks(source: BlobSource) -> Iterator[bytes]:
    if isinstance(source, bytes):
        for start in range(0, len(source), CHUNK_SIZE):
            yield source[start : start + CHUNK_SIZE]
        return
    if isinstance(source, Path):
        with open(source, "rb") as stream:
            yield from iter(lambda: stream.read(CHUNK_SIZE), b"")
        return
    yield from iter(lambda: source.read(CHUNK_SIZE), b"")


def sha256_of(source: BlobSource) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in iter_chunks(source):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
