"""Blobs as files in a local folder (the embedded default)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from mosaic.core.errors import StorageFailure
from mosaic.storage.base import BlobSource, StoredBlob, iter_chunks, new_key

_TMP = ".incoming"


def _fsync(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


class FileSystemBlobStore:
    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: set[Path] = set()
        self._syncing: dict[str, Future[None]] = {}
        self._reserved: dict[str, str] = {}
        """path → key of new blobs lent to a receiver (written once, where they stay)."""
        self._sync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-fsync")
        (root / _TMP).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise StorageFailure(f"invalid blob key {key!r}")
        return self.root / key

    def local_files(self) -> FileSystemBlobStore:
        return self

    @property
    def incoming(self) -> Path:
        """A folder on the blob store's file system: files received here can be linked in, not copied."""
        return self.root / _TMP

    def reserve(self) -> Path:
        """A new blob path for a receiver to write into; ingest adopts it, or :meth:`discard` removes it."""
        key = new_key()
        path = self._path(key)
        self._folder(path.parent)
        self._reserved[str(path)] = key
        return path

    def discard(self, path: Path) -> None:
        """Delete a reserved path that ingest did not adopt (rejected, or already stored)."""
        if self._reserved.pop(str(path), None) is not None:
            path.unlink(missing_ok=True)

    def write(self, source: BlobSource, sha256: str | None = None) -> StoredBlob:
        if isinstance(source, Path) and sha256 is not None:
            key = self._reserved.pop(str(source), None)
            if key is not None:
                # received straight into its blob path: adopt it; the fsync overlaps the caller's work
                self._syncing[key] = self._sync_pool.submit(_fsync, source)
                return StoredBlob(key=key, size=source.stat().st_size, sha256=sha256)
        key = new_key()
        final = self._path(key)
        if isinstance(source, Path) and sha256 is not None and source.parent == self.incoming:
            # only our own spool files are linked: a user's file could be changed in place later
            linked = self._link(source, final, sha256)
            if linked is not None:
                return linked
        temporary = self.root / _TMP / final.name
        digest = hashlib.sha256()
        size = 0
        try:
            with open(temporary, "wb") as out:
                for chunk in iter_chunks(source):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._folder(final.parent)
            os.rename(temporary, final)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise StorageFailure(f"cannot write blob {key}: {exc}") from exc
        return StoredBlob(key=key, size=size, sha256=digest.hexdigest())

    def _folder(self, folder: Path) -> None:
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(folder)

    def _link(self, source: Path, final: Path, sha256: str) -> StoredBlob | None:
        """Hard-link a received file into place (same file system): no copy, same durability."""
        try:
            self._folder(final.parent)
            os.link(source, final)
        except OSError:
            return None
        key = str(final.relative_to(self.root))
        # the fsync runs while the caller prepares its index rows; flush() waits for it before the commit
        self._syncing[key] = self._sync_pool.submit(_fsync, final)
        return StoredBlob(key=key, size=final.stat().st_size, sha256=sha256)

    def flush(self, blob: StoredBlob) -> None:
        """Wait until the bytes of ``blob`` are durable (before the index row that names them commits)."""
        pending = self._syncing.pop(blob.key, None)
        if pending is not None:
            try:
                pending.result()
            except OSError as exc:
                raise StorageFailure(f"cannot make blob {blob.key} durable: {exc}") from exc

    def commit(self, blob: StoredBlob) -> None:
        """Nothing to do: the bytes were made durable under their final name in phase one."""

    def revoke(self, blob: StoredBlob) -> None:
        pending = self._syncing.pop(blob.key, None)
        if pending is not None:
            pending.cancel()
        self._path(blob.key).unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._path(key), "rb") as stream:
            stream.seek(start)
            return stream.read(length)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def local_path(self, key: str) -> Path:
        """The file behind a key (lets DIMSE egress read without copying)."""
        return self._path(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def iter_keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [name for name in dirnames if name != _TMP]
            for filename in filenames:
                yield os.path.relpath(os.path.join(dirpath, filename), self.root).replace(os.sep, "/")
