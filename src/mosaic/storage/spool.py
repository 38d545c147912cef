"""Spool files for objects arriving over the network (C-STORE, STOW-RS)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from mosaic.storage.base import BlobStore, LocalFiles


class Spool:
    """Spool files for received data sets: a new file per data set, and its disposal after ingest.

    The default writes temporary files into ``folder``. A blob store with local files (the filesystem
    backend: :meth:`~mosaic.storage.base.BlobStore.local_files`) lends its own new blob paths instead, so a
    received data set is written once,
    where it will stay: ingest adopts it, and ``discard`` deletes only what was not adopted.
    """

    def __init__(self, folder: Path | None = None, blobs: BlobStore | None = None) -> None:
        self.folder = folder
        self.blobs: LocalFiles | None = blobs.local_files() if blobs is not None else None

    def new(self) -> Path:
        if self.blobs is not None:
            return Path(self.blobs.reserve())
        descriptor, name = tempfile.mkstemp(suffix=".dcm", dir=self.folder)
        os.close(descriptor)
        return Path(name)

    def create(self) -> tuple[Path, BinaryIO]:
        """A new spool file, open for writing; an ``OSError`` (a full disk) leaves nothing reserved behind."""
        path = self.new()
        try:
            return path, open(path, "wb")  # the receiver closes it when the data set ends
        except OSError:
            self.discard(path)
            raise

    def discard(self, path: Path) -> None:
        if self.blobs is not None:
            self.blobs.discard(path)
        else:
            path.unlink(missing_ok=True)
