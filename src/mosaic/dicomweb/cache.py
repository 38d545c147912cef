"""One small in-memory LRU of encoded answers (series metadata, thumbnails), bounded by entries and bytes.

Keys must name immutable content (an ETag over instance versions, a stored sha256 plus rendering
parameters), so entries never need invalidating: a change makes a new key and the old one ages out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class ByteCache:
    def __init__(self, *, max_bytes: int, max_entries: int = 4096) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes // 4:
            return  # one huge answer would push out everything else
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= len(previous)
            self._entries[key] = value
            self._bytes += len(value)
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _key, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
