"""The blob store contract, run against every backend: a local folder and S3 (a real moto server)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from mosaic.config import Settings, StorageBackend, StorageSettings
from mosaic.storage import BlobStore, StoredBlob, open_blob_store
from mosaic.storage.base import CHUNK_SIZE
from mosaic.storage.filesystem import FileSystemBlobStore
from mosaic.storage.s3 import S3BlobStore

BACKENDS = ["filesystem", "s3"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FileSystemBlobStore(tmp_path / "blobs")
    settings: StorageSettings = request.getfixturevalue("s3_storage_settings")
    return S3BlobStore.from_settings(settings)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that are not all alike (so offsets matter)."""
    pattern = hashlib.sha256(str(seed).encode()).digest()
    return (pattern * (size // len(pattern) + 1))[:size]


def read_all(store: BlobStore, key: str) -> bytes:
    with contextlib.closing(store.open(key)) as stream:
        return stream.read()


def assert_blob(store: BlobStore, blob: StoredBlob, data: bytes) -> None:
    assert blob.size == len(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists(blob.key)
    assert store.size(blob.key) == len(data)
    assert read_all(store, blob.key) == data


class NonSeekableStream(io.RawIOBase):
    """A stream that can only be read forward, like a socket or a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# ------------------------------------------------------------------------------------------------ write


@pytest.mark.parametrize("size", [0, 1, 1000, 2 * CHUNK_SIZE + 17])
def test_write_bytes_stores_exact_bytes_with_their_sha256_and_size(store: BlobStore, size: int) -> None:
    data = payload(size)
    blob = store.write(data)
    assert_blob(store, blob, data)


def test_write_path_stores_the_file_content(store: BlobStore, tmp_path: Path) -> None:
    data = payload(CHUNK_SIZE + 5, seed=1)
    source = tmp_path / "source.dcm"
    source.write_bytes(data)
    blob = store.write(source)
    assert_blob(store, blob, data)
    assert source.read_bytes() == data, "the source file is left as it was"


def test_write_path_with_a_known_sha256_stores_the_file_content(store: BlobStore, tmp_path: Path) -> None:
    data = payload(70_000, seed=14)
    source = tmp_path / "received.dcm"
    source.write_bytes(data)
    blob = store.write(source, sha256=hashlib.sha256(data).hexdigest())
    assert_blob(store, blob, data)
    assert blob.key in set(store.iter_keys())


def test_write_stream_stores_the_stream_content(store: BlobStore) -> None:
    data = payload(CHUNK_SIZE * 2 + 3, seed=2)
    blob = store.write(io.BytesIO(data))
    assert_blob(store, blob, data)


def test_write_open_file_stores_its_content(store: BlobStore, tmp_path: Path) -> None:
    data = payload(4096, seed=3)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    with open(source, "rb") as stream:
        blob = store.write(stream)
    assert_blob(store, blob, data)


def test_write_non_seekable_stream_stores_its_content(store: BlobStore) -> None:
    data = payload(CHUNK_SIZE + 123, seed=4)
    stream: BinaryIO = io.BufferedReader(NonSeekableStream(data))
    blob = store.write(stream)
    assert_blob(store, blob, data)


def test_write_stream_stores_from_its_current_position(store: BlobStore) -> None:
    data = payload(3000, seed=5)
    stream = io.BytesIO(data)
    stream.seek(1000)
    blob = store.write(stream)
    assert_blob(store, blob, data[1000:])


def test_identical_content_gets_a_new_key_and_never_rewrites_the_first(store: BlobStore) -> None:
    data = payload(2048, seed=6)
    first = store.write(data)
    second = store.write(data)
    assert first.key != second.key
    assert first.sha256 == second.sha256
    assert read_all(store, first.key) == data
    assert read_all(store, second.key) == data
    store.revoke(second)
    assert read_all(store, first.key) == data, "revoking a copy leaves the first blob alone"


def test_keys_are_relative_paths_without_traversal(store: BlobStore) -> None:
    key = store.write(b"x").key
    assert not key.startswith("/")
    assert ".." not in key.split("/")


# ------------------------------------------------------------------------------------- commit and revoke


def test_commit_keeps_the_blob_readable(store: BlobStore) -> None:
    data = payload(100, seed=7)
    blob = store.write(data)
    store.commit(blob)
    assert_blob(store, blob, data)


def test_revoke_removes_the_blob(store: BlobStore) -> None:
    blob = store.write(payload(100, seed=8))
    store.revoke(blob)
    assert not store.exists(blob.key)
    with pytest.raises(FileNotFoundError):
        store.open(blob.key)


def test_revoke_of_an_already_removed_blob_is_harmless(store: BlobStore) -> None:
    blob = store.write(b"gone")
    store.revoke(blob)
    store.revoke(blob)
    assert not store.exists(blob.key)


# ------------------------------------------------------------------------------------------------- read


def test_read_range_returns_exact_bytes(store: BlobStore) -> None:
    data = payload(CHUNK_SIZE + 4096, seed=9)
    key = store.write(data).key
    for start, length in [(0, 1), (0, 128), (1, 127), (4000, 10_000), (CHUNK_SIZE - 3, 10), (len(data) - 1, 1)]:
        assert store.read_range(key, start, length) == data[start : start + length], (start, length)


def test_read_range_of_the_whole_blob_returns_every_byte(store: BlobStore) -> None:
    data = payload(5000, seed=10)
    key = store.write(data).key
    assert store.read_range(key, 0, len(data)) == data


def test_read_range_past_the_end_returns_the_tail(store: BlobStore) -> None:
    data = payload(1000, seed=11)
    key = store.write(data).key
    assert store.read_range(key, 900, 500) == data[900:]


def test_read_range_of_zero_length_returns_nothing(store: BlobStore) -> None:
    key = store.write(payload(100, seed=12)).key
    assert store.read_range(key, 10, 0) == b""


def test_open_streams_in_pieces(store: BlobStore) -> None:
    data = payload(300_000, seed=13)
    key = store.write(data).key
    pieces = []
    with contextlib.closing(store.open(key)) as stream:
        while piece := stream.read(65536):
            pieces.append(piece)
    assert b"".join(pieces) == data


# ------------------------------------------------------------------------------------------ missing keys


def test_open_of_a_missing_key_raises_file_not_found(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("00/00/00000000000000000000000000000000.dcm")


def test_size_of_a_missing_key_raises_file_not_found(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.size("00/00/00000000000000000000000000000000.dcm")


def test_read_range_of_a_missing_key_raises_file_not_found(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.read_range("00/00/00000000000000000000000000000000.dcm", 0, 10)


def test_exists_is_false_for_a_missing_key(store: BlobStore) -> None:
    assert not store.exists("00/00/00000000000000000000000000000000.dcm")


# --------------------------------------------------------------------------------------- delete and list


def test_delete_removes_only_that_blob(store: BlobStore) -> None:
    kept = store.write(b"kept")
    deleted = store.write(b"deleted")
    store.delete(deleted.key)
    assert not store.exists(deleted.key)
    assert store.exists(kept.key)
    assert read_all(store, kept.key) == b"kept"


def test_delete_of_a_missing_key_is_harmless(store: BlobStore) -> None:
    store.delete("00/00/00000000000000000000000000000000.dcm")


def test_iter_keys_lists_written_blobs_and_not_revoked_or_deleted_ones(store: BlobStore) -> None:
    committed = store.write(b"committed")
    store.commit(committed)
    orphan = store.write(b"orphan")  # written, never committed nor revoked: still listed
    revoked = store.write(b"revoked")
    store.revoke(revoked)
    deleted = store.write(b"deleted")
    store.delete(deleted.key)
    assert sorted(store.iter_keys()) == sorted([committed.key, orphan.key])


def test_iter_keys_of_an_empty_store_is_empty(store: BlobStore) -> None:
    assert list(store.iter_keys()) == []


def test_iter_keys_lists_many_blobs(store: BlobStore) -> None:
    keys = {store.write(str(number).encode()).key for number in range(25)}
    assert set(store.iter_keys()) == keys


# ------------------------------------------------------------------------------------- backend specifics


def test_local_files_when_offered_are_the_stored_bytes(store: BlobStore) -> None:
    """A reader that asks ``local_files()`` reads the very file a key names (no copy); a store that has no
    files on this machine says so instead of being probed for attributes."""
    data = payload(4096, seed=3)
    blob = store.write(data)
    store.commit(blob)
    local = store.local_files()
    if store.name == "s3":
        assert local is None
        return
    assert local is not None
    assert local.local_path(blob.key).read_bytes() == data
    assert local.incoming.is_dir()


def test_filesystem_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    blob = store.write(payload(10_000))
    files = [
        os.path.relpath(os.path.join(folder, name), tmp_path / "blobs")
        for folder, _, names in os.walk(tmp_path / "blobs")
        for name in names
    ]
    assert files == [blob.key]


def test_s3_prefix_keeps_blobs_under_it_and_keys_relative(s3_storage_settings: StorageSettings) -> None:
    settings = s3_storage_settings.model_copy(update={"s3_prefix": "/tenant-a/"})
    store = S3BlobStore.from_settings(settings)
    blob = store.write(b"prefixed")
    assert list(store.iter_keys()) == [blob.key]
    listed = store.client.list_objects_v2(Bucket=settings.s3_bucket)
    assert [item["Key"] for item in listed["Contents"]] == [f"tenant-a/{blob.key}"]
    other = S3BlobStore.from_settings(settings.model_copy(update={"s3_prefix": "tenant-b"}))
    assert list(other.iter_keys()) == []


def test_open_blob_store_picks_the_configured_backend(tmp_path: Path, s3_storage_settings: StorageSettings) -> None:
    local = open_blob_store(Settings(data_dir=tmp_path))
    assert isinstance(local, FileSystemBlobStore)
    assert local.root == (tmp_path / "blobs").resolve()
    remote = open_blob_store(Settings(data_dir=tmp_path, storage=s3_storage_settings))
    assert isinstance(remote, S3BlobStore)
    assert s3_storage_settings.backend == StorageBackend.S3
    assert remote.write(b"round trip").size == len(b"round trip")
