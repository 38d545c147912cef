"""A seekable stream over a blob read by ranges (object storage), for readers that parse a file piece by piece."""

from __future__ import annotations

import io
from typing import Any

from mosaic.storage.base import BlobStore


class RangeReader(io.RawIOBase):
    """A seekable read-only stream over a blob of a store that only offers ranged reads (S3), reading ahead in
    blocks so that parsing a header element by element does not cost a request per element.

    Not an ``io.BufferedReader``: pydicom would take that for a local file and re-open it by name.
    """

    BLOCK = 256 * 1024

    def __init__(self, blobs: BlobStore, key: str, size: int) -> None:
        super().__init__()
        self._blobs, self._key, self._size, self._position = blobs, key, size, 0
        self._block_start, self._block = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` as far as the blob goes (pydicom does not retry short reads)."""
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._size - self._position)
        done = 0
        while done < wanted:
            start = self._position - self._block_start
            if not 0 <= start < len(self._block):
                if wanted - done >= self.BLOCK:  # large reads go straight through
                    data = self._blobs.read_range(self._key, self._position, wanted - done)
                    if not data:
                        break
                    view[done: done + len(data)] = data
                    done += len(data)
                    self._position += len(data)
                    continue
                self._block_start = self._position
                self._block = self._blobs.read_range(self._key, self._position,
                                                     min(self.BLOCK, self._size - self._position))
                if not self._block:
                    break
                start = 0
            data = self._block[start: start + wanted - done]
            view[done: done + len(data)] = data
            done += len(data)
            self._position += len(data)
        return done
