"""Content captured outside radiology (photos, video, PDFs) into a patient's record: one ingest path for the
portal's upload, STOW-RS with bulk data parts and ``mosaic import`` with a sidecar.

The patient is one of the archive's (found in the index, or created by HL7 ADT), never typed in: the new object
carries the patient's identity and current demographics. Its study (IHE Encounter-Based Imaging Workflow):

* an existing study of that patient the caller names (and may add to), or
* the study of the encounter (visit) the capture names: the first capture of an encounter gets a generated Study
  Instance UID and accession number, every later one of that encounter joins it (``encounter_study``), or
* without an encounter, a new study for the capture session (its files together).

An order that later arrives with that accession takes the study as its own (``services.worklist``: a new order
finds the stored study by accession and patient). Each file is converted (:mod:`mosaic.services.capture`) and
stored through :class:`~mosaic.services.ingest.IngestService` with the caller's origin, so the access policy and
the audit trail see it like any store; a file that cannot be converted stores nothing and is reported by name."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mosaic.core.errors import InvalidObject
from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import EncounterStudy, Instance, Series, Study
from mosaic.services.capture import CaptureContext, CaptureError, capture
from mosaic.services.ingest import IngestService
from mosaic.services.origin import IngestOrigin
from mosaic.services.patients import resolve
from mosaic.storage.spool import Spool

PHOTO_SERIES, VIDEO_SERIES, DOCUMENT_SERIES = "photo", "video", "document"


class CaptureRefused(Exception):
    """The capture as a whole cannot go ahead (no such patient, a study that is not theirs): nothing stored."""


@dataclass(frozen=True)
class CaptureRequest:
    """One capture session: whose, where it goes, and what the clinician recorded (applies to every file)."""

    PatientID: str
    IssuerOfPatientID: str = ""
    StudyInstanceUID: str = ""
    """Add to this study of the patient; empty: the encounter's study, or a new one."""
    encounter: str = ""
    encounter_issuer: str = ""
    specialty: str = ""
    facility: str = ""
    body_site_code: str = ""
    body_site_meaning: str = ""
    laterality: str = ""
    view: str = ""
    operator: str = ""
    description: str = ""
    video_kind: str = "photographic"
    captured_at: datetime | None = None
    session_key: str = ""
    """A stable name of the session (an import's folder): without a study or an encounter, its captures go into
    one study whose UID it determines, so importing the folder again stores nothing twice; empty: a new study."""


@dataclass(frozen=True)
class CaptureFile:
    path: Path
    filename: str
    claimed_type: str | None = None
    request: CaptureRequest | None = None
    """What was recorded for this file when it differs from the session's (its patient, study and encounter
    are the session's whatever it says)."""


@dataclass(frozen=True)
class CaptureResult:
    filename: str
    outcome: str
    """stored, already stored, or failed."""
    reason: str = ""
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str = ""
    SOPInstanceUID: str = ""
    kind: str = ""
    media_type: str = ""


@dataclass(frozen=True)
class _Target:
    StudyInstanceUID: str
    AccessionNumber: str
    StudyDescription: str
    StudyDate: str
    StudyTime: str


class CaptureService:
    def __init__(self, database: Database, ingest: IngestService, workdir: Path, spool: Spool | None = None) -> None:
        self.database = database
        self.ingest = ingest
        self.workdir = workdir
        self.spool = spool
        """Where a converted object is moved before ingest (the blob store's own spool: it is then linked into
        the store, not copied and hashed again)."""

    def capture(self, request: CaptureRequest, files: list[CaptureFile], origin: IngestOrigin, *,
                scope: Scope) -> list[CaptureResult]:
        """Convert and store each file; one result per file, in order. Raises :class:`CaptureRefused` when the
        patient is not in the archive or the named study is not one of theirs the caller may see."""
        if not request.PatientID.strip():
            raise CaptureRefused("a capture names its patient (Patient ID, and its issuer)")
        with self.database.session() as session:
            patient = resolve(session, request.PatientID.strip(), request.IssuerOfPatientID.strip())
            if patient is None:
                issuer = f" (issuer {request.IssuerOfPatientID})" if request.IssuerOfPatientID else ""
                raise CaptureRefused(f"patient {request.PatientID}{issuer} is not in the archive: choose the patient "
                                     "from the index (or have the EHR send them by HL7 ADT first)")
            demographics = {key: str(getattr(patient, key) or "") for key in (
                "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")}
            existing = None
            if request.StudyInstanceUID:
                existing = session.scalar(select(Study).where(Study.StudyInstanceUID == request.StudyInstanceUID,
                                                              scope.study_condition()))
                if existing is None or existing.patient_pk != patient.pk:
                    raise CaptureRefused(f"study {request.StudyInstanceUID} is not a study of this patient you may "
                                         "add to")
        now = request.captured_at or datetime.now(UTC)
        if existing is not None:
            target = _Target(existing.StudyInstanceUID, existing.AccessionNumber or "",
                             existing.StudyDescription or "", existing.StudyDate or "", existing.StudyTime or "")
        elif request.encounter.strip():
            target = self._encounter_study(demographics["PatientID"], demographics["IssuerOfPatientID"],
                                           request.encounter.strip()[:64], origin.facility[:64], now)
        else:
            uid = generate_uid(entropy_srcs=["mosaic capture session", demographics["PatientID"],
                                             demographics["IssuerOfPatientID"], request.session_key]) \
                if request.session_key else generate_uid()
            target = _Target(uid, _accession(uid), "", "", "")
        session_id = generate_uid()
        series: dict[str, str] = {}
        results = []
        self.workdir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="capture-", dir=self.workdir))
        try:
            for number, item in enumerate(files, start=1):
                results.append(self._one(item, number, request, demographics, target, series, session_id, origin,
                                         folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return results

    def _one(self, item: CaptureFile, number: int, session: CaptureRequest, demographics: dict[str, str],
             target: _Target, series: dict[str, str], session_id: str, origin: IngestOrigin,
             folder: Path) -> CaptureResult:
        request = item.request or session
        kind_hint = _kind_hint(item)
        series_uid = series.setdefault(kind_hint, generate_uid(entropy_srcs=[session_id, kind_hint]))
        context = CaptureContext(
            PatientID=demographics["PatientID"], IssuerOfPatientID=demographics["IssuerOfPatientID"],
            PatientName=demographics["PatientName"], PatientBirthDate=demographics["PatientBirthDate"],
            PatientSex=demographics["PatientSex"], StudyInstanceUID=target.StudyInstanceUID,
            SeriesInstanceUID=series_uid, AccessionNumber=target.AccessionNumber, InstanceNumber=number,
            StudyDescription=target.StudyDescription or request.description or request.specialty.capitalize(),
            StudyDate=target.StudyDate, StudyTime=target.StudyTime, encounter=request.encounter.strip()[:64],
            encounter_issuer=request.encounter_issuer.strip()[:64], specialty=request.specialty.strip()[:64],
            facility=request.facility.strip()[:64] or origin.facility, body_site_code=request.body_site_code.strip(),
            body_site_meaning=request.body_site_meaning.strip()[:64], laterality=request.laterality.strip()[:1],
            view=request.view.strip()[:64], operator=request.operator.strip()[:64],
            description=request.description.strip()[:64], captured_at=request.captured_at,
            video_kind=request.video_kind if request.video_kind in ("photographic", "endoscopic") else "photographic")
        try:
            captured = capture(item.path, context, filename=item.filename, claimed_type=item.claimed_type,
                               workdir=folder)
        except CaptureError as exc:
            return CaptureResult(item.filename, "failed", str(exc))
        labelled = replace(origin, department=origin.department or request.specialty.strip()[:64])
        if self._stored(captured.SOPInstanceUID, target.StudyInstanceUID):
            # the same file into the same study again (its UID comes from its bytes): what is stored is it
            captured.path.unlink(missing_ok=True)
            return CaptureResult(item.filename, "already stored", "", target.StudyInstanceUID, "",
                                 captured.SOPInstanceUID, captured.kind, captured.media_type)
        source = self._spooled(captured.path)
        try:
            result = self.ingest.store(source, labelled)
        except InvalidObject as exc:
            return CaptureResult(item.filename, "failed", f"{item.filename}: not stored: {exc.reason}")
        finally:
            captured.path.unlink(missing_ok=True)
            if source != captured.path and self.spool is not None:
                self.spool.discard(source)  # a no-op once ingest adopted it as its blob
        return CaptureResult(item.filename, result.outcome.value, "", result.study_instance_uid,
                             result.series_instance_uid, result.sop_instance_uid, captured.kind, captured.media_type)

    def _spooled(self, path: Path) -> Path:
        """``path`` moved into the spool (the same file system: a rename), or ``path`` itself when it cannot be."""
        if self.spool is None:
            return path
        try:
            target = self.spool.new()
        except OSError:
            return path
        try:
            os.replace(path, target)
        except OSError:
            self.spool.discard(target)
            return path
        return target

    def _stored(self, sop_instance_uid: str, study_instance_uid: str) -> bool:
        with self.database.session() as session:
            return session.scalar(
                select(Instance.pk).join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk)
                .where(Instance.SOPInstanceUID == sop_instance_uid,
                       Study.StudyInstanceUID == study_instance_uid)) is not None

    def _encounter_study(self, patient_id: str, issuer: str, encounter: str, facility: str,
                         now: datetime) -> _Target:
        """The encounter's study at ``facility`` (a visit number is a facility's): found, or created once (two
        captures racing agree on one)."""
        def find(session: Session) -> _Target | None:
            row = session.scalar(select(EncounterStudy).where(
                EncounterStudy.PatientID == patient_id, EncounterStudy.IssuerOfPatientID == issuer,
                EncounterStudy.encounter == encounter, EncounterStudy.facility == facility))
            if row is None:
                return None
            study = session.scalar(select(Study).where(Study.StudyInstanceUID == row.StudyInstanceUID))
            return _Target(row.StudyInstanceUID, row.AccessionNumber,
                           (study.StudyDescription or "") if study is not None else "",
                           (study.StudyDate or "") if study is not None else "",
                           (study.StudyTime or "") if study is not None else "")

        with self.database.session() as session:
            found = find(session)
        if found is not None:
            return found
        uid = generate_uid()

        def create(session: Session) -> _Target:
            again = find(session)
            if again is not None:
                return again
            session.add(EncounterStudy(PatientID=patient_id, IssuerOfPatientID=issuer, encounter=encounter,
                                       facility=facility, StudyInstanceUID=uid, AccessionNumber=_accession(uid),
                                       created_at=now))
            return _Target(uid, _accession(uid), "", "", "")

        try:
            return self.database.write(create)
        except IntegrityError:  # on PostgreSQL a racing capture won: its study is the encounter's
            with self.database.session() as session:
                winner = find(session)
            if winner is None:
                raise
            return winner


def _accession(study_uid: str) -> str:
    """An accession number for a study the archive opened (16 characters at most, SH): ``EB`` and 14 digits
    from the Study Instance UID's hash, so the same study always has the same one."""
    return "EB" + str(int(hashlib.sha256(study_uid.encode()).hexdigest(), 16) % 10**14).zfill(14)


def _kind_hint(item: CaptureFile) -> str:
    """Which series of the session a file goes into, from its claimed type or name (the converter decides
    what it really is)."""
    claimed = (item.claimed_type or "").lower()
    name = item.filename.lower()
    if claimed.startswith("video/") or name.endswith((".mp4", ".mov", ".m4v")):
        return VIDEO_SERIES
    if claimed == "application/pdf" or name.endswith(".pdf"):
        return DOCUMENT_SERIES
    return PHOTO_SERIES
