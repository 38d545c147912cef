"""De-identified copies written out: each Part 10 source de-identified (:mod:`mosaic.governance.deid`) into a
folder or a new zip file as ``<Study UID>/<Series UID>/<SOP Instance UID>.dcm``, with what was left out and why.

Nothing existing is overwritten and the sources are only read.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

from mosaic.governance.deid import DeidentificationOptions, Deidentifier, ExportManifest, burned_in_annotation_reason


def encode(dataset: Dataset) -> bytes:
    """A de-identified dataset as a Part 10 file, in its original transfer syntax (pixel data as it was)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class ExportedInstance:
    """One instance written to the export."""

    source: Path
    name: str
    """Its path inside the export folder or zip: ``<Study UID>/<Series UID>/<SOP Instance UID>.dcm``."""
    original_sop_instance_uid: str
    sop_instance_uid: str


@dataclass
class ExportReport:
    """What an export did. ``manifest`` links pseudonyms to identities: keep it inside Mosaic."""

    destination: Path
    exported: list[ExportedInstance] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    """(original SOP Instance UID, reason) of instances left out on purpose (burned-in annotation)."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """(source, reason) of sources that could not be read, de-identified or written."""
    manifest: ExportManifest = field(default_factory=ExportManifest)

    @property
    def exported_count(self) -> int:
        return len(self.exported)


class _FolderWriter:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as file:  # never overwrite anything
            try:
                file.write(data)
            except BaseException:
                path.unlink(missing_ok=True)
                raise

    def close(self) -> None:
        pass


class _ZipWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.archive = zipfile.ZipFile(path, "x", compression=zipfile.ZIP_DEFLATED, compresslevel=1)

    def write(self, name: str, data: bytes) -> None:
        self.archive.writestr(name, data)

    def close(self) -> None:
        self.archive.close()


def export_deidentified(
    sources: Iterable[Path],
    destination: Path,
    *,
    options: DeidentificationOptions,
    as_zip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """De-identify Part 10 files into a folder (or a new zip file at ``destination``).

    Each instance goes to ``<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` under its new UIDs; nothing
    existing is overwritten and the sources are only read. ``progress`` is called with the number of
    sources handled so far. Instances that may show burned-in text are excluded and reported (unless
    ``options.include_burned_in``); sources that fail are reported with the reason.
    """
    report = ExportReport(destination=destination)
    deidentifier = Deidentifier(options)
    report.manifest = deidentifier.manifest
    writer: _FolderWriter | _ZipWriter = _ZipWriter(destination) if as_zip else _FolderWriter(destination)
    written: set[str] = set()
    try:
        for count, source in enumerate(_paths(sources), start=1):
            _export_one(source, deidentifier, writer, written, report)
            if progress is not None:
                progress(count)
    finally:
        writer.close()
    return report


def _paths(sources: Iterable[Path]) -> Iterator[Path]:
    for source in sources:
        yield Path(source)


def _export_one(
    source: Path,
    deidentifier: Deidentifier,
    writer: _FolderWriter | _ZipWriter,
    written: set[str],
    report: ExportReport,
) -> None:
    try:
        original = pydicom.dcmread(source, force=False)
    except Exception as exc:  # pydicom raises many types on malformed input
        report.failed.append((source, f"not a readable DICOM Part 10 file: {type(exc).__name__}: {exc}"))
        return
    sop_instance_uid = str(original.get("SOPInstanceUID", "") or "").strip()
    sop_class_uid = str(original.get("SOPClassUID", "") or "")
    media_class = str(getattr(original, "file_meta", Dataset()).get("MediaStorageSOPClassUID", "") or "")
    if MediaStorageDirectoryStorage in (sop_class_uid, media_class):
        report.failed.append((source, "a DICOMDIR (Media Storage Directory) is not an instance to export"))
        return
    if not sop_instance_uid or not sop_class_uid or "StudyInstanceUID" not in original \
            or "SeriesInstanceUID" not in original:
        report.failed.append((source, "not a composite instance: SOP Class, SOP Instance, Study or Series UID missing"))
        return
    reason = burned_in_annotation_reason(original)
    if reason is not None and not deidentifier.options.include_burned_in:
        report.excluded.append((sop_instance_uid, reason))
        return
    try:
        result = deidentifier.deidentify(original)
        name = f"{result.StudyInstanceUID}/{result.SeriesInstanceUID}/{result.SOPInstanceUID}.dcm"
        if name in written:
            report.failed.append((source, f"SOP Instance {sop_instance_uid} is already in this export"))
            return
        writer.write(name, encode(result))
    except Exception as exc:  # one bad instance must not stop the export: reported, never passed through
        report.failed.append((source, f"could not de-identify or write: {type(exc).__name__}: {exc}"))
        return
    written.add(name)
    report.exported.append(ExportedInstance(source, name, sop_instance_uid, str(result.SOPInstanceUID)))
