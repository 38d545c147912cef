"""The audit trail's journal: what is queued but not yet in the hash chain survives the process.

The audit writer gathers entries for a moment before one transaction appends them (so a C-STORE never waits for
an audit commit); a process killed meanwhile would lose what it had gathered, although the stores it had
acknowledged are in the index. So every entry is also appended, in queue order, to a per-process journal file
(one ``write`` to the page cache, no fsync: it survives the process, not a power cut), and after each batch
the writer appends how many entries are now in the chain. When nothing is pending the file is emptied. At
start, a journal left by a process of this host that no longer runs is read: the entries after its last
"committed" mark go into the chain (flagged ``recovered``), and the file is removed. A crash between a batch's
commit and its mark records that batch twice, never not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from mosaic.core.processes import running
from mosaic.governance.audit_entry import AuditEntry

log = logging.getLogger("mosaic.audit")


class AuditJournal:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.host = socket.gethostname()
        self.path = folder / f"{self.host}-{os.getpid()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.appended = 0
        self.committed = 0

    @staticmethod
    def encode(entry: AuditEntry) -> bytes:
        """The journal line of ``entry`` (made before taking the trail's lock)."""
        values = dict(vars(entry))
        values["recorded_at"] = entry.recorded_at.isoformat()
        return (json.dumps(values, default=str) + "\n").encode()

    def append(self, line: bytes) -> None:
        """Called in queue order (under the trail's lock) with an :meth:`encode` d entry."""
        os.write(self._fd, line)
        self.appended += 1

    def mark_committed(self, count: int) -> None:
        """``count`` more entries (the oldest not yet marked) are in the chain; empty the file when all are."""
        self.committed += count
        if self.committed >= self.appended:
            os.ftruncate(self._fd, 0)
            self.appended = self.committed = 0
        else:
            os.write(self._fd, (json.dumps({"committed": self.committed}) + "\n").encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if self.appended == self.committed:
            self.path.unlink(missing_ok=True)

    # --- recovery ---------------------------------------------------------------------------

    def recover(self, write: Callable[[list[AuditEntry]], None]) -> int:
        """Hand ``write`` the entries each journal of a stopped process of this host did not get into the chain,
        then remove the journal; the number of entries recovered. Processes starting together take turns (a lock
        file), so a journal is recovered once."""
        recovered = 0
        with open(self.folder / ".recovery.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for path in sorted(self.folder.glob(f"{self.host}-*.jsonl")):
                pid = path.stem.rpartition("-")[2]
                if path == self.path or not pid.isdigit() or running(int(pid)):
                    continue
                entries = _uncommitted(path)
                if entries:
                    log.warning("audit: %d records queued by stopped process %s recovered from %s", len(entries),
                                pid, path)
                    write(entries)
                    recovered += len(entries)
                path.unlink(missing_ok=True)
        return recovered


def _uncommitted(path: Path) -> list[AuditEntry]:
    """The entries of a journal after its last "committed" mark."""
    entries: list[AuditEntry] = []
    committed = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            values = json.loads(line)
        except ValueError:
            continue  # a line cut short by the crash
        if "committed" in values:
            committed = int(values["committed"])
            continue
        values["recorded_at"] = datetime.fromisoformat(values["recorded_at"])
        entries.append(AuditEntry(**values))
    return entries[committed:]
