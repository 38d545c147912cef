"""De-identified export: chosen studies → PS3.15 Annex E copies → a folder, a zip, a DICOM peer or a
DICOMweb (STOW-RS) destination, with the manifest kept inside Mosaic.

The caller's policy decides which studies it may export (the EXPORT permission and its scope); each
project has its own secret, created on first use and kept in the index, so a patient gets the same
pseudonym in every export of the project. Every exported study is audited. Originals are only read.

An export is a durable job (``mosaic.jobs``): its request, progress and outcome are a row any node shows;
one a stopped node left unfinished runs again from the start (the project's secret makes the second run
write the same pseudonyms and UIDs); a folder or zip appears under its name only once complete.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from mosaic.dicomweb.multipart import OutgoingPart, new_boundary, write_parts
from mosaic.export.writers import ExportReport, export_deidentified
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.deid import DeidentificationOptions
from mosaic.governance.policy import AccessDenied, AccessPolicy, Permission, Principal
from mosaic.index.schema import DeidManifestEntry, DeidProject, Study
from mosaic.jobs.runner import JobCancelled, JobContext, JobFailed, JobInterrupted
from mosaic.jobs.store import JobView
from mosaic.services.egress import EgressContext

if TYPE_CHECKING:
    from mosaic.config import DicomSettings, ExportSettings
    from mosaic.governance.audit import AuditTrail
    from mosaic.index.database import Database
    from mosaic.jobs.runner import JobRunner
    from mosaic.jobs.store import JobStore
    from mosaic.services.retrieve import RetrieveService, StoredInstance

log = logging.getLogger("mosaic.export")


class ExportError(Exception):
    """The export cannot be done as asked (unknown destination, no studies, …); nothing was written."""


@dataclass(frozen=True)
class Destination:
    """Where de-identified copies go: ``folder`` or ``zip`` (a path), ``peer`` (an AE title of dicom.peers),
    ``dicomweb`` (a name of export.dicomweb_destinations)."""

    kind: str
    target: str


KIND = "export"
OPTIONS = ("retain_longitudinal_modified_dates", "retain_longitudinal_full_dates", "retain_patient_characteristics",
           "retain_device_identity", "retain_institution_identity", "clean_descriptors", "retain_uids",
           "include_burned_in")
"""The PS3.15 E.3 options an export may ask for (:class:`~mosaic.governance.deid.DeidentificationOptions`)."""
LISTED = 1000
"""Excluded and failed instances named in a job's result (the counts are always complete)."""


def summary(job: JobView) -> dict[str, Any]:
    """An export job as ``GET /api/exports/{id}`` shows it: what was asked, how far it got, what came out."""
    params, result = job.params, job.result
    destination = params.get("destination", {})
    return {"id": job.id, "project": params.get("project", ""), "state": job.state.value,
            "studies": len(params.get("studies", [])),
            "destination": {"kind": destination.get("kind", ""), "target": destination.get("target", "")},
            "phase": job.phase, "total": job.total, "done": job.done, "attempts": job.attempts,
            "exported": int(result.get("exported", 0)), "excluded": result.get("excluded", []),
            "excluded_count": int(result.get("excluded_count", 0)), "failed": result.get("failed", []),
            "failed_count": int(result.get("failed_count", 0)), "error": job.error or None,
            "created_at": job.as_json()["created_at"], "finished_at": job.as_json()["finished_at"]}


def _principal_params(principal: Principal) -> dict[str, Any]:
    """The requester as the job keeps it: who, with which roles and scope (a resumed run gets the permissions
    those roles have then)."""
    return {"name": principal.name, "kind": principal.kind, "roles": sorted(principal.roles),
            "facilities": sorted(principal.facilities), "departments": sorted(principal.departments),
            "address": principal.address, "interface": principal.interface}


def _principal_of(params: dict[str, Any], policy: AccessPolicy) -> Principal:
    roles = frozenset(params["roles"])
    return Principal(name=params["name"], kind=params["kind"], roles=roles, permissions=policy.permissions_of(roles),
                     facilities=frozenset(params["facilities"]), departments=frozenset(params["departments"]),
                     address=params.get("address", ""), interface=params.get("interface", ""))


class ExportService:
    """Checks and queues exports, and runs them as ``export`` jobs (registered with ``runner``)."""

    def __init__(self, database: Database, policy: AccessPolicy, retrieve: RetrieveService, audit: AuditTrail,
                 jobs: JobStore, runner: JobRunner, *, export: ExportSettings, dicom: DicomSettings) -> None:
        self.database = database
        self.policy = policy
        self.retrieve = retrieve
        self.audit = audit
        self.jobs = jobs
        self.runner = runner
        self.export = export
        """``export.dicomweb_destinations``: where a ``dicomweb`` destination sends."""
        self.dicom = dicom
        """Mosaic's AE title, ``dicom.peers`` and ``dicom.tls``: a ``peer`` destination."""
        runner.register(KIND, self.run_job)

    # --- projects ---------------------------------------------------------------------------

    def project_secret(self, project: str, created_by: str) -> bytes:
        """The project's secret, created (32 random bytes) the first time the project is used."""
        if not project.strip() or len(project) > 64:
            raise ExportError(f"project name {project!r} must be 1-64 characters")
        database = self.database
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
        with self.database.session() as session:
            rows = session.scalars(select(DeidManifestEntry).where(DeidManifestEntry.export_id == export_id)
                                   .order_by(DeidManifestEntry.pk)).all()
        return [{"kind": row.kind, "original": row.original, "pseudonym": row.pseudonym} for row in rows]

    # --- requesting -------------------------------------------------------------------------

    def prepare(self, principal: Principal, studies: list[str], destination: Destination, project: str,
                options: dict[str, bool] | None = None, *, here: bool = False) -> JobView:
        """Check everything before anything is written (permission, scope, destination, options), then queue
        the export as a job (``here``: for :meth:`run` in this process). Raises :class:`ExportError` or
        :class:`AccessDenied`."""
        self.policy.require(principal, Permission.EXPORT)
        if not studies:
            raise ExportError("no study to export")
        unknown = sorted(set(options or {}) - set(OPTIONS))
        if unknown:
            raise ExportError(f"unknown de-identification option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        options = dict(options or {})
        if options.get("retain_longitudinal_full_dates"):
            if options.get("retain_longitudinal_modified_dates"):
                raise ExportError("retain_longitudinal_full_dates keeps the dates, retain_longitudinal_modified_dates "
                                  "shifts them: ask for one of the two")
            options["retain_longitudinal_modified_dates"] = False  # the shift is the default otherwise
        if destination.kind not in ("folder", "zip", "peer", "dicomweb"):
            raise ExportError(f"destination kind {destination.kind!r} is not folder, zip, peer or dicomweb")
        if destination.kind in ("folder", "zip"):
            target = Path(destination.target)
            if target.exists() and not (target.is_dir() and not any(target.iterdir())):
                raise ExportError(f"{target} already exists: an export writes a new {destination.kind}")
        if destination.kind == "peer" and self._peer(destination.target) is None:
            raise ExportError(f"{destination.target!r} is not a configured DICOM peer (dicom.peers)")
        dicomweb = self.export.dicomweb_destinations
        if destination.kind == "dicomweb" and destination.target not in dicomweb:
            raise ExportError(f"{destination.target!r} is not a configured DICOMweb destination "
                              "(export.dicomweb_destinations)")
        with self.database.session() as session:
            stored = set(session.scalars(select(Study.StudyInstanceUID).where(Study.StudyInstanceUID.in_(studies))))
        for study in studies:
            if study not in stored or not self.policy.study_access(principal, study).allowed:
                raise ExportError(f"study {study} is not in the archive")
        self.project_secret(project, principal.name)  # checks the name; the secret exists before the job runs
        params = {"studies": list(dict.fromkeys(studies)), "project": project,
                  "destination": {"kind": destination.kind, "target": destination.target},
                  "options": {key: bool(value) for key, value in (options or {}).items()},
                  "principal": _principal_params(principal)}
        return self.jobs.submit(KIND, principal.name, params, here=here)

    def start(self) -> None:
        """Let this node's job workers take a queued export now (any node's would within ``jobs.poll_seconds``)."""
        self.runner.wake()

    def run(self, job: JobView, progress: Callable[[str, int, int], None] | None = None) -> JobView:
        """Run an export prepared ``here``, here and now (the CLI); the job as it ended."""
        return self.runner.run_now(job, progress)

    # --- running (the job handler) ----------------------------------------------------------

    def run_job(self, context: JobContext) -> dict[str, Any]:
        """Export every instance of the job's studies; safe to run again after an interruption."""
        params = context.params
        principal = _principal_of(params["principal"], self.policy)
        destination = Destination(params["destination"]["kind"], params["destination"]["target"])
        project, studies = str(params["project"]), list(params["studies"])
        report: ExportReport | None = None
        missing: list[tuple[str, str]] = []
        patients: dict[str, tuple[str, str]] = {}
        outcome, error = "failure", ""
        try:
            self.policy.require(principal, Permission.EXPORT)
            secret = self.project_secret(project, principal.name)
            options = DeidentificationOptions(project_secret=secret, **params.get("options", {}))
            instances = []
            for study in studies:
                access = self.policy.study_access(principal, study)
                patients[study] = (access.PatientID, access.IssuerOfPatientID)
                found = self.retrieve.instances_in(study, scope=self.policy.scope(principal)) if access.allowed \
                    else []
                if not found:
                    missing.append((f"study {study}", "no longer in the archive (or in the requester's scope)"))
                instances += found
            context.progress("de-identifying", 0, len(instances))
            outgoing = EgressContext("export", f"{destination.kind}:{destination.target}", principal.name)
            report = self._write(context, destination, self._local_files(instances, outgoing), len(instances),
                                 options)
            report.failed += [(Path(source), reason) for source, reason in missing]
            self._keep_manifest(context.job.id, project, report)
            outcome = "success"
        except (JobCancelled, JobInterrupted) as exc:
            error = str(exc)
            raise
        except (AccessDenied, ExportError, OSError, ValueError) as exc:
            error = str(exc)
            raise JobFailed(error, self._result(report, missing)) from exc
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise JobFailed(error, self._result(report, missing)) from exc
        finally:
            self._audit(context.job.id, project, destination, patients, principal, outcome, report, error)
        return self._result(report, missing)

    @staticmethod
    def _result(report: ExportReport | None, missing: list[tuple[str, str]]) -> dict[str, Any]:
        excluded = report.excluded if report else []
        failed = [(str(source), reason) for source, reason in report.failed] if report else list(missing)
        return {"exported": report.exported_count if report else 0,
                "excluded": [{"SOPInstanceUID": uid, "reason": reason} for uid, reason in excluded[:LISTED]],
                "excluded_count": len(excluded),
                "failed": [{"source": source, "reason": reason} for source, reason in failed[:LISTED]],
                "failed_count": len(failed)}

    def _local_files(self, instances: list[StoredInstance], outgoing: EgressContext) -> Iterator[Path]:
        """Each stored instance as egress gives it, one at a time (from S3: one temporary copy at a time)."""
        for instance in instances:
            with self.retrieve.egress(instance, outgoing) as path:
                yield path

    def _write(self, context: JobContext, destination: Destination, paths: Iterator[Path], total: int,
               options: DeidentificationOptions) -> ExportReport:
        def advance(count: int) -> None:
            context.progress("de-identifying", count, total)

        kind, target = destination.kind, destination.target
        if kind in ("folder", "zip"):
            return self._write_local(Path(target), context.job.id, kind == "zip", paths, options, advance)
        staging = Path(tempfile.mkdtemp(prefix="mosaic-export-"))
        try:
            report = export_deidentified(paths, staging / "out", options=options, progress=advance)
            files = [staging / "out" / item.name for item in report.exported]
            context.progress("sending", 0, len(files))
            if kind == "peer":
                self._send_to_peer(target, files, report,
                                   lambda count: context.progress("sending", count, len(files)))
            else:
                self._send_stow(self.export.dicomweb_destinations[target], files, report)
                context.progress("sending", len(files), len(files))
            return report
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _write_local(target: Path, export_id: str, as_zip: bool, paths: Iterator[Path],
                     options: DeidentificationOptions, advance: Callable[[int], None]) -> ExportReport:
        """Written under a hidden partial name of its own (two exports to one name never share it) and renamed
        when complete: a failed, cancelled or interrupted export leaves nothing under the target's name (and a
        resumed one starts over)."""
        partial = target.parent / f".{target.name}.{export_id}.partial"
        _remove(partial)
        try:
            report = export_deidentified(paths, partial, options=options, as_zip=as_zip, progress=advance)
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()  # an empty folder named on the command line
            if target.exists():
                raise ExportError(f"{target} was written by another export while this one ran; export again "
                                  "under another name")
            os.replace(partial, target)
        except BaseException:
            _remove(partial)
            raise
        report.destination = target
        return report

    def _peer(self, ae_title: str) -> Any:
        return next((peer for peer in self.dicom.peers if peer.ae_title == ae_title), None)

    def _send_to_peer(self, ae_title: str, files: list[Path], report: ExportReport,
                      progress: Callable[[int], None]) -> None:
        from mosaic.dimse.scu import store_files
        from mosaic.dimse.tls import client_context

        peer = self._peer(ae_title)
        if peer is None:
            raise ExportError(f"{ae_title!r} is no longer a configured DICOM peer (dicom.peers)")
        tls = client_context(self.dicom.tls) if peer.tls else None
        for path, problem in store_files(self.dicom.ae_title, peer.ae_title, peer.host, peer.port,
                                         files, progress, tls):
            if problem is not None:
                _drop(report, path, problem)

    @staticmethod
    def _send_stow(url: str, files: list[Path], report: ExportReport) -> None:
        """One STOW-RS request, streamed from the files; instances the destination names as failed (in a 202 or
        an error answer) or all of them, when it answers nothing usable, count as failed."""
        boundary = new_boundary()
        body = write_parts((OutgoingPart("application/dicom", path=path) for path in files), boundary)
        request = urllib.request.Request(
            url.rstrip("/") + "/studies", data=body, method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+json"})
        by_uid = {item.sop_instance_uid: staging for item, staging in zip(report.exported, files, strict=True)}
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # a configured URL
                answer = response.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read()
            failed = _failed_sop_instances(answer)
            for uid, path in by_uid.items():
                if not failed or uid in failed:
                    _drop(report, path, f"STOW-RS to {url} answered {exc.code}" + (
                        f" ({failed[uid]})" if failed.get(uid) else ""))
            return
        except OSError as exc:
            for path in files:
                _drop(report, path, f"STOW-RS to {url} failed: {exc}")
            return
        for uid, reason in _failed_sop_instances(answer).items():  # a 202: stored, but not every instance
            if uid in by_uid:
                _drop(report, by_uid[uid], f"STOW-RS to {url} did not store it ({reason or 'no reason given'})")

    def _keep_manifest(self, export_id: str, project: str, report: ExportReport) -> None:
        """The export's manifest (a resumed run replaces what an interrupted one wrote)."""
        now = datetime.now(UTC)

        def write(session: Any) -> None:
            session.execute(delete(DeidManifestEntry).where(DeidManifestEntry.export_id == export_id))
            for key, pseudonym in report.manifest.patients.items():
                original = key.patient_id or f"(no PatientID) study {key.study_instance_uid}"
                if key.issuer_of_patient_id:
                    original += f"^^^{key.issuer_of_patient_id}"
                session.add(DeidManifestEntry(project=project, export_id=export_id, kind="patient",
                                              original=original[:200], pseudonym=pseudonym[:200], created_at=now))
            for original, new in report.manifest.studies.items():
                session.add(DeidManifestEntry(project=project, export_id=export_id, kind="study", original=original,
                                              pseudonym=new, created_at=now))

        self.database.write(write)

    def _audit(self, export_id: str, project: str, destination: Destination, patients: dict[str, tuple[str, str]],
               principal: Principal, outcome: str, report: ExportReport | None, error: str) -> None:
        """One record per study (``patients``: study → its PatientID and issuer, as the export found them)."""
        for study, (patient_id, issuer) in patients.items():
            self.audit.record(AuditEntry.of(
                principal, AuditAction.EXPORT, outcome, PatientID=patient_id, IssuerOfPatientID=issuer,
                StudyInstanceUID=study,
                detail={"export": export_id, "project": project, "de-identified": True,
                        "destination": f"{destination.kind}:{destination.target}",
                        "exported": report.exported_count if report else 0,
                        "excluded": len(report.excluded) if report else 0,
                        "failed": len(report.failed) if report else 0,
                        **({"error": error} if error else {})}))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _drop(report: ExportReport, path: Path, problem: str) -> None:
    """An instance written to staging but not delivered: it counts as failed, not exported."""
    for item in report.exported:
        if path.as_posix().endswith(item.name):
            report.exported.remove(item)
            report.failed.append((item.source, problem))
            return


def _failed_sop_instances(answer: bytes) -> dict[str, str]:
    """SOP Instance UID → failure reason of the Failed SOP Sequence (0008,1198) of a STOW-RS answer."""
    try:
        document = json.loads(answer or b"{}")
    except ValueError:
        return {}
    items = document.get("00081198", {}).get("Value", []) if isinstance(document, dict) else []
    failed: dict[str, str] = {}
    for item in items:
        uid = (item.get("00081155", {}).get("Value") or [""])[0]
        reason = (item.get("00081197", {}).get("Value") or [""])[0]
        if uid:
            failed[str(uid)] = f"failure reason {reason:#06x}" if isinstance(reason, int) else str(reason)
    return failed
