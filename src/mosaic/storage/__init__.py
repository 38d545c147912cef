"""Blob storage: one interface, two-phase writes, filesystem and S3 backends."""

from __future__ import annotations

from mosaic.config import Settings, StorageBackend
from mosaic.storage.base import BlobStore, LocalFiles, StoredBlob


def open_blob_store(settings: Settings) -> BlobStore:
    """The backend the configuration names."""
    if settings.storage.backend == StorageBackend.S3:
        from mosaic.storage.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings.storage)
    from mosaic.storage.filesystem import FileSystemBlobStore

    return FileSystemBlobStore(settings.blob_path)


__all__ = ["BlobStore", "LocalFiles", "StoredBlob", "open_blob_store"]
