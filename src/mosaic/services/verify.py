"""Integrity check: re-read every stored object, compare its SHA-256, and find orphan blobs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from mosaic.core.errors import InvalidObject, StorageFailure
from mosaic.core.status import StorageStatus
from mosaic.index.database import Database
from mosaic.index.schema import Instance, InstanceVersion
from mosaic.services.ingest import IngestService
from mosaic.services.origin import Door, IngestOrigin
from mosaic.storage.base import CHUNK_SIZE, BlobStore

REPAIR = IngestOrigin(door=Door.REPAIR)
"""An orphan's bytes are the archive's own: no sender to check or audit."""


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Blobs no index row references (a crash between blob write and index commit)."""

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.corrupt


class VerifyService:
    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.database = database
        self.blobs = blobs

    def total(self) -> int:
        with self.database.session() as session:
            return int(session.scalar(select(func.count(Instance.pk))) or 0)

    def run(self, progress: Callable[[int], None] | None = None, *, orphans: bool = True) -> VerifyReport:
        report = VerifyReport()
        known: set[str] = set()
        last_pk = 0
        while True:
            with self.database.session() as session:
                rows = session.execute(
                    select(Instance.pk, Instance.SOPInstanceUID, Instance.blob_key, Instance.sha256)
                    .where(Instance.pk > last_pk).order_by(Instance.pk).limit(500)).all()
            if not rows:
                break
            for pk, sop_instance_uid, key, sha256 in rows:
                last_pk = pk
                known.add(key)
                report.checked += 1
                problem = self._check(key, sha256)
                if problem == "missing":
                    report.missing.append(f"{sop_instance_uid} (blob {key})")
                elif problem == "corrupt":
                    report.corrupt.append(f"{sop_instance_uid} (blob {key})")
                else:
                    report.ok += 1
                if progress:
                    progress(1)
        if orphans:
            with self.database.session() as session:
                known.update(session.scalars(select(InstanceVersion.blob_key)).all())
            report.orphans = sorted(key for key in self.blobs.iter_keys() if key not in known)
        return report

    def repair_orphans(self, ingest: IngestService, keys: list[str],
                       partial_before: float = float("inf")) -> dict[str, str]:
        """Index orphan blobs (bytes written, index commit lost): {key: what happened}.

        Each orphan goes through the ingest path again (a new blob), and the orphan is removed only
        once its content is indexed: stored now, or already stored with identical bytes. An orphan that is no
        object at all (a partial file a killed receiver left, truncated or not DICOM: status 0xC000) is removed
        when last written before ``partial_before`` (a POSIX time; younger ones may still be being written), and
        one refused for another reason (a conflicting duplicate) is kept for the operator.
        """
        outcomes: dict[str, str] = {}
        local = self.blobs.local_files()
        for key in keys:
            try:
                if local is not None:
                    result = ingest.store(local.local_path(key), REPAIR)  # streamed from the file, never held whole
                else:
                    with self.blobs.open(key) as stream:
                        result = ingest.store(stream.read(), REPAIR)
            except InvalidObject as exc:
                if (exc.status == StorageStatus.ERROR_CANNOT_UNDERSTAND
                        and self._written_before(key, partial_before)):
                    self.blobs.delete(key)
                    outcomes[key] = f"removed, not a complete object: {exc.reason}"
                else:
                    outcomes[key] = f"kept: {exc}"
                continue
            except (StorageFailure, OSError) as exc:
                outcomes[key] = f"kept: {exc}"
                continue
            self.blobs.delete(key)
            outcomes[key] = f"{result.outcome.value}: {result.sop_instance_uid}"
        return outcomes

    def _written_before(self, key: str, moment: float) -> bool:
        """Was the blob last written before ``moment``? (An S3 object is written whole: never in flight.)"""
        local = self.blobs.local_files()
        if local is None:
            return True
        try:
            return bool(local.local_path(key).stat().st_mtime < moment)
        except OSError:
            return False

    def _check(self, key: str, sha256: str) -> str | None:
        digest = hashlib.sha256()
        try:
            with self.blobs.open(key) as stream:
                for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
                    digest.update(chunk)
        except FileNotFoundError:
            return "missing"
        return None if digest.hexdigest() == sha256 else "corrupt"
