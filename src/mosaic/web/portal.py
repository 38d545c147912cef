"""The patient portal (``/portal``): find a patient, see their longitudinal record across specialties, open each
object with what suits it (the DICOM viewer, a lightbox, the browser's video player, an inline PDF), and add
content captured without an order. Server-rendered pages (``web/templates/portal_*.html``), usable without
script; ``static/portal.js`` adds the lightbox, drag and drop and the filters' live update.

Every read is within the caller's scope (break-glass openings included) and audited; content is served from the
stored file by byte range (``Range`` requests: a video seeks), never decoded."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import ALL, Permission
from mosaic.http.auth import check_csrf_form, require
from mosaic.services.capturing import CaptureFile, CaptureRefused, CaptureRequest
from mosaic.services.origin import Door, IngestOrigin
from mosaic.web.content_answer import ranged
from mosaic.web.pages import given_family, page

if TYPE_CHECKING:
    from mosaic.governance.policy import AccessPolicy
    from mosaic.services.capturing import CaptureService
    from mosaic.services.content import ContentService
    from mosaic.services.portal import PortalService, TimelineStudy

MAX_FILES = 100
"""Files in one upload (a wound-care session is a few photos; a folder of thousands goes through `mosaic import`)."""
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_UID = re.compile(r"^[0-9.]{1,64}$")


def create_portal_router(portal: PortalService, content: ContentService, policy: AccessPolicy,
                         captures: CaptureService | None = None, *, viewer_prefix: str = "/viewer") -> APIRouter:
    router = APIRouter(prefix="/portal")

    @router.get("")
    def search(request: Request) -> Response:
        """Patients by name (wildcards, accents ignored), ID (and issuer) or birth date."""
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        params = request.query_params
        terms = {key: params.get(key, "").strip()[:64] for key in ("name", "id", "issuer", "birth")}
        error = ""
        hits = None
        if terms["birth"] and not _DATE.match(terms["birth"]):
            error = f"{terms['birth']!r} is not a date: give it as YYYY-MM-DD"
        elif any(terms.values()):
            hits = portal.search_patients(name=terms["name"], patient_id=terms["id"], issuer=terms["issuer"],
                                          birth_date=terms["birth"], scope=policy.scope(principal))
            request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", detail={
                "path": "/portal", "terms": {key: value for key, value in terms.items() if value},
                "patients": [f"{hit.PatientID}^^^{hit.IssuerOfPatientID}" if hit.IssuerOfPatientID else hit.PatientID
                             for hit in hits][:100]})
        return page(request, principal, "portal_search.html", title="Patients", terms=terms, hits=hits,
                    error=error, status_code=400 if error else 200)

    @router.get("/patients/{patient_pk}")
    def timeline(request: Request, patient_pk: str) -> Response:
        """One patient's studies of every specialty, newest first; filters by specialty, modality, facility and
        dates; ``group=site`` groups priors by body site."""
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        number = _number(patient_pk)
        params = request.query_params
        filters = {key: params.get(key, "").strip()[:64] for key in ("specialty", "modality", "facility",
                                                                        "since", "until", "group")}
        for key in ("since", "until"):
            if filters[key] and not _DATE.match(filters[key]):
                filters[key] = ""
        found = portal.timeline(number, scope=policy.scope(principal), specialty=filters["specialty"],
                                modality=filters["modality"], facility=filters["facility"],
                                since=filters["since"], until=filters["until"])
        if found is None:
            raise HTTPException(404, f"patient {patient_pk} is not one you may see (or not in the archive)")
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", PatientID=found.patient.PatientID,
                                            IssuerOfPatientID=found.patient.IssuerOfPatientID, detail={
                                                "path": request.url.path, "what": "timeline",
                                                "studies": [study.StudyInstanceUID for study in found.studies][:100]})
        groups = _groups(found.studies, by_site=filters["group"] == "site")
        title = given_family(found.patient.PatientName) or "Patient"
        return page(request, principal, "portal_timeline.html", title=title,
                    timeline=found, filters=filters, groups=groups, viewer=viewer_prefix,
                    may_store=Permission.STORE in principal.permissions)

    @router.get("/studies/{study}")
    def study(request: Request, study: str) -> Response:
        """One study's objects: images open in the viewer, photos in the lightbox, videos play, PDFs display."""
        principal = require(request, Permission.READ, action=AuditAction.READ)
        if not _UID.match(study):
            raise HTTPException(400, "not a Study Instance UID")
        view = portal.study(study, scope=policy.scope(principal))
        if view is None:
            raise HTTPException(404, f"study {study} is not one you may see (or not in the archive)")
        request.state.audit = AuditEntry.of(principal, AuditAction.READ, "", PatientID=view.patient.PatientID,
                                            IssuerOfPatientID=view.patient.IssuerOfPatientID,
                                            StudyInstanceUID=study, detail={"path": request.url.path})
        return page(request, principal, "portal_study.html", title=view.study.StudyDescription or "Study",
                    view=view, viewer=viewer_prefix,
                    opened_in_emergency=study in principal.break_glass_studies)

    @router.get("/content/{study}/{series}/{sop}")
    def content_of(request: Request, study: str, series: str, sop: str) -> Response:
        """The object's content as it was captured (a photo's JPEG, a video's stream, a PDF), by byte range;
        ``?original=1``: the file a converted photo keeps (PNG, TIFF, HEIC as they came)."""
        principal = require(request, Permission.READ, action=AuditAction.READ)
        if not all(_UID.match(uid) for uid in (study, series, sop)):
            raise HTTPException(400, "not a DICOM UID")
        original = request.query_params.get("original") == "1"
        found = content.locate(study, series, sop, scope=policy.scope(principal), original=original)
        if found is None:
            raise HTTPException(404, f"instance {sop} has no {'original file' if original else 'content'} you "
                                     "may open (or is not in the archive)")
        request.state.audit = AuditEntry.of(principal, AuditAction.READ, "", StudyInstanceUID=study,
                                            SOPInstanceUID=sop, PatientID=found.instance.PatientID,
                                            detail={"path": request.url.path, "what": found.media_type,
                                                    **({"range": request.headers["range"][:64]}
                                                       if "range" in request.headers else {})})
        return ranged(request, content, found, download=request.query_params.get("download") == "1")

    @router.post("/patients/{patient_pk}/captures")
    async def upload(request: Request, patient_pk: str) -> Response:
        """Photos, video and PDFs a clinician captured for this patient (the page's form, drag and drop, a
        phone's camera), with what they recorded: into the encounter's study (or a new one), through ingest."""
        principal = require(request, Permission.STORE, action=AuditAction.STORE)
        number = _number(patient_pk)
        if captures is None:
            raise HTTPException(404, "this node takes no captures")
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)  # more: a 400, nothing spooled further
        check_csrf_form(request, form)
        scope = policy.scope(principal)
        found = await run_in_threadpool(portal.timeline, number, scope=scope)
        if found is None:
            raise HTTPException(404, f"patient {patient_pk} is not one you may see (or not in the archive)")
        field = {key: str(form.get(key, "") or "").strip() for key in (
            "encounter", "specialty", "body_site", "body_site_code", "laterality", "view", "description",
            "StudyInstanceUID", "video_kind")}
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile) and item.filename]
        if not uploads:
            return page(request, principal, "portal_captured.html", title="Nothing uploaded", status_code=400,
                        patient=found.patient, results=[],
                        error="choose at least one file (a photo, a video or a PDF)")
        facility = next(iter(principal.facilities)) if len(principal.facilities) == 1 and \
            ALL not in principal.facilities else ""
        capture_request = CaptureRequest(
            PatientID=found.patient.PatientID, IssuerOfPatientID=found.patient.IssuerOfPatientID,
            StudyInstanceUID=field["StudyInstanceUID"], encounter=field["encounter"], specialty=field["specialty"],
            facility=facility, body_site_code=field["body_site_code"], body_site_meaning=field["body_site"],
            laterality=field["laterality"].upper(), view=field["view"], operator=_operator(principal.name),
            description=field["description"], video_kind=field["video_kind"] or "photographic")
        origin = IngestOrigin(door=Door.PORTAL, principal=principal, address=principal.address, facility=facility,
                              department=field["specialty"][:64])
        files = [CaptureFile(await _spooled(item), _basename(item.filename or "upload"), item.content_type)
                 for item in uploads]
        try:
            results = await run_in_threadpool(captures.capture, capture_request, files, origin, scope=scope)
        except CaptureRefused as exc:
            raise HTTPException(409, str(exc)) from None
        finally:
            for item in uploads:
                await item.close()
            for spooled in files:
                spooled.path.unlink(missing_ok=True)
        stored = [result for result in results if result.outcome != "failed"]
        return page(request, principal, "portal_captured.html", title="Uploaded" if stored else "Not stored",
                    status_code=201 if stored and len(stored) == len(results) else 200 if stored else 422,
                    patient=found.patient, results=results, error="")

    return router


def _number(text: str) -> int:
    """A patient's number in a path (after the permission check: a refused caller learns nothing of the path)."""
    if not text.isdigit() or len(text) > 18:
        raise HTTPException(404, f"patient {text[:20]} is not one you may see (or not in the archive)")
    return int(text)


async def _spooled(item: UploadFile) -> Path:
    """The upload as a file the converter reads (written in chunks: a video is never held whole)."""
    with tempfile.NamedTemporaryFile(prefix="portal-upload-", delete=False) as handle:
        await item.seek(0)
        while chunk := await item.read(1 << 20):
            handle.write(chunk)
    return Path(handle.name)


def _basename(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1][:128] or "upload"


def _operator(name: str) -> str:
    """The signed-in user as an operator's name (PN): ``jane.doe`` → ``jane.doe`` (no components invented)."""
    return name.replace("^", " ")[:64]








def _groups(studies: list[TimelineStudy], *, by_site: bool) -> list[tuple[str, list[TimelineStudy]]]:
    """The timeline's sections: by year (newest first), or by body site (priors together; a study under each
    of its sites)."""
    if not by_site:
        groups: dict[str, list[TimelineStudy]] = {}
        for item in studies:
            groups.setdefault(item.StudyDate[:4] or "Undated", []).append(item)
        return list(groups.items())
    sites: dict[str, list[TimelineStudy]] = {}
    for item in studies:
        for site in item.body_sites or ["Body site not recorded"]:
            sites.setdefault(site.replace("_", " ").title() if site.isupper() else site, []).append(item)
    return sorted(sites.items(), key=lambda entry: (entry[0] == "Body site not recorded", entry[0]))
