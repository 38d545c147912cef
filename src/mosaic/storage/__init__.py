"""Blob storage: one interface, two-phase writes, filesystem and S3 backends."""

from mosaic.storage.base import BlobStore, StoredBlob, open_blob_store

__all__ = ["BlobStore", "StoredBlob", "open_blob_store"]
