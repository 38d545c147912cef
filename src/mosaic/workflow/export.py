"""De-identified export: chosen studies → PS3.15 Annex E copies → a folder, a zip, a DICOM peer or a
DICOMweb (STOW-RS) destination, with the manifest kept inside Mosaic.

The caller's policy decides which studies it may export (the EXPORT permission and its scope); each
project has its own secret, created on first use and kept in the index, so a patient gets the same
pseudonym in every export of the project. Every exported study is audited. Originals are only read.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.deid import DeidentificationOptions, ExportReport, export_deidentified
from mosaic.governance.policy import AccessDenied, Permission, Principal
from mosaic.index.schema import DeidManifestEntry, DeidProject, Patient, Study

if TYPE_CHECKING:
    from mosaic.app import Mosaic

log = logging.getLogger("mosaic.export")


class ExportError(Exception):
    """The export cannot be done as asked (unknown destination, no studies, …); nothing was written."""


@dataclass(frozen=True)
class Destination:
    """Where de-identified copies go: ``folder`` or ``zip`` (a path), ``peer`` (an AE title of dicom.peers),
    ``dicomweb`` (a name of export.dicomweb_destinations)."""

    kind: str
    target: str


@dataclass
class ExportJob:
    """One export's progress and outcome (what the CLI's bar and ``GET /api/exports/{id}`` show)."""

    id: str
    project: str
    requested_by: str
    studies: list[str]
    destination: Destination
    state: str = "queued"
    """queued, running, done, failed."""
    total: int = 0
    done: int = 0
    exported: int = 0
    excluded: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "project": self.project, "state": self.state, "studies": len(self.studies),
                "destination": {"kind": self.destination.kind, "target": self.destination.target},
                "total": self.total, "done": self.done, "exported": self.exported,
                "excluded": [{"SOPInstanceUID": uid, "reason": reason} for uid, reason in self.excluded],
                "failed": [{"source": source, "reason": reason} for source, reason in self.failed],
                "error": self.error or None}


class ExportService:
    def __init__(self, mosaic: Mosaic) -> None:
        self.mosaic = mosaic
        self.jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    # --- projects ---------------------------------------------------------------------------

    def project_secret(self, project: str, created_by: str) -> bytes:
        """The project's secret, created (32 random bytes) the first time the project is used."""
        if not project.strip() or len(project) > 64:
            raise ExportError(f"project name {project!r} must be 1-64 characters")
        database = self.mosaic.database
        with database.session() as session:
            existing = session.get(DeidProject, project)
            if existing is not None:
                return bytes.fromhex(existing.secret_hex)
        with database.session(write=True) as session:
            existing = session.get(DeidProject, project)
            if existing is None:
                existing = DeidProject(name=project, secret_hex=secrets.token_hex(32), created_by=created_by,
                                       created_at=datetime.now(UTC))
                session.add(existing)
            return bytes.fromhex(existing.secret_hex)

    def manifest(self, export_id: str) -> list[dict[str, str]]:
        with self.mosaic.database.session() as session:
            rows = session.scalars(select(DeidManifestEntry).where(DeidManifestEntry.export_id == export_id)
                                   .order_by(DeidManifestEntry.pk)).all()
        return [{"kind": row.kind, "original": row.original, "pseudonym": row.pseudonym} for row in rows]

    # --- exporting --------------------------------------------------------------------------

    def prepare(self, principal: Principal, studies: list[str], destination: Destination, project: str) -> ExportJob:
        """Check everything before anything is written: permission, scope, destination."""
        self.mosaic.policy.require(principal, Permission.EXPORT)
        if not studies:
            raise ExportError("no study to export")
        if destination.kind not in ("folder", "zip", "peer", "dicomweb"):
            raise ExportError(f"destination kind {destination.kind!r} is not folder, zip, peer or dicomweb")
        if destination.kind == "peer" and self._peer(destination.target) is None:
            raise ExportError(f"{destination.target!r} is not a configured DICOM peer (dicom.peers)")
        dicomweb = self.mosaic.settings.export.dicomweb_destinations
        if destination.kind == "dicomweb" and destination.target not in dicomweb:
            raise ExportError(f"{destination.target!r} is not a configured DICOMweb destination "
                              "(export.dicomweb_destinations)")
        for study in studies:
            access = self.mosaic.policy.study_access(principal, study)
            if not access.allowed or not self.mosaic.retrieve.instances_in(study):
                raise ExportError(f"study {study} is not in the archive")
        job = ExportJob(str(uuid.uuid4()), project, principal.name, list(dict.fromkeys(studies)), destination)
        with self._lock:
            self.jobs[job.id] = job
        return job

    def run(self, job: ExportJob, principal: Principal, options: dict[str, bool] | None = None,
            progress: Callable[[ExportJob], None] | None = None) -> ExportJob:
        """Export every instance of the job's studies; the job's counters move as it goes."""
        job.state = "running"
        try:
            secret = self.project_secret(job.project, principal.name)
            deid_options = DeidentificationOptions(project_secret=secret, **(options or {}))
            instances = [instance for study in job.studies for instance in self.mosaic.retrieve.instances_in(study)]
            job.total = len(instances)
            with ExitStack() as stack:
                paths = [stack.enter_context(self.mosaic.retrieve.local_file(instance)) for instance in instances]

                def advance(count: int) -> None:
                    job.done = count
                    if progress is not None:
                        progress(job)

                report = self._write(job, paths, deid_options, advance)
            job.exported = report.exported_count
            job.excluded = report.excluded
            job.failed += [(str(path), reason) for path, reason in report.failed]
            self._keep_manifest(job, report)
            job.state = "done"
        except (AccessDenied, ExportError, OSError, ValueError) as exc:
            job.state, job.error = "failed", str(exc)
            log.warning("export %s failed: %s", job.id, exc)
        except Exception as exc:
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("export %s failed", job.id)
        self._audit(job, principal)
        if progress is not None:
            progress(job)
        return job

    def start(self, job: ExportJob, principal: Principal, options: dict[str, bool] | None = None) -> None:
        threading.Thread(target=self.run, args=(job, principal, options), name=f"export-{job.id[:8]}",
                         daemon=True).start()

    def _write(self, job: ExportJob, paths: list[Path], options: DeidentificationOptions,
               advance: Callable[[int], None]) -> ExportReport:
        kind, target = job.destination.kind, job.destination.target
        if kind in ("folder", "zip"):
            return export_deidentified(paths, Path(target), options=options, as_zip=kind == "zip", progress=advance)
        staging = Path(tempfile.mkdtemp(prefix="mosaic-export-"))
        try:
            report = export_deidentified(paths, staging / "out", options=options, progress=advance)
            files = [staging / "out" / item.name for item in report.exported]
            if kind == "peer":
                self._send_to_peer(target, files, report)
            else:
                self._send_stow(self.mosaic.settings.export.dicomweb_destinations[target], files, report)
            return report
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _peer(self, ae_title: str) -> Any:
        return next((peer for peer in self.mosaic.settings.dicom.peers if peer.ae_title == ae_title), None)

    def _send_to_peer(self, ae_title: str, files: list[Path], report: ExportReport) -> None:
        from mosaic.dimse.scu import store_files

        peer = self._peer(ae_title)
        for path, problem in store_files(self.mosaic.settings.dicom.ae_title, peer.ae_title, peer.host, peer.port,
                                         files):
            if problem is not None:
                _drop(report, path, problem)

    @staticmethod
    def _send_stow(url: str, files: list[Path], report: ExportReport) -> None:
        boundary = "mosaic-" + uuid.uuid4().hex
        body = bytearray()
        for path in files:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            url.rstrip("/") + "/studies", data=bytes(body), method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # a configured URL
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code != 202:  # 202: some stored; the others are named in the body (not parsed here)
                for path in files:
                    _drop(report, path, f"STOW-RS to {url} answered {exc.code}")
        except OSError as exc:
            for path in files:
                _drop(report, path, f"STOW-RS to {url} failed: {exc}")

    def _keep_manifest(self, job: ExportJob, report: ExportReport) -> None:
        now = datetime.now(UTC)
        with self.mosaic.database.session(write=True) as session:
            for key, pseudonym in report.manifest.patients.items():
                original = key.patient_id or f"(no PatientID) study {key.study_instance_uid}"
                if key.issuer_of_patient_id:
                    original += f"^^^{key.issuer_of_patient_id}"
                session.add(DeidManifestEntry(project=job.project, export_id=job.id, kind="patient",
                                              original=original[:200], pseudonym=pseudonym[:200], created_at=now))
            for original, new in report.manifest.studies.items():
                session.add(DeidManifestEntry(project=job.project, export_id=job.id, kind="study", original=original,
                                              pseudonym=new, created_at=now))

    def _audit(self, job: ExportJob, principal: Principal) -> None:
        with self.mosaic.database.session() as session:
            patients = dict(session.execute(select(Study.StudyInstanceUID, Patient.PatientID)
                                            .join(Patient, Study.patient_pk == Patient.pk)
                                            .where(Study.StudyInstanceUID.in_(job.studies))).all())
        for study in job.studies:
            self.mosaic.audit.record(AuditEntry.of(
                principal, AuditAction.EXPORT, "success" if job.state == "done" else "failure",
                PatientID=patients.get(study, ""), StudyInstanceUID=study,
                detail={"export": job.id, "project": job.project, "de-identified": True,
                        "destination": f"{job.destination.kind}:{job.destination.target}",
                        "exported": job.exported, "excluded": len(job.excluded), "failed": len(job.failed),
                        **({"error": job.error} if job.error else {})}))


def _drop(report: ExportReport, path: Path, problem: str) -> None:
    """An instance written to staging but not delivered: it counts as failed, not exported."""
    for item in list(report.exported):
        if path.as_posix().endswith(item.name):
            report.exported.remove(item)
            report.failed.append((item.source, problem))
