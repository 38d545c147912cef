"""STOW-RS (PS3.18 10.5): multipart bodies streamed to spool files, each part through the ingest service."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from mosaic.core.dicom import parse_instance
from mosaic.core.errors import InvalidObject, StorageFailure
from mosaic.dicomweb.multipart import Part
from mosaic.services.ingest import IngestService, StoreGuard
from mosaic.storage.spool import Spool

log = logging.getLogger("mosaic.dicomweb.stow")

PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
STUDY_MISMATCH = 0xA900
NOT_AUTHORISED = 0x0124
WARNING_COERCION = 0xB000


@dataclass
class StowOutcome:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status_code(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

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
                    json_request: bool, may_add_to: StoreGuard | None = None) -> StowOutcome:
        """Store every part; ``may_add_to`` (the caller's access policy) refuses parts of an existing study the
        caller may not see."""
        outcome = StowOutcome()
        dicom_files: list[tuple[Path, str | None]] = []
        if json_request:
            dicom_files = self._files_from_json(parts, outcome)
        else:
            for part in parts:
                media_type = part.content_type.split(";")[0].strip().lower()
                if media_type not in ("application/dicom", ""):
                    outcome.failed.append(_failure("", "", CANNOT_UNDERSTAND, f"a part of type {media_type!r} in a "
                                                   "request of application/dicom parts"))
                    log.warning("STOW-RS from %s: part of type %r is not application/dicom", source, media_type)
                    self.spool.discard(part.path)
                    continue
                dicom_files.append((part.path, part.digest.hexdigest()))
        for path, sha256 in dicom_files:
            self._store(path, sha256, study_uid, base_url, source, outcome, may_add_to)
        return outcome

    def _store(self, path: Path, sha256: str | None, study_uid: str | None, base_url: str, source: str,
               outcome: StowOutcome, may_add_to: StoreGuard | None = None) -> None:
        sop_class, sop_instance = "", ""
        try:
            parsed = parse_instance(path)
            sop_class, sop_instance = parsed.sop_class_uid, parsed.sop_instance_uid
            if study_uid and parsed.study_instance_uid != study_uid:
                raise InvalidObject(f"its Study Instance UID {parsed.study_instance_uid} is not the {study_uid} "
                                    "of the request URL", sop_instance_uid=sop_instance, status=STUDY_MISMATCH)
            result = self.ingest.store(path, door="dicomweb", source_ae_title=source[:16], sha256=sha256,
                                       parsed=parsed, may_add_to=may_add_to)
        except InvalidObject as exc:
            log.warning("STOW-RS from %s: %s", source, exc)
            reason = exc.status if exc.status in (STUDY_MISMATCH, 0x0111, NOT_AUTHORISED) else CANNOT_UNDERSTAND
            if exc.sop_instance_uid and not sop_class:  # parsed far enough to name it: name its class too
                sop_class = _sop_class_of(path)
            outcome.failed.append(_failure(sop_class, sop_instance or exc.sop_instance_uid or "", reason, str(exc)))
            return
        except StorageFailure as exc:
            log.error("STOW-RS from %s: %s", source, exc)
            outcome.failed.append(_failure(sop_class, sop_instance, OUT_OF_RESOURCES, str(exc)))
            return
        finally:
            self.spool.discard(path)  # a no-op when ingest adopted the file as its blob
        item = _reference(result.sop_class_uid, result.sop_instance_uid)
        item["00081190"] = {"vr": "UR", "Value": [
            f"{base_url}/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
            f"/instances/{result.sop_instance_uid}"]}
        outcome.stored.append(item)

    def _files_from_json(self, parts: list[Part], outcome: StowOutcome) -> list[tuple[Path, str | None]]:
        """``application/dicom+json`` metadata parts, with bulk data in the other parts (by Content-Location)."""
        by_location = {part.headers.get("content-location", ""): part for part in parts}
        files: list[tuple[Path, str | None]] = []
        for part in parts:
            if not part.content_type.lower().startswith("application/dicom+json"):
                continue
            try:
                documents = json.loads(part.path.read_bytes())
            except (ValueError, UnicodeDecodeError) as exc:
                outcome.failed.append(_failure("", "", CANNOT_UNDERSTAND, f"a part is not JSON: {exc}"))
                continue
            for document in documents if isinstance(documents, list) else [documents]:
                path, problem = self._part10_from_json(document, by_location)
                if path is None:
                    sop_class, sop_instance = _uids_in_json(document)
                    outcome.failed.append(_failure(sop_class, sop_instance, CANNOT_UNDERSTAND, problem))
                else:
                    files.append((path, None))
        for part in parts:
            self.spool.discard(part.path)
        return files

    def _part10_from_json(self, document: Any, by_location: dict[str, Part]) -> tuple[Path | None, str]:
        def bulk(tag: str, vr: str, uri: str) -> bytes:
            part = by_location.get(uri) or by_location.get(uri.rsplit("/", 1)[-1])
            if part is None:
                raise KeyError(f"no part with Content-Location {uri}")
            return part.path.read_bytes()

        try:
            dataset = Dataset.from_json(document, bulk_data_uri_handler=bulk)
            dataset.file_meta = FileMetaDataset()
            dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        except Exception as exc:  # a malformed JSON data set: reported as a failed part
            log.warning("STOW-RS: a DICOM JSON data set could not be converted: %s", exc)
            return None, f"the DICOM JSON data set cannot be read ({type(exc).__name__}: {exc})"
        path = self.spool.new()  # like every part: written once, where ingest adopts it (or discards it)
        try:
            dataset.save_as(path, enforce_file_format=True)
        except Exception as exc:
            self.spool.discard(path)
            log.warning("STOW-RS: a DICOM JSON data set could not be written as Part 10: %s", exc)
            return None, f"the DICOM JSON data set cannot be written as Part 10 ({type(exc).__name__}: {exc})"
        return path, ""


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
