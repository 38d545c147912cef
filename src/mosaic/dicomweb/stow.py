"""STOW-RS (PS3.18 10.5): multipart bodies streamed to spool files, each part through the ingest service.

A part that cannot be stored for want of resources (a full disk, the index unreachable:
:func:`mosaic.services.ingest.out_of_resources`, the classification C-STORE answers 0xA700 by) fails with Failure
Reason 0xA700 and its reason as Error Comment, while the other parts are stored; when nothing was stored for that
reason the answer is 503 with Retry-After (the Failed SOP Sequence still says why, per part). Whatever happens, no
spool file of the request stays behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from mosaic.core.dicom import parse_instance
from mosaic.core.errors import InvalidObject
from mosaic.core.status import StorageStatus
from mosaic.dicomweb.multipart import Part
from mosaic.governance.policy import Principal
from mosaic.services.capture import CAPTURE_TYPES, CaptureError, capture, context_from_metadata, normalise
from mosaic.services.ingest import OUT_OF_RESOURCES, RETRY_AFTER_SECONDS, IngestService, out_of_resources
from mosaic.services.origin import Door, IngestOrigin, StoreBatch
from mosaic.storage.spool import Spool

log = logging.getLogger("mosaic.dicomweb.stow")

PROCESSING_FAILURE = StorageStatus.PROCESSING_FAILURE
CANNOT_UNDERSTAND = StorageStatus.ERROR_CANNOT_UNDERSTAND
STUDY_MISMATCH = StorageStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS
"""PS3.18 10.5.3: a part of another study than the request URL names."""
NOT_AUTHORISED = StorageStatus.NOT_AUTHORIZED


@dataclass
class StowOutcome:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    """Why parts failed for want of resources (0xA700): worth sending again later."""
    audited: StoreBatch = field(default_factory=StoreBatch)
    """The stores ingest audited for the request's one audit record (which the route completes)."""

    @property
    def status_code(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        return 503 if self.unavailable else 409

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status_code == 503 else {}

    def out_of_resources(self, sop_class_uid: str, sop_instance_uid: str, reason: str) -> None:
        self.unavailable.append(reason)
        self.failed.append(_failure(sop_class_uid, sop_instance_uid, OUT_OF_RESOURCES, reason))

    def body(self, study_url: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if study_url:
            result["00081190"] = {"vr": "UR", "Value": [study_url]}
        if self.failed:
            result["00081198"] = {"vr": "SQ", "Value": self.failed}
        if self.stored:
            result["00081199"] = {"vr": "SQ", "Value": self.stored}
        return result


def _reference(sop_class_uid: str, sop_instance_uid: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [sop_class_uid]}
    if sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance_uid]}
    return item


def _failure(sop_class_uid: str, sop_instance_uid: str, reason: int, comment: str) -> dict[str, Any]:
    """A Failed SOP Sequence item: the references when known, Failure Reason, and what was wrong as Error Comment
    (0000,0902), the text C-STORE gives in its response (dcm4chee-arc puts it in the STOW-RS response too)."""
    return {**_reference(sop_class_uid, sop_instance_uid), "00081197": {"vr": "US", "Value": [reason]},
            "00000902": {"vr": "LO", "Value": [comment]}}


class StowService:
    """Stores the parts of one STOW-RS request."""

    def __init__(self, ingest: IngestService, spool: Spool) -> None:
        self.ingest = ingest
        self.spool = spool

    def store_parts(self, parts: list[Part], *, study_uid: str | None, base_url: str, source: str,
                    json_request: bool, principal: Principal | None = None) -> StowOutcome:
        """Store every part as ``principal`` (from the client address ``source``), whose rights ingest checks
        (parts of an existing study it may not see are refused). Every spool file is gone when this returns
        (adopted as a blob, or discarded), even when it raises."""
        outcome = StowOutcome()
        origin = IngestOrigin(door=Door.DICOMWEB, principal=principal, address=source, batch=outcome.audited)
        dicom_files: list[tuple[Path, str | None]] = []
        try:
            if json_request:
                self._files_from_json(parts, outcome, dicom_files)
            else:
                for part in parts:
                    media_type = part.content_type.split(";")[0].strip().lower()
                    if media_type not in ("application/dicom", ""):
                        outcome.failed.append(_failure("", "", CANNOT_UNDERSTAND, f"a part of type {media_type!r} "
                                                       "in a request of application/dicom parts"))
                        log.warning("STOW-RS from %s: part of type %r is not application/dicom", source, media_type)
                    elif part.failure is not None or part.path is None:
                        reason = out_of_resources(part.failure or OSError("no spool file"))
                        log.error("STOW-RS from %s: a part could not be written: %s", source, reason)
                        outcome.out_of_resources("", "", reason or "")
                    else:
                        dicom_files.append((part.path, part.digest.hexdigest()))
            for path, sha256 in dicom_files:
                self._store(path, sha256, study_uid, base_url, origin, outcome)
        finally:
            for path in [part.path for part in parts if part.path is not None] + [path for path, _ in dicom_files]:
                self.spool.discard(path)  # a no-op for a file ingest adopted as its blob
        return outcome

    def _store(self, path: Path, sha256: str | None, study_uid: str | None, base_url: str, origin: IngestOrigin,
               outcome: StowOutcome) -> None:
        source = origin.address
        sop_class, sop_instance = "", ""
        try:
            parsed = parse_instance(path)
            sop_class, sop_instance = parsed.sop_class_uid, parsed.sop_instance_uid
            if study_uid and parsed.study_instance_uid != study_uid:
                raise InvalidObject(f"its Study Instance UID {parsed.study_instance_uid} is not the {study_uid} "
                                    "of the request URL", sop_instance_uid=sop_instance, status=STUDY_MISMATCH)
            result = self.ingest.store(path, origin, sha256=sha256, parsed=parsed)
        except InvalidObject as exc:
            log.warning("STOW-RS from %s: %s", source, exc)
            reported = (STUDY_MISMATCH, StorageStatus.DUPLICATE_SOP_INSTANCE, NOT_AUTHORISED)
            reason = exc.status if exc.status in reported else CANNOT_UNDERSTAND
            if exc.sop_instance_uid and not sop_class:  # parsed far enough to name it: name its class too
                sop_class = _sop_class_of(path)
            outcome.failed.append(_failure(sop_class, sop_instance or exc.sop_instance_uid or "", reason, str(exc)))
            return
        except Exception as exc:  # one part's failure is that part's answer, never the whole request's 500
            lacking = out_of_resources(exc)
            if lacking is None:
                log.exception("STOW-RS from %s: storing %s failed", source, sop_instance or "a part")
                outcome.failed.append(_failure(sop_class, sop_instance, PROCESSING_FAILURE,
                                               f"{type(exc).__name__}: {exc}"))
            else:
                log.error("STOW-RS from %s: %s not stored, out of resources: %s", source, sop_instance or "a part",
                          lacking)
                outcome.out_of_resources(sop_class, sop_instance, lacking)
            return
        finally:
            self.spool.discard(path)  # a no-op when ingest adopted the file as its blob
        item = _reference(result.sop_class_uid, result.sop_instance_uid)
        item["00081190"] = {"vr": "UR", "Value": [
            f"{base_url}/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
            f"/instances/{result.sop_instance_uid}"]}
        outcome.stored.append(item)

    def _files_from_json(self, parts: list[Part], outcome: StowOutcome,
                         files: list[tuple[Path, str | None]]) -> None:
        """``application/dicom+json`` metadata parts, with bulk data in the other parts (by Content-Location),
        written as Part 10 files appended to ``files``."""
        by_location = {part.headers.get("content-location", ""): part for part in parts}
        for part in parts:
            if not part.content_type.lower().startswith("application/dicom+json"):
                continue
            if part.failure is not None or part.path is None:
                outcome.out_of_resources("", "", out_of_resources(part.failure or OSError("no spool file")) or "")
                continue
            try:
                documents = json.loads(part.path.read_bytes())
            except (ValueError, UnicodeDecodeError) as exc:
                outcome.failed.append(_failure("", "", CANNOT_UNDERSTAND, f"a part is not JSON: {exc}"))
                continue
            for document in documents if isinstance(documents, list) else [documents]:
                path, problem, reason = self._part10_from_json(document, by_location)
                if path is not None:
                    files.append((path, None))
                    continue
                sop_class, sop_instance = _uids_in_json(document)
                if reason == OUT_OF_RESOURCES:
                    outcome.out_of_resources(sop_class, sop_instance, problem)
                else:
                    outcome.failed.append(_failure(sop_class, sop_instance, reason, problem))

    def _captured(self, document: dict[str, Any], tag: str, part: Part) -> tuple[Path | None, str, int]:
        """A photo, video or PDF with its DICOM JSON metadata, made a standard object by the capture converter
        (the bulk data encapsulated as it came, the metadata's patient, study, series and instance kept)."""
        if part.failure is not None or part.path is None:
            if (reason := out_of_resources(part.failure or OSError("no spool file"))) is not None:
                return None, reason, OUT_OF_RESOURCES
            return None, "its bulk data part could not be read", CANNOT_UNDERSTAND
        try:
            given = {key: value for key, value in document.items() if key not in _CONTENT_ELEMENTS}
            metadata = Dataset.from_json(given, bulk_data_uri_handler=lambda *_args: b"")
            context = context_from_metadata(metadata)
        except Exception as exc:
            return None, f"the DICOM JSON data set cannot be read ({type(exc).__name__}: {exc})", CANNOT_UNDERSTAND
        workdir = Path(tempfile.mkdtemp(prefix="stow-capture-", dir=part.path.parent))
        try:
            captured = capture(part.path, context, filename=part.headers.get("content-location", "") or "bulk data",
                               claimed_type=part.content_type.split(";", 1)[0].strip(), workdir=workdir)
            path = self.spool.new()
            os.replace(captured.path, path)
        except CaptureError as exc:
            return None, str(exc), CANNOT_UNDERSTAND
        except OSError as exc:
            return None, out_of_resources(exc) or f"{type(exc).__name__}: {exc}", OUT_OF_RESOURCES
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return path, "", 0

    def _part10_from_json(self, document: Any, by_location: dict[str, Part]) -> tuple[Path | None, str, int]:
        """A Part 10 spool file of one DICOM JSON data set, or None, why not and the Failure Reason."""
        content = _content_part(document, by_location)
        if content is not None:
            return self._captured(document, *content)
        def bulk(tag: str, vr: str, uri: str) -> bytes:
            part = by_location.get(uri) or by_location.get(uri.rsplit("/", 1)[-1])
            if part is None:
                raise KeyError(f"no part with Content-Location {uri}")
            if part.failure is not None or part.path is None:
                raise part.failure or OSError("no spool file")
            return part.path.read_bytes()

        try:
            dataset = Dataset.from_json(document, bulk_data_uri_handler=bulk)
            dataset.file_meta = FileMetaDataset()
            dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        except Exception as exc:  # a malformed JSON data set: reported as a failed part
            if (reason := out_of_resources(exc)) is not None:  # its bulk data part could not be spooled
                return None, reason, OUT_OF_RESOURCES
            log.warning("STOW-RS: a DICOM JSON data set could not be converted: %s", exc)
            return None, f"the DICOM JSON data set cannot be read ({type(exc).__name__}: {exc})", CANNOT_UNDERSTAND
        try:
            path = self.spool.new()  # like every part: written once, where ingest adopts it (or discards it)
        except OSError as exc:
            return None, out_of_resources(exc) or "", OUT_OF_RESOURCES
        try:
            dataset.save_as(path, enforce_file_format=True)
        except Exception as exc:
            self.spool.discard(path)
            if (reason := out_of_resources(exc)) is not None:
                log.error("STOW-RS: a DICOM JSON data set could not be written as Part 10: %s", reason)
                return None, reason, OUT_OF_RESOURCES
            log.warning("STOW-RS: a DICOM JSON data set could not be written as Part 10: %s", exc)
            return (None, f"the DICOM JSON data set cannot be written as Part 10 ({type(exc).__name__}: {exc})",
                    CANNOT_UNDERSTAND)
        return path, "", 0


_CONTENT_ELEMENTS = ("7FE00010", "00420011")
"""Pixel Data and Encapsulated Document: the elements whose bulk data may be a photo, a video or a PDF."""


def _content_part(document: Any, by_location: dict[str, Part]) -> tuple[str, Part] | None:
    """(tag, part) when the data set's Pixel Data or Encapsulated Document is a bulk data part of a capture media
    type (``image/jpeg``, ``video/mp4``, ``application/pdf``, …: PS3.18 10.5.1.2 allows them), else None."""
    if not isinstance(document, dict):
        return None
    for tag in _CONTENT_ELEMENTS:
        element = document.get(tag)
        uri = element.get("BulkDataURI") if isinstance(element, dict) else None
        if not isinstance(uri, str):
            continue
        part = by_location.get(uri) or by_location.get(uri.rsplit("/", 1)[-1])
        media_type = normalise(part.content_type.split(";", 1)[0].strip().lower()) if part is not None else None
        if part is not None and media_type in CAPTURE_TYPES:
            return tag, part
    return None


def _uids_in_json(document: Any) -> tuple[str, str]:
    """SOP Class and Instance UIDs of a DICOM JSON data set, as far as they can be read."""
    def value(tag: str) -> str:
        element = document.get(tag) if isinstance(document, dict) else None
        values = element.get("Value") if isinstance(element, dict) else None
        return str(values[0]) if isinstance(values, list) and values else ""

    return value("00080016"), value("00080018")


def _sop_class_of(path: Path) -> str:
    """The SOP Class UID of a refused object whose header could be read (best effort, for the failure report)."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SOPClassUID"])
        return str(dataset.get("SOPClassUID", "") or "")
    except Exception:  # the object was refused for its structure already; the report goes without the class
        return ""
