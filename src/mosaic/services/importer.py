"""Folder import: every file under the given paths through the one ingest path, safe to re-run.

DICOM files are stored as they are. Photos, video and PDFs are captured into their patient's record
(:mod:`mosaic.services.capturing`) when a sidecar names the patient and the context:

* ``capture.json`` in their folder: an object with the fields of :class:`CaptureRequest` (``PatientID``,
  ``IssuerOfPatientID``, ``encounter``, ``specialty``, ``body_site``, ``body_site_code``, ``laterality``, ``view``,
  ``description``, ``operator``, ``StudyInstanceUID``, ``video_kind``), for every file of the folder, and
  optionally ``"files": {"<name>": {…}}`` with what differs for one file;
* ``<name>.json`` next to a file (``wound.jpg.json`` or ``wound.json``): the same fields, for that file;
* ``capture.csv`` in the folder: a header row naming those fields and ``file``, one row per file.

Files of one folder with the same context are one capture session (without an encounter, one new study). A
non-DICOM file that no sidecar names is refused by name; the sidecars themselves are not stored."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mosaic.core.errors import InvalidObject, StorageFailure
from mosaic.index.query import Scope
from mosaic.services.capture import sniff
from mosaic.services.capturing import CaptureFile, CaptureRefused, CaptureRequest, CaptureService
from mosaic.services.ingest import IngestService
from mosaic.services.origin import Door, IngestOrigin

SIDECAR_JSON, SIDECAR_CSV = "capture.json", "capture.csv"
_REQUEST_FIELDS = {item.name for item in fields(CaptureRequest)} - {"captured_at", "session_key"}
_FIELD_NAMES = {**{name: name for name in _REQUEST_FIELDS}, "body_site": "body_site_meaning",
                "patient_id": "PatientID", "issuer": "IssuerOfPatientID"}
"""Sidecar keys → :class:`CaptureRequest` fields (``body_site`` is the site's name)."""


@dataclass
class ImportSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) for every file that was not stored."""


def iter_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for filename in sorted(filenames):
                    yield Path(dirpath) / filename


def import_paths(ingest: IngestService, paths: list[Path], progress: Callable[[Path], None] | None = None, *,
                 origin: IngestOrigin | None = None, captures: CaptureService | None = None) -> ImportSummary:
    """Store every file found, offered by ``origin`` (who runs the import: ingest checks and audits each store;
    by default nobody, unchecked and unaudited); an interrupted import re-run finds the stored ones already
    present. With ``captures``, photos, video and PDFs a sidecar names are captured into their patient's record."""
    origin = origin or IngestOrigin(door=Door.IMPORT)
    summary = ImportSummary()
    sessions: dict[tuple[str, ...], tuple[CaptureRequest, list[CaptureFile]]] = {}
    for file in iter_files(paths):
        if _is_sidecar(file):
            if progress:
                progress(file)
            continue
        media_type = _content_type(file) if captures is not None else None
        if media_type is not None:
            try:
                request = _request_for(file)
            except ValueError as exc:
                summary.outcomes["rejected"] += 1
                summary.rejected.append((str(file), str(exc)))
            else:
                # a folder is a session: its files of one patient and encounter go into one study
                key = (str(file.parent), request.PatientID, request.IssuerOfPatientID, request.encounter,
                       request.StudyInstanceUID)
                sessions.setdefault(key, (request, []))[1].append(CaptureFile(file, file.name, media_type, request))
            if progress:
                progress(file)
            continue
        try:
            result = ingest.store(file, origin)
            summary.outcomes[result.outcome.value] += 1
        except (InvalidObject, StorageFailure) as exc:
            summary.outcomes["rejected"] += 1
            summary.rejected.append((str(file), str(exc)))
        except OSError as exc:
            summary.outcomes["rejected"] += 1
            summary.rejected.append((str(file), f"cannot read: {exc}"))
        if progress:
            progress(file)
    for request, files in sessions.values():
        assert captures is not None  # sessions are made only with it
        try:
            # who imports runs the machine: a study a sidecar names may be any (ingest still asks the policy)
            results = captures.capture(request, files, origin, scope=Scope.everything())
        except CaptureRefused as exc:
            for item in files:
                summary.outcomes["rejected"] += 1
                summary.rejected.append((str(item.path), str(exc)))
            continue
        for item, captured in zip(files, results, strict=True):
            if captured.outcome == "failed":
                summary.outcomes["rejected"] += 1
                summary.rejected.append((str(item.path), captured.reason))
            else:
                summary.outcomes[captured.outcome.replace(" ", "-")] += 1
    return summary


def _is_sidecar(file: Path) -> bool:
    if file.name in (SIDECAR_JSON, SIDECAR_CSV):
        return True
    if file.suffix.lower() != ".json":
        return False
    stem = file.with_suffix("")
    return stem.exists() or any(sibling.stem == file.stem and sibling != file for sibling in file.parent.iterdir())


def _content_type(file: Path) -> str | None:
    """The capture media type of a file's content, or None (DICOM, or anything else: ingest decides)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return None
    return sniff(head)


def _request_for(file: Path) -> CaptureRequest:
    """The capture context the sidecars give ``file`` (the folder's, then the file's own); ValueError when none
    names its patient, or a sidecar cannot be read."""
    values: dict[str, Any] = {}
    folder = file.parent
    sidecar = folder / SIDECAR_JSON
    if sidecar.is_file():
        document = _json(sidecar)
        values.update({key: value for key, value in document.items() if key != "files"})
        values.update((document.get("files") or {}).get(file.name, {}))
    table = folder / SIDECAR_CSV
    if table.is_file():
        try:
            with open(table, newline="", encoding="utf-8-sig") as handle:
                for row in csv.DictReader(handle):
                    if (row.get("file") or "").strip() == file.name:
                        values.update({key: value for key, value in row.items() if key and key != "file" and value})
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{table}: cannot be read as CSV: {exc}") from None
    for own in (file.with_name(file.name + ".json"), file.with_suffix(".json")):
        if own.is_file() and own != file:
            values.update(_json(own))
            break
    request: dict[str, Any] = {}
    for key, value in values.items():
        name = _FIELD_NAMES.get(key)
        if name is None:
            raise ValueError(f"{file.name}: its sidecar names {key!r}, which is not a capture field (one of "
                             f"{', '.join(sorted(_FIELD_NAMES))})")
        request[name] = str(value).strip()
    if not request.get("PatientID"):
        raise ValueError(f"{file.name}: not DICOM, and no sidecar ({SIDECAR_JSON}, {SIDECAR_CSV} or "
                         f"{file.name}.json) names its patient (PatientID)")
    return CaptureRequest(**request, session_key=f"import:{file.parent.resolve()}")


def _json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a sidecar is a JSON object")
    return document
