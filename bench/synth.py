"""Synthetic DICOM data for the benchmark, generated once and cached under ``bench/.cache``.

Three sets:

* the ingest set: 512x512 16-bit CT slices (~0.5 MB, Explicit VR Little Endian, a full CT header with a
  private block) over a few patients, studies and series, split in four folders (one per association);
* the query set: small instances (16x16 pixels) of mixed modalities spread over realistic numbers of
  patients, studies and series, in folders of 1,000 so that any multiple of 1,000 is a prefix of it;
* one ~1 GB multi-frame instance (2,000 frames of 512x512 16-bit) written by streaming frame after frame.

Every value is a function of the instance's index, so a cached file is identical to a regenerated one.
"""

from __future__ import annotations

import bisect
import calendar
import json
import multiprocessing
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

VERSION = 1
"""Bump when the generated content changes: cached sets of another version are regenerated."""
BLOCK = 1000
"""Query-set instances per folder."""
UID_ROOT = "1.2.826.0.1.3680043.8.498."

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
}
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"

FAMILY = ("SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ",
          "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE",
          "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ", "CLARK", "RAMIREZ",
          "LEWIS", "ROBINSON", "WALKER", "YOUNG", "ALLEN", "KING", "WRIGHT", "SCOTT", "TORRES", "NGUYEN",
          "HILL", "FLORES", "MULLER", "SCHMIDT", "DUBOIS", "ROSSI", "JANSSENS", "PEETERS", "SILVA",
          "KOWALSKI")
GIVEN = ("JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN", "JENNIFER", "MICHAEL", "LINDA", "DAVID", "ELIZABETH",
         "WILLIAM", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH", "CHARLES", "KAREN",
         "ANNA", "LUCAS", "EMMA", "NOAH", "LEA", "HUGO", "CHLOE", "LOUIS", "INES", "JULES")

# (modality, weight, series count range, instances per series range, study descriptions, body parts)
STUDY_KINDS = (
    ("CR", 30, (1, 3), (1, 1), ("XR CHEST 2 VIEWS", "XR KNEE", "XR HAND"), ("CHEST", "KNEE", "HAND")),
    ("DX", 10, (1, 2), (1, 2), ("DX SPINE", "DX PELVIS"), ("LSPINE", "PELVIS")),
    ("CT", 20, (2, 4), (40, 160), ("CT CHEST W CONTRAST", "CT ABDOMEN PELVIS", "CT HEAD WO"),
     ("CHEST", "ABDOMEN", "HEAD")),
    ("MR", 15, (4, 8), (15, 40), ("MR BRAIN W WO", "MR KNEE", "MR LSPINE"), ("BRAIN", "KNEE", "LSPINE")),
    ("US", 12, (1, 1), (5, 30), ("US ABDOMEN", "US THYROID"), ("ABDOMEN", "NECK")),
    ("MG", 8, (1, 1), (4, 4), ("MG SCREENING BILATERAL",), ("BREAST",)),
    ("PT", 5, (2, 2), (80, 250), ("PET CT WHOLE BODY",), ("WHOLEBODY",)),
)


def uid(*parts: object) -> str:
    """A deterministic UID: one entropy source with separators (joined sources can collide)."""
    source = "mosaic-bench|" + "|".join(str(part) for part in parts)
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[source])


@dataclass(frozen=True)
class PatientPlan:
    number: int
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class SeriesPlan:
    uid: str
    number: int
    modality: str
    description: str
    body_part: str
    count: int


@dataclass
class StudyPlan:
    number: int
    patient: PatientPlan
    uid: str
    accession: str
    study_date: str
    study_time: str
    description: str
    first_index: int
    series: list[SeriesPlan] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(series.count for series in self.series)

    @property
    def modalities(self) -> list[str]:
        return sorted({series.modality for series in self.series})


@dataclass(frozen=True)
class InstancePlan:
    index: int
    study: StudyPlan
    series: SeriesPlan
    number: int


def _patient(number: int, set_name: str) -> PatientPlan:
    rng = random.Random(f"{set_name}|patient|{number}")
    birth = date(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 85))
    return PatientPlan(
        number=number,
        patient_id=f"{set_name[:1].upper()}{number:07d}",
        name=f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=rng.choice("MF"),
    )


class Layout:
    """Patients → studies → series → instances, in index order, for one data set."""

    def __init__(self, set_name: str, studies: list[StudyPlan]) -> None:
        self.set_name = set_name
        self.studies = studies
        self._starts = [study.first_index for study in studies]

    @property
    def total(self) -> int:
        return sum(study.count for study in self.studies)

    def instances(self, start: int, stop: int) -> Iterator[InstancePlan]:
        position = bisect.bisect_right(self._starts, start) - 1
        index = self.studies[position].first_index
        for study in self.studies[position:]:
            for series in study.series:
                for number in range(1, series.count + 1):
                    if index >= stop:
                        return
                    if index >= start:
                        yield InstancePlan(index, study, series, number)
                    index += 1

    def studies_before(self, size: int) -> list[StudyPlan]:
        return [study for study in self.studies if study.first_index + study.count <= size]


def query_layout(total: int) -> Layout:
    """The query set: a realistic mix of study kinds, ~80 instances per study on average."""
    rng = random.Random("query-layout")
    weights = [kind[1] for kind in STUDY_KINDS]
    studies: list[StudyPlan] = []
    patients: list[PatientPlan] = []
    index = 0
    first_day = date(2014, 1, 1)
    while index < total:
        number = len(studies)
        if patients and rng.random() < 0.45:
            patient = rng.choice(patients[-200:])
        else:
            patient = _patient(len(patients) + 1, "query")
            patients.append(patient)
        kind = rng.choices(STUDY_KINDS, weights)[0]
        modality, _weight, series_range, count_range, descriptions, body_parts = kind
        choice = rng.randrange(len(descriptions))
        day = first_day + timedelta(days=rng.randrange(0, 3650))
        study = StudyPlan(
            number=number, patient=patient, uid=uid("query", "study", number),
            accession=f"A{number + 100000:08d}", study_date=day.strftime("%Y%m%d"),
            study_time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            description=descriptions[choice], first_index=index,
        )
        for series_number in range(1, rng.randint(*series_range) + 1):
            series_modality = "CT" if modality == "PT" and series_number == 1 else modality
            count = min(rng.randint(*count_range), total - index)
            if count <= 0:
                break
            study.series.append(SeriesPlan(
                uid=uid("query", "series", number, series_number), number=series_number,
                modality=series_modality, description=f"{descriptions[choice]} S{series_number}",
                body_part=body_parts[choice], count=count,
            ))
            index += count
        studies.append(study)
    return Layout("query", studies)


def ingest_layout(total: int) -> Layout:
    """The ingest set: CT only, 3 patients, 4 studies, 8 series (sizes scale with ``total``)."""
    shares = (0.2, 0.125, 0.125, 0.15, 0.1, 0.1, 0.1, 0.1)
    counts = [max(1, int(total * share)) for share in shares]
    counts[0] += total - sum(counts)
    series_of_study = ((0, 1), (2, 3), (4, 5), (6, 7))
    patient_of_study = (1, 2, 2, 3)
    studies: list[StudyPlan] = []
    index = 0
    for number, series_numbers in enumerate(series_of_study):
        study = StudyPlan(
            number=number, patient=_patient(patient_of_study[number], "ingest"),
            uid=uid("ingest", "study", number),
            accession=f"I{number + 1:08d}", study_date=f"2024031{number}", study_time="093000",
            description="CT CHEST ABDOMEN PELVIS W CONTRAST", first_index=index,
        )
        for position, series_index in enumerate(series_numbers):
            kernel = ("STANDARD", "LUNG")[position % 2]
            study.series.append(SeriesPlan(
                uid=uid("ingest", "series", number, position), number=position + 2, modality="CT",
                description=f"AXIAL 1.25MM {kernel}", body_part="CHEST", count=counts[series_index],
            ))
            index += counts[series_index]
        studies.append(study)
    return Layout("ingest", studies)


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "99.1"
    meta.ImplementationVersionName = "MOSAIC_BENCH_1"
    meta.SourceApplicationEntityTitle = "CT_SCANNER_01"
    return meta


def header(plan: InstancePlan, *, rows: int, columns: int, set_name: str) -> Dataset:
    """A realistic header for one instance (CT-like acquisition attributes for CT and PT series)."""
    ds = series_template(plan, rows=rows, columns=columns, set_name=set_name)
    set_instance(ds, plan, set_name)
    return ds


def set_instance(ds: Dataset, plan: InstancePlan, set_name: str) -> None:
    """The per-instance attributes of a header made by :func:`series_template`."""
    sop_uid = uid(set_name, "instance", plan.index)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.InstanceNumber = plan.number
    z = -100.0 - 1.25 * plan.number
    ds.ImagePositionPatient = [-190.0, -190.0, z]
    ds.SliceLocation = str(z)


def series_template(plan: InstancePlan, *, rows: int, columns: int, set_name: str) -> Dataset:
    """Everything but the per-instance attributes, shared by the instances of one series."""
    study, series = plan.study, plan.series
    patient = study.patient
    modality = series.modality
    sop_uid = uid(set_name, "instance", plan.index)
    sop_class = SOP_CLASS[modality]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.study_time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "ACME Medical Systems"
    ds.InstitutionName = "General Hospital"
    ds.InstitutionAddress = "1 Hospital Road, Springfield"
    ds.ReferringPhysicianName = "WELBY^MARCUS^^DR"
    ds.StationName = f"{modality}SCAN01"
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName = "HOUSE^GREGORY"
    ds.OperatorsName = "TECH^ALEX"
    ds.ManufacturerModelName = "Imager 9000"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "GH"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    age = max(0, int(study.study_date[:4]) - int(patient.birth_date[:4]))
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientSize = "1.75"
    ds.PatientWeight = "72"
    ds.BodyPartExamined = series.body_part
    ds.DeviceSerialNumber = "SN-0042"
    ds.SoftwareVersions = "VA12.3"
    ds.ProtocolName = study.description
    ds.PatientPosition = "HFS"
    if modality in ("CT", "PT"):
        ds.ScanOptions = "HELICAL MODE"
        ds.SliceThickness = "1.25"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = "380"
        ds.DistanceSourceToDetector = "946.7"
        ds.DistanceSourceToPatient = "541"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150.5"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "600"
        ds.XRayTubeCurrent = "250"
        ds.Exposure = "150"
        ds.FilterType = "BODY FILTER"
        ds.GeneratorPower = "30"
        ds.FocalSpots = "0.7"
        ds.ConvolutionKernel = "STANDARD"
        ds.RevolutionTime = 0.5
        ds.SingleCollimationWidth = 0.625
        ds.TotalCollimationWidth = 40.0
        ds.TableSpeed = 78.75
        ds.TableFeedPerRotation = 39.375
        ds.SpiralPitchFactor = 0.984375
        ds.CTDIvol = 11.2
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = str(study.number + 1)
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = plan.number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uid(set_name, "for", study.number)
    ds.PositionReferenceIndicator = "SN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.742188, 0.742188]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1600"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = ["ABDOMEN", "LUNG"]
    request = Dataset()
    request.RequestedProcedureID = f"RP{study.number:06d}"
    request.ScheduledProcedureStepID = f"SPS{study.number:06d}"
    request.RequestedProcedureDescription = study.description
    ds.RequestAttributesSequence = [request]
    ds.PerformedProcedureStepStartDate = study.study_date
    ds.PerformedProcedureStepStartTime = study.study_time
    ds.PerformedProcedureStepID = f"PPS{study.number:06d}"
    ds.PerformedProcedureStepDescription = study.description
    block = ds.private_block(0x0009, "ACME_PRIVATE_1", create=True)
    block.add_new(0x01, "LO", "ACME CT RECON")
    block.add_new(0x02, "SL", 17)
    block.add_new(0x03, "DS", "0.5")
    block.add_new(0x04, "OB", bytes(range(64)))
    ds.file_meta = _file_meta(sop_class, sop_uid)
    return ds


def _phantom(rows: int, columns: int) -> np.ndarray:
    """A round 'body' with a bright 'spine' and noise, in stored values (HU + 1024)."""
    y, x = np.ogrid[:rows, :columns]
    radius = np.hypot(x - columns / 2, (y - rows / 2) * 1.3)
    image = np.where(radius < columns * 0.42, 1064, 24).astype(np.uint16)
    image[(np.hypot(x - columns / 2, y - rows * 0.7)) < columns * 0.05] = 1700
    noise = np.random.default_rng(7).integers(0, 40, size=(rows, columns), dtype=np.uint16)
    return image + noise


def _headers(layout: Layout, start: int, stop: int, *, rows: int, columns: int
             ) -> Iterator[tuple[InstancePlan, Dataset]]:
    """Headers of instances ``start``..``stop``: one template per series, updated per instance."""
    template: Dataset | None = None
    current = ""
    for plan in layout.instances(start, stop):
        if template is None or plan.series.uid != current:
            template = series_template(plan, rows=rows, columns=columns, set_name=layout.set_name)
            current = plan.series.uid
        set_instance(template, plan, layout.set_name)
        yield plan, template


def _complete(marker: Path, meta: dict[str, object]) -> bool:
    try:
        return bool(json.loads(marker.read_text()) == meta)
    except (OSError, ValueError):
        return False


def _mark(marker: Path, meta: dict[str, object]) -> None:
    marker.write_text(json.dumps(meta))


def ensure_ingest_set(cache: Path, count: int, parts: int = 4) -> list[Path]:
    """``count`` CT slices of 512x512, in ``parts`` folders; returns the folders."""
    root = cache / f"ingest-{count}"
    meta: dict[str, object] = {"version": VERSION, "count": count, "parts": parts}
    folders = [root / f"part{part}" for part in range(parts)]
    marker = root / "complete.json"
    if _complete(marker, meta):
        return folders
    layout = ingest_layout(count)
    base = _phantom(512, 512)
    per_part = -(-count // parts)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for plan, ds in _headers(layout, 0, count, rows=512, columns=512):
        ds.PixelData = np.roll(base, plan.number % 64, axis=0).tobytes()
        ds.save_as(folders[plan.index // per_part] / f"ct{plan.index:06d}.dcm", enforce_file_format=True)
    _mark(marker, meta)
    return folders


def query_root(cache: Path) -> Path:
    return cache / f"query-v{VERSION}"


def query_blocks(cache: Path, size: int) -> list[Path]:
    """The folders holding the first ``size`` query-set instances (a multiple of 1,000)."""
    if size % BLOCK:
        raise ValueError(f"query-set sizes must be multiples of {BLOCK}, not {size}")
    return [query_root(cache) / f"block{number:04d}" for number in range(size // BLOCK)]


def _write_block(job: tuple[Path, int, int]) -> int:
    cache, number, cap = job
    layout = query_layout(cap)
    folder = query_root(cache) / f"block{number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(16 * 16, dtype=np.uint16) * 13 % 4096).tobytes()
    for plan, ds in _headers(layout, number * BLOCK, (number + 1) * BLOCK, rows=16, columns=16):
        ds.PixelData = pixels
        ds.save_as(folder / f"q{plan.index:07d}.dcm", enforce_file_format=True)
    _mark(folder.with_suffix(".json"), {"version": VERSION, "block": number})
    return number


def ensure_query_set(cache: Path, size: int, cap: int, workers: int = 2) -> list[Path]:
    """The first ``size`` query-set instances, one folder per 1,000 (generated in ``workers`` processes).

    Instance *i* is the same whatever the layout's ``cap`` (as long as *i* < ``cap``), so blocks generated
    for a smaller run are reused by a larger one.
    """
    folders = query_blocks(cache, size)
    missing = [number for number, folder in enumerate(folders)
               if not _complete(folder.with_suffix(".json"), {"version": VERSION, "block": number})]
    if missing:
        query_root(cache).mkdir(parents=True, exist_ok=True)
        jobs = [(cache, number, cap) for number in missing]
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_block, jobs):
                    pass
        else:
            for job in jobs:
                _write_block(job)
    return folders


def ensure_multiframe(cache: Path, frames: int = 2000, rows: int = 512, columns: int = 512) -> Path:
    """One multi-frame instance of ``frames`` 16-bit frames, streamed to disk frame by frame."""
    path = cache / f"multiframe-{frames}x{rows}x{columns}.dcm"
    pixel_bytes = frames * rows * columns * 2
    meta: dict[str, object] = {"version": VERSION, "frames": frames, "rows": rows, "columns": columns}
    marker = path.with_suffix(".json")
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == meta:
        return path
    if pixel_bytes >= 0xFFFFFFFF:
        raise ValueError("pixel data must stay below 4 GiB (32-bit value length)")
    study = StudyPlan(number=0, patient=_patient(9, "memory"), uid=uid("memory", "study"),
                      accession="M00000001", study_date="20240401", study_time="120000",
                      description="CT PERFUSION 4D", first_index=0)
    series = SeriesPlan(uid=uid("memory", "series"), number=1, modality="CT", description="PERFUSION 4D",
                        body_part="HEAD", count=1)
    ds = header(InstancePlan(0, study, series, 1), rows=rows, columns=columns, set_name="memory")
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_WORD_SC
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = "50"
    ds.ConversionType = "WSD"
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    ds.save_as(partial, enforce_file_format=True)
    base = _phantom(rows, columns)
    with open(partial, "ab") as out:
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 32-bit length
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        for frame in range(frames):
            out.write(np.roll(base, frame % 128, axis=1).tobytes())
    os.replace(partial, path)
    marker.write_text(json.dumps(meta))
    return path


def month_range(day: str) -> str:
    """``YYYYMM01-YYYYMMDD`` for the month of ``day``."""
    year, month = int(day[:4]), int(day[4:6])
    last = calendar.monthrange(year, month)[1]
    return f"{year:04d}{month:02d}01-{year:04d}{month:02d}{last:02d}"
