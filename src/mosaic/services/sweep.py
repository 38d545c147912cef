"""The start-up sweep: what stopped processes left half-written, removed.

A process killed mid-write (kill -9, power loss, OOM) leaves files no index row will ever name: spool files of
data sets being received, and new blob files whose index commit never came (a STOW-RS part or C-STORE data set
written into its blob path, a blob waiting for its transaction). None of them was acknowledged to its sender (an
answer follows the index commit), so the sender sends again; kept, they only fill the disk (about five per kill).

A file is removed only when it was last written ``storage.sweep_age_seconds`` before this process started: a
write still in flight on another process or node sharing the storage keeps touching its file, or is younger
than that. Files written since the start are this process's own, never swept. The filesystem blob store is swept
(a batch of keys at a time asked of the index, by the ``blob_key`` indexes); an S3 bucket is not (listing it at
every start is costly, and an S3 object is written whole: an orphan there is complete, found by `mosaic verify`
and indexed by `--repair`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mosaic.index.database import Database
from mosaic.index.schema import Instance, InstanceVersion

log = logging.getLogger("mosaic.sweep")

_BATCH = 500


@dataclass
class SweepReport:
    spool_files: int = 0
    blob_files: int = 0
    kept_young: int = 0
    """Unreferenced files written too recently to be sure no one is writing them (left for a later start)."""


class LeftoverSweep:
    """Removes unreferenced spool and blob files last written before ``written_before`` (a POSIX time)."""

    def __init__(self, database: Database, blobs: Any, spool_folders: Iterable[Path]) -> None:
        self.database = database
        self.blobs = blobs
        self.spool_folders = list(spool_folders)
        self.stopping = threading.Event()

    def run(self, written_before: float) -> SweepReport:
        report = SweepReport()
        for folder in self.spool_folders:
            for path in _files(folder):
                self._remove_if_old(path, written_before, report, "spool_files")
        local = self.blobs.local_files()
        if local is not None:  # the filesystem backend
            for keys in _batches(self.blobs.iter_keys()):
                if self.stopping.is_set():
                    break
                for key in sorted(set(keys) - self._referenced(keys)):
                    self._remove_if_old(local.local_path(key), written_before, report, "blob_files")
        return report

    def _referenced(self, keys: list[str]) -> set[str]:
        with self.database.session() as session:
            found = set(session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))
            found.update(session.scalars(select(InstanceVersion.blob_key).where(InstanceVersion.blob_key.in_(keys))))
        return found

    @staticmethod
    def _remove_if_old(path: Path, written_before: float, report: SweepReport, counter: str) -> None:
        try:
            if path.stat().st_mtime >= written_before:
                report.kept_young += 1
                return
            path.unlink()
        except FileNotFoundError:  # gone meanwhile (adopted, discarded): nothing to do
            return
        except OSError as exc:
            log.warning("start-up sweep: cannot remove %s: %s", path, exc)
            return
        setattr(report, counter, getattr(report, counter) + 1)


def _files(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _batches(keys: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
