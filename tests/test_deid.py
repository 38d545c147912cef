"""PS3.15 Annex E de-identification (mosaic.governance.deid), checked by reading what was written.

The attributes that must not survive are listed here, independently of the module's own table, and
every check re-reads the exported files from disk with pydicom.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MediaStorageDirectoryStorage, UltrasoundImageStorage, generate_uid

from mosaic.governance.deid import DeidentificationOptions, ExportReport, deidentify, export_deidentified
from tests.factory import PREFIX, make_instance, to_bytes

SECRET = b"a test project secret, 32 bytes"

MUST_NOT_SURVIVE = (
    "AccessionNumber", "AdditionalPatientHistory", "AdmissionID", "ConsultingPhysicianName",
    "ContentCreatorName", "DeviceSerialNumber", "ImageComments", "InstitutionAddress",
    "InstitutionName", "InstitutionalDepartmentName", "IssuerOfPatientID", "MedicalRecordLocator",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientAge", "PatientBirthDate", "PatientBirthName", "PatientBirthTime",
    "PatientComments", "PatientID", "PatientMotherBirthName", "PatientName", "PatientSex", "PatientSize",
    "PatientTelephoneNumbers", "PatientWeight", "PerformedProcedureStepID", "PerformingPhysicianName",
    "PersonName", "PhysiciansOfRecord", "ReferringPhysicianAddress", "ReferringPhysicianName",
    "ReferringPhysicianTelephoneNumbers", "RequestedProcedureID", "RequestingPhysician",
    "ScheduledProcedureStepID", "StationName", "StudyComments", "StudyID", "VerifyingObserverName",
)
"""PS3.15 Table E.1-1 attributes (basic profile X, Z or D; no option enabled by default retains them)
that must not keep their original non-empty value anywhere in a de-identified instance."""

MUST_BE_ABSENT = ("OtherPatientIDsSequence", "ReferencedPatientSequence", "ReferencedPatientPhotoSequence",
                  "IconImageSequence", "OriginalAttributesSequence", "ImageComments", "PatientAge")

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TEST_FILES = Path(DATA_ROOT) / "test_files"


def corpus_files() -> list[Path]:
    """pydicom's test data sets present on disk (pydicom-data too when installed), one per SOP Instance UID.

    Files pydicom cannot read without ``force`` and files that are not filed instances (DICOMDIR,
    no Study/Series/SOP UID) are left out; several bundled files share a SOP Instance UID.
    """
    candidates = sorted(path for path in TEST_FILES.glob("*") if path.is_file())
    for source in external_data_sources().values():
        candidates.extend(sorted(Path(path) for path in source.get_paths("*", 0)))
    chosen: dict[str, Path] = {}
    for path in candidates:
        try:
            dataset = pydicom.dcmread(path, force=False, stop_before_pixels=True)
        except Exception:
            continue
        uids = [str(dataset.get(keyword, "") or "") for keyword in ("SOPClassUID", "SOPInstanceUID",
                                                                   "StudyInstanceUID", "SeriesInstanceUID")]
        if not all(uids) or uids[0] == MediaStorageDirectoryStorage:
            continue
        chosen.setdefault(uids[1], path)
    return list(chosen.values())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def values_of(dataset: Dataset, keyword: str) -> set[str]:
    """Every non-empty value (each value of a multi-valued one) of ``keyword`` at any depth."""
    found: set[str] = set()
    for element in dataset.iterall():
        if element.keyword != keyword or element.VR == "SQ" or element.value in (None, "", b""):
            continue
        items = element.value if element.VM > 1 else [element.value]
        found.update(str(item).strip() for item in items if str(item).strip())
    return found


def all_person_names(dataset: Dataset) -> set[str]:
    return {str(element.value) for element in dataset.iterall()
            if element.VR == "PN" and element.VM == 1 and str(element.value or "").strip()}


def parse_da(value: object) -> datetime.date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def exported_pairs(report: ExportReport, destination: Path) -> Iterator[tuple[Dataset, Dataset]]:
    """(original, de-identified) pairs, both read from disk."""
    for item in report.exported:
        yield pydicom.dcmread(item.source), pydicom.dcmread(destination / item.name)


def synthetic_instances(folder: Path) -> list[Path]:
    """Instances with what pydicom's corpus lacks: identifying values everywhere, two studies of one patient,
    the same PatientID from two issuers, references between instances, private data, overlays."""
    folder.mkdir(parents=True, exist_ok=True)
    study_a1, study_a2 = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    frame_of_reference = generate_uid(prefix=PREFIX)
    first = make_instance(patient_id="MRN-SECRET-0001", issuer="HOSPITAL-A", patient_name="Doe^Jane^Q",
                          study_uid=study_a1, study_date="20240105", accession="ACC-SECRET-77",
                          FrameOfReferenceUID=frame_of_reference)
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = first.SOPClassUID
    referenced.ReferencedSOPInstanceUID = first.SOPInstanceUID
    performer = Dataset()
    performer.PersonName = "Smith^Operator"
    performer.InstitutionName = "Secret General Hospital"
    second = make_instance(
        patient_id="MRN-SECRET-0001", issuer="HOSPITAL-A", patient_name="Doe^Jane^Q", study_uid=study_a1,
        series_uid=first.SeriesInstanceUID, study_date="20240105", accession="ACC-SECRET-77", instance_number=2,
        FrameOfReferenceUID=frame_of_reference, ReferencedImageSequence=Sequence([referenced]),
        OtherPatientIDs="OTHER-SECRET-9", OtherPatientIDsSequence=Sequence([Dataset()]),
        InstitutionName="Secret General Hospital", InstitutionAddress="1 Secret Road",
        OperatorsName="Smith^Operator", PerformingPhysicianName="House^Gregory", StationName="CT-ROOM-7",
        DeviceSerialNumber="SN-424242", PatientAge="054Y", PatientWeight=61.5, PatientSize=1.7,
        ImageComments="Jane Doe, call 555-0100", AdditionalPatientHistory="smoker",
        AcquisitionDateTime="20240105101112.5", ContentDate="20240105", ContentTime="101500",
        StudyDescription="CT HEAD W/O", SeriesDescription="Doe head scan",
        ContentSequence=Sequence([performer]), PhysiciansOfRecord="Wilson^James",
    )
    second.add_new(0x00091010, "LO", "PRIVATE-SECRET")
    second.add_new(0x00090010, "LO", "ACME 1.0")
    second.add_new(0x60000010, "US", 16)
    second.add_new(0x60004000, "LT", "overlay note by Smith")
    later = make_instance(patient_id="MRN-SECRET-0001", issuer="HOSPITAL-A", patient_name="Doe^Jane^Q",
                          study_uid=study_a2, study_date="20240320", accession="ACC-SECRET-78")
    other_issuer = make_instance(patient_id="MRN-SECRET-0001", issuer="HOSPITAL-B", patient_name="Roe^Richard",
                                 study_date="20230101", accession="ACC-SECRET-90")
    other_patient = make_instance(patient_id="MRN-SECRET-0002", issuer="HOSPITAL-A", patient_name="Poe^Edgar",
                                  study_date="20220202", accession="ACC-SECRET-91")
    paths = []
    for name, dataset in (("a1.dcm", first), ("a1b.dcm", second), ("a2.dcm", later), ("b.dcm", other_issuer),
                          ("c.dcm", other_patient)):
        path = folder / name
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def corpus_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], ExportReport, Path, dict[Path, str]]:
    """pydicom's corpus and the synthetic instances exported once (burned-in included, to check every header)."""
    base = tmp_path_factory.mktemp("deid")
    sources = corpus_files() + synthetic_instances(base / "synthetic")
    before = {path: sha256(path) for path in sources}
    destination = base / "export"
    seen: list[int] = []
    options = DeidentificationOptions(project_secret=SECRET, include_burned_in=True)
    report = export_deidentified(sources, destination, options=options, progress=seen.append)
    assert seen == list(range(1, len(sources) + 1))
    return sources, report, destination, before


def test_corpus_export_succeeds_for_every_readable_instance(corpus_export) -> None:
    sources, report, _, _ = corpus_export
    assert len(sources) > 20
    assert report.failed == []
    assert report.excluded == []
    assert report.exported_count == len(sources)


def test_originals_are_unchanged(corpus_export) -> None:
    sources, _, _, before = corpus_export
    assert {path: sha256(path) for path in sources} == before


def test_identifying_attributes_do_not_survive(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    for original, result in exported_pairs(report, destination):
        where = result.SOPInstanceUID
        for keyword in MUST_NOT_SURVIVE:
            leaked = values_of(original, keyword) & values_of(result, keyword)
            assert not leaked, f"{keyword} kept its original value {leaked} in {where}"
        for keyword in MUST_BE_ABSENT:
            assert keyword not in result, f"{keyword} still present in {where}"
        leaked_names = all_person_names(original) & all_person_names(result)
        assert not leaked_names, f"person names {leaked_names} survived in {where}"
        assert result.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in result.DeidentificationMethodCodeSequence}
        assert {"113100", "113105", "113107"} <= codes
        assert {item.CodingSchemeDesignator for item in result.DeidentificationMethodCodeSequence} == {"DCM"}
        assert result.LongitudinalTemporalInformationModified == "MODIFIED"
        for meta_keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                             "PrivateInformation"):
            assert meta_keyword not in result.file_meta


def test_pixel_data_is_copied_as_is(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    compared = 0
    for original, result in exported_pairs(report, destination):
        if "PixelData" in original:
            assert result.PixelData == original.PixelData, f"pixel data changed in {result.SOPInstanceUID}"
            compared += 1
    assert compared > 20


def test_no_private_curve_or_overlay_attributes_remain(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    for _, result in exported_pairs(report, destination):
        for element in result.iterall():
            assert not element.tag.is_private, f"private {element.tag} in {result.SOPInstanceUID}"
            assert element.tag.group >> 8 not in (0x50, 0x60), f"{element.tag} in {result.SOPInstanceUID}"


def test_synthetic_identifiers_appear_nowhere_in_the_exported_bytes(corpus_export) -> None:
    _, _, destination, _ = corpus_export
    secrets = [b"MRN-SECRET", b"ACC-SECRET", b"Doe^Jane", b"Secret General", b"Smith", b"SN-424242",
               b"CT-ROOM-7", b"555-0100", b"PRIVATE-SECRET", b"House^Gregory", b"Doe head"]
    files = [path for path in destination.rglob("*") if path.is_file()]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} in {path.relative_to(destination)}"


def test_only_instances_are_written_no_manifest(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    files = sorted(str(path.relative_to(destination)) for path in destination.rglob("*") if path.is_file())
    assert files == sorted(item.name for item in report.exported)
    assert all(re.fullmatch(r"[0-9.]+/[0-9.]+/[0-9.]+\.dcm", name) for name in files)


def test_dates_shift_by_one_whole_day_offset_per_patient(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    offsets: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for original, result in exported_pairs(report, destination):
        patient: tuple[str, ...] = (str(original.get("PatientID", "")), str(original.get("IssuerOfPatientID", "")))
        if not patient[0]:  # without a PatientID each study is its own patient
            patient = (*patient, str(original.StudyInstanceUID))
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            before, after = parse_da(original.get(keyword)), parse_da(result.get(keyword))
            if before is not None and after is not None:
                offsets[patient].add((after - before).days)
        if "AcquisitionDateTime" in original and patient[0] == "MRN-SECRET-0001":
            assert str(result.AcquisitionDateTime)[8:] == str(original.AcquisitionDateTime)[8:]  # time kept
            assert str(result.ContentTime) == str(original.ContentTime)
    assert len(offsets) >= 5
    for patient, found in offsets.items():
        assert len(found) == 1, f"patient {patient}: dates moved by {found} days"
        assert -3650 <= min(found) <= -365
    assert offsets[("MRN-SECRET-0001", "HOSPITAL-A")] != offsets[("MRN-SECRET-0002", "HOSPITAL-A")]


def test_uids_are_new_valid_unique_and_consistent(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    mapping: dict[str, set[str]] = defaultdict(set)
    results: dict[str, Dataset] = {}
    referencing: Dataset | None = None
    for original, result in exported_pairs(report, destination):
        results[str(original.SOPInstanceUID)] = result
        if original.get("PatientID") == "MRN-SECRET-0001" and "ReferencedImageSequence" in original:
            referencing = result
        for keyword in UID_KEYWORDS:
            if original.get(keyword):
                mapping[str(original[keyword].value)].add(str(result[keyword].value))
        assert result.SOPClassUID == original.SOPClassUID
        assert result.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    news: list[str] = []
    for before, after in mapping.items():
        assert len(after) == 1, f"{before} became {after}"
        new = after.pop()
        assert new != before and new.startswith("2.25.") and len(new) <= 64 and UID_SYNTAX.match(new)
        news.append(new)
    assert len(news) == len(set(news)), "two original UIDs share a new UID"
    # A reference inside a sequence follows the instance it points to.
    assert referencing is not None
    reference = referencing.ReferencedImageSequence[0]
    assert reference.ReferencedSOPInstanceUID in {str(result.SOPInstanceUID) for result in results.values()}
    assert reference.ReferencedSOPClassUID == referencing.SOPClassUID


def test_same_patient_same_pseudonym_different_patients_different(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    pseudonyms: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for original, result in exported_pairs(report, destination):
        patient_id = str(original.get("PatientID", "") or "").strip()
        if patient_id:
            key = (patient_id, str(original.get("IssuerOfPatientID", "") or ""))
            pseudonyms[key].add((str(result.PatientID), str(result.PatientName)))
            assert str(result.PatientID) != patient_id
    assert len(pseudonyms) >= 5
    for key, found in pseudonyms.items():
        assert len(found) == 1, f"patient {key} got {found}"
    ids = {key: next(iter(found))[0] for key, found in pseudonyms.items()}
    assert len(set(ids.values())) == len(ids)
    assert ("MRN-SECRET-0001", "HOSPITAL-B") in ids  # same PatientID, another issuer: another patient
    for (patient_id, issuer), pseudonym in ids.items():
        assert report.manifest.patients[(patient_id, issuer, "")] == pseudonym


def test_pseudonyms_are_stable_across_exports_and_secret_specific(tmp_path: Path) -> None:
    sources = synthetic_instances(tmp_path / "sources")
    runs = []
    for name, secret in (("one", SECRET), ("two", SECRET), ("other", b"another project secret, 32 byte")):
        report = export_deidentified(sources, tmp_path / name, options=DeidentificationOptions(project_secret=secret))
        runs.append((report.manifest.patients, report.manifest.studies))
    assert runs[0] == runs[1]
    assert set(runs[0][0].values()).isdisjoint(runs[2][0].values())
    assert set(runs[0][1].values()).isdisjoint(runs[2][1].values())


def test_clean_descriptors_keeps_harmless_descriptions_only(corpus_export) -> None:
    _, report, destination, _ = corpus_export
    for original, result in exported_pairs(report, destination):
        if str(original.get("SeriesDescription", "")) == "Doe head scan":
            assert result.StudyDescription == "CT HEAD W/O"
            assert "SeriesDescription" not in result
            break
    else:
        pytest.fail("the synthetic instance with descriptors was not exported")


def test_burned_in_instances_are_excluded_and_reported(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    flagged = make_instance(patient_id="P-BURN", BurnedInAnnotation="YES")
    ultrasound = make_instance(patient_id="P-US", modality="US", sop_class_uid=UltrasoundImageStorage)
    clean_ultrasound = make_instance(patient_id="P-US2", modality="US", sop_class_uid=UltrasoundImageStorage,
                                     BurnedInAnnotation="NO")
    plain = make_instance(patient_id="P-CT")
    paths = []
    for name, dataset in (("flagged", flagged), ("us", ultrasound), ("us-no", clean_ultrasound), ("ct", plain)):
        path = sources / f"{name}.dcm"
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
    destination = tmp_path / "export"
    report = export_deidentified(paths, destination, options=DeidentificationOptions(project_secret=SECRET))
    excluded = dict(report.excluded)
    assert set(excluded) == {flagged.SOPInstanceUID, ultrasound.SOPInstanceUID}
    assert "BurnedInAnnotation" in excluded[flagged.SOPInstanceUID]
    assert "US" in excluded[ultrasound.SOPInstanceUID]
    assert report.exported_count == 2 and report.failed == []
    written = [pydicom.dcmread(path) for path in destination.rglob("*.dcm")]
    assert len(written) == 2
    assert all(dataset.get("BurnedInAnnotation") != "YES" for dataset in written)
    assert [dataset.Modality for dataset in written].count("US") == 1  # only the one flagged NO


def _deidentified(options: DeidentificationOptions, **extra: object) -> tuple[Dataset, Dataset]:
    original = make_instance(PatientAge="042Y", DeviceSerialNumber="SN-1", StationName="ROOM1",
                             PatientWeight=70.0, **extra)
    result = pydicom.dcmread(io.BytesIO(to_bytes(deidentify(original, options))))
    return original, result


def test_retain_patient_characteristics_keeps_sex_and_age() -> None:
    _, kept = _deidentified(DeidentificationOptions(SECRET, retain_patient_characteristics=True))
    assert (kept.PatientSex, kept.PatientAge, kept.PatientWeight) == ("F", "042Y", 70.0)
    assert "113108" in {item.CodeValue for item in kept.DeidentificationMethodCodeSequence}
    _, removed = _deidentified(DeidentificationOptions(SECRET))
    assert not removed.PatientSex and "PatientAge" not in removed and "PatientWeight" not in removed


def test_retain_uids_keeps_uids() -> None:
    original, result = _deidentified(DeidentificationOptions(SECRET, retain_uids=True))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert result[keyword].value == original[keyword].value
    assert result.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert "113110" in {item.CodeValue for item in result.DeidentificationMethodCodeSequence}
    _, remapped = _deidentified(DeidentificationOptions(SECRET))
    assert remapped.StudyInstanceUID != original.StudyInstanceUID


def test_retain_device_identity_keeps_serial_number_and_station() -> None:
    _, kept = _deidentified(DeidentificationOptions(SECRET, retain_device_identity=True))
    assert (kept.DeviceSerialNumber, kept.StationName) == ("SN-1", "ROOM1")
    _, replaced = _deidentified(DeidentificationOptions(SECRET))
    assert replaced.DeviceSerialNumber != "SN-1" and replaced.StationName != "ROOM1"


def test_without_modified_dates_dates_are_removed() -> None:
    original, result = _deidentified(DeidentificationOptions(SECRET, retain_longitudinal_modified_dates=False),
                                     InstanceCreationDate="20240101")
    assert result.LongitudinalTemporalInformationModified == "REMOVED"
    assert result.StudyDate != original.StudyDate
    assert "StudyDate" in result  # Z: emptied, not removed
    # Table E.1-1 (2026c) gives InstanceCreationDate X/D: Mosaic takes the dummy date, never the original
    assert result.InstanceCreationDate == "19000101"


def test_deidentify_leaves_the_dataset_unchanged() -> None:
    original = make_instance(OtherPatientIDs="X1", InstitutionName="Somewhere")
    original.add_new(0x00091010, "LO", "private")
    before = to_bytes(original)
    deidentify(original, DeidentificationOptions(SECRET))
    assert to_bytes(original) == before


def test_zip_export_holds_the_same_files(tmp_path: Path) -> None:
    sources = synthetic_instances(tmp_path / "sources")
    options = DeidentificationOptions(SECRET)
    folder = export_deidentified(sources, tmp_path / "folder", options=options)
    archive = tmp_path / "export.zip"
    zipped = export_deidentified(sources, archive, options=options, as_zip=True)
    assert zipped.failed == [] and zipped.exported_count == folder.exported_count == len(sources)
    with zipfile.ZipFile(archive) as opened:
        names = sorted(opened.namelist())
        assert names == sorted(item.name for item in folder.exported)
        for name in names:
            assert opened.read(name) == (tmp_path / "folder" / name).read_bytes()
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == ["export.zip"]
    assert zipped.manifest.studies == folder.manifest.studies


def test_existing_export_is_not_overwritten(tmp_path: Path) -> None:
    sources = synthetic_instances(tmp_path / "sources")
    options = DeidentificationOptions(SECRET)
    export_deidentified(sources, tmp_path / "export", options=options)
    again = export_deidentified(sources, tmp_path / "export", options=options)
    assert again.exported_count == 0 and len(again.failed) == len(sources)
    with pytest.raises(FileExistsError):
        export_deidentified(sources, tmp_path / "sources" / "a1.dcm", options=options, as_zip=True)


def test_unreadable_sources_are_reported(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    report = export_deidentified([junk], tmp_path / "export", options=DeidentificationOptions(SECRET))
    assert report.exported_count == 0
    assert report.failed[0][0] == junk and "not a readable DICOM" in report.failed[0][1]


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16"):
        DeidentificationOptions(project_secret=b"short")
