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
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, MediaStorageDirectoryStorage, UltrasoundImageStorage, generate_uid

from mosaic.export.writers import ExportReport, encode, export_deidentified
from mosaic.governance.deid import (
    BASIC_ACTION_CODES,
    OPTION_ACTION_CODES,
    Action,
    DeidentificationOptions,
    PatientKey,
    Pseudonym,
    UidMap,
    basic_action,
    deidentify,
    resolve_action,
    rule_for,
    shift_date,
    shift_datetime,
)
from mosaic.governance.deid_table import EDITION, ROWS, Row
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


# --- PS3.15 Table E.1-1, row by row -------------------------------------------------------------------------------

BASIC_ONLY = {"retain_longitudinal_modified_dates": False, "clean_descriptors": False}
"""Options that switch Mosaic's defaults off: the Basic Profile alone."""
OPTION_COLUMN = {"retain_uids": "uids", "retain_device_identity": "device",
                 "retain_institution_identity": "institution", "retain_patient_characteristics": "patient",
                 "retain_longitudinal_full_dates": "full_dates", "retain_longitudinal_modified_dates": "modified_dates",
                 "clean_descriptors": "descriptors"}
"""The options Mosaic offers → their column of Table E.1-1 (written here, not taken from the module)."""
IDENTIFYING_TEXT = "DOE JANE"
"""Every text value of the test data set names the patient, so no C (clean) may keep it."""
SOP_UID = PREFIX + "77.1"
NESTED_NAME = "Doe^Jane^Nested"


def concrete_tag(row: Row) -> int:
    """One tag a row governs: its own, (5000,3000) for (50xx,xxxx), (0009,1010) for the private row."""
    if row.tag == "(gggg,eeee)":
        return 0x00091010
    group, element = row.tag[1:5].replace("x", "0"), row.tag[6:10]
    return int(group + ("3000" if element == "xxxx" else element), 16)


def vr_of(tag: int, row: Row) -> str:
    """pydicom's VR (the first of "OB or OW"); for attributes newer than pydicom's dictionary, from the name."""
    if tag == 0x00091010:
        return "LO"
    if dictionary_has_tag(tag):
        return dictionary_VR(tag).split(" or ")[0]
    if row.name.endswith("Sequence"):
        return "SQ"
    if row.name.endswith("DateTime"):
        return "DT"
    return "UR" if row.name.endswith(("URI", "Reference")) else "LO"


def original_value(vr: str, index: int) -> object:
    """A valid value of ``vr`` that differs from Mosaic's dummy and empty values."""
    if vr == "SQ":
        item = Dataset()
        item.PatientName = NESTED_NAME
        item.ReferencedSOPInstanceUID = SOP_UID
        return Sequence([item])
    if vr == "UI":
        return f"{PREFIX}77.{index + 2}"
    by_vr: dict[str, object] = {
        "AE": "ORIGAE", "AS": "042Y", "CS": "ORIGCODE", "DA": "20240105", "DS": "7.5", "DT": "20240105101112",
        "IS": "7", "PN": "Doe^Jane", "SH": IDENTIFYING_TEXT, "TM": "101112", "UR": "http://example.org/doe",
        "FD": 7.5, "FL": 7.5, "SL": 7, "SS": 7, "SV": 7, "UL": 7, "US": 7, "UV": 7,
    }
    if vr in by_vr:
        return by_vr[vr]
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"
    return f"{IDENTIFYING_TEXT} 0001"  # LO, LT, ST, UC, UT


def every_attribute() -> tuple[Dataset, dict[int, Row]]:
    """A data set carrying one attribute of every row of the table (file meta rows in its file meta)."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    rows: dict[int, Row] = {}
    for index, row in enumerate(ROWS):
        tag = concrete_tag(row)
        vr = vr_of(tag, row)
        value = SOP_UID if tag in (0x00080018, 0x00020003) else original_value(vr, index)
        target = dataset.file_meta if tag >> 16 == 0x0002 else dataset
        target.add(DataElement(tag, vr, value))
        rows[tag] = row
    dataset.add_new(0x00090010, "LO", "ACME 1.0")  # the private creator of (0009,1010)
    dataset.SOPClassUID = CTImageStorage
    return dataset, rows


def expected_code(row: Row, enabled: set[str]) -> str:
    """PS3.15 E.3: an enabled option's column replaces the Basic Profile action (dates first, then K, C, X)."""
    if "retain_longitudinal_full_dates" in enabled and row.full_dates:
        return row.full_dates
    if "retain_longitudinal_modified_dates" in enabled and row.modified_dates:
        return "shift" if row.modified_dates == "C" else row.modified_dates
    codes = {getattr(row, OPTION_COLUMN[option]) for option in enabled if "dates" not in option}
    return next((code for code in "KCX" if code in codes), row.basic)


def is_empty(value: object) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, list | Sequence) and len(value) == 0)


def check_row(row: Row, code: str, before: DataElement, after: DataElement | None, context: dict[str, object]) -> None:
    """``after`` is what ``code`` must make of ``before``; the message names the row."""
    where = f"{row.tag} {row.name} ({code})"
    sequence = before.VR == "SQ"
    if code == "C":  # every value names the patient: cleaning must do what the Basic Profile does
        if sequence:  # a cleaned sequence keeps its items, themselves de-identified
            code = "K"
        else:
            check_row(row, row.basic, before, after, context)
            return
    if code == "X":
        assert after is None, f"{where}: still present as {after}"
        return
    assert after is not None, f"{where}: removed"
    new_uid = context["uid_map"]
    assert callable(new_uid)
    if code in ("Z", "X/Z"):
        assert is_empty(after.value), f"{where}: {after.value!r} is not empty"
    elif code in ("D", "X/D", "Z/D", "X/Z/D"):
        if sequence:
            assert len(after.value) == 0, f"{where}: a dummy sequence is empty"
        elif before.VR == "UI":
            assert after.value == new_uid(before.value), f"{where}: {after.value} is not the mapped UID"
        else:
            assert not is_empty(after.value) and after.value != before.value, f"{where}: {after.value!r}"
    elif code == "U":
        assert after.value == new_uid(before.value) != before.value, f"{where}: {after.value}"
    elif code == "shift":
        if before.VR == "DA":
            assert after.value == shift_date(before.value, context["offset"]), f"{where}: {after.value}"  # type: ignore[arg-type]
        elif before.VR == "DT":
            assert after.value == shift_datetime(before.value, context["offset"]), f"{where}: {after.value}"  # type: ignore[arg-type]
        else:
            assert after.value == before.value, f"{where}: a time of day is kept, got {after.value!r}"
    elif code in ("K", "X/Z/U*"):
        if sequence:
            assert len(after.value) == 1, f"{where}: the item is gone"
            item = after.value[0]
            assert str(item.get("PatientName", "")) != NESTED_NAME, f"{where}: the nested name survived"
            assert item.ReferencedSOPInstanceUID == context["sop_uid"], f"{where}: the nested UID is not mapped"
        else:
            assert code == "K" and after.value == before.value, f"{where}: {after.value!r} != {before.value!r}"
    else:
        pytest.fail(f"{where}: no check for action {code!r}")


RUNS = [pytest.param(set(), id="basic"), pytest.param({"retain_longitudinal_modified_dates", "clean_descriptors"},
                                                      id="defaults")]
RUNS += [pytest.param({option}, id=option) for option in OPTION_COLUMN]


def test_every_row_of_the_table_has_a_rule() -> None:
    assert EDITION == "2026c" and len(ROWS) >= 652
    option_sets = [DeidentificationOptions(SECRET, **BASIC_ONLY)]
    option_sets += [DeidentificationOptions(SECRET, **{**BASIC_ONLY, option: True}) for option in OPTION_COLUMN]
    for row in ROWS:
        assert rule_for(concrete_tag(row)) is row, f"{row.tag} {row.name}: no rule applies it"
        assert row.basic in BASIC_ACTION_CODES, f"{row.tag} {row.name}: unknown action {row.basic!r}"
        for column in Row._fields[3:]:
            assert getattr(row, column) in OPTION_ACTION_CODES, f"{row.tag} {row.name}: {column} {getattr(row, column)}"
        for options in option_sets:
            assert isinstance(resolve_action(row, options), Action)
    with pytest.raises(ValueError, match="action code"):
        basic_action("X/Q")
    assert set(OPTION_COLUMN) <= set(DeidentificationOptions.__dataclass_fields__)


@pytest.mark.parametrize("enabled", RUNS)
def test_every_attribute_of_the_table_gets_its_action(enabled: set[str]) -> None:
    options = DeidentificationOptions(SECRET, **{**BASIC_ONLY, **dict.fromkeys(enabled, True)})
    original, rows = every_attribute()
    result = deidentify(original, options)
    uid_map = UidMap(SECRET)
    sop_uid = SOP_UID if "retain_uids" in enabled else uid_map(SOP_UID)
    context: dict[str, object] = {"uid_map": uid_map, "sop_uid": sop_uid,
                                  "offset": Pseudonym.derive(PatientKey.of(original), SECRET).date_offset_days}
    for tag, row in rows.items():
        code = expected_code(row, enabled)
        where = f"{row.tag} {row.name}"
        if tag == 0x00100010:
            assert str(result.PatientName).startswith("ANON^"), where  # Z, then the pseudonym
        elif tag == 0x00100020:
            assert str(result.PatientID).startswith("ANON-"), where  # Z/D: the pseudonym is the dummy
        elif tag >> 16 == 0x0002:
            assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID == sop_uid, where
        else:
            check_row(row, code, original[tag], result.get(tag), context)
    assert not any(element.tag.is_private for element in result.iterall())
    for tag in [element.tag for element in result if element.tag.group == 0x0000]:
        del result[tag]  # command elements (PS3.7) are in the table but a Part 10 file cannot hold them
    reread = pydicom.dcmread(io.BytesIO(encode(result)))  # the result is a valid Part 10 file
    assert reread.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in reread.DeidentificationMethodCodeSequence}
    expected = {"113100"} | {CODE_OF_OPTION[option] for option in enabled}
    assert codes == expected


CODE_OF_OPTION = {"clean_descriptors": "113105", "retain_longitudinal_full_dates": "113106",
                  "retain_longitudinal_modified_dates": "113107", "retain_patient_characteristics": "113108",
                  "retain_device_identity": "113109", "retain_uids": "113110", "retain_institution_identity": "113112"}
"""CID 7050 codes of the options (PS3.16)."""


def test_attributes_the_hand_typed_table_missed_are_no_longer_kept(tmp_path: Path) -> None:
    """Table E.1-1 rows the old copy lacked came out unchanged; through a real export they are now removed."""
    missed = {"StationAETitle": "CTAE01", "RequestingAE": "RISAE", "IssuerOfClinicalTrialSubjectID": "SPONSOR-X",
              "TreatmentSites": "Left breast of Jane Doe", "InterpretationID": "INT-4711",
              "PyramidDescription": "Slide of Doe"}
    source = tmp_path / "source.dcm"
    source.write_bytes(to_bytes(make_instance(**missed)))
    for name, options in (("default", DeidentificationOptions(SECRET)),
                          ("device", DeidentificationOptions(SECRET, retain_device_identity=True))):
        report = export_deidentified([source], tmp_path / name, options=options)
        assert report.exported_count == 1 and report.failed == []
        result = pydicom.dcmread(tmp_path / name / report.exported[0].name)
        for keyword, value in missed.items():
            assert keyword not in result, f"{keyword} came out as {result.get(keyword)!r} (was {value!r})"


def test_full_dates_keep_dates_and_exclude_modified_dates() -> None:
    with pytest.raises(ValueError, match="one of the two"):
        DeidentificationOptions(SECRET, retain_longitudinal_full_dates=True)
    original, result = _deidentified(DeidentificationOptions(SECRET, retain_longitudinal_full_dates=True,
                                                             retain_longitudinal_modified_dates=False),
                                     InstanceCreationDate="20240101")
    assert (result.StudyDate, result.StudyTime, result.InstanceCreationDate) == (
        original.StudyDate, original.StudyTime, "20240101")
    assert result.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_retain_institution_identity_keeps_the_institution() -> None:
    _, kept = _deidentified(DeidentificationOptions(SECRET, retain_institution_identity=True),
                            InstitutionName="General Hospital", InstitutionAddress="1 Main St")
    assert (kept.InstitutionName, kept.InstitutionAddress) == ("General Hospital", "1 Main St")
    _, removed = _deidentified(DeidentificationOptions(SECRET), InstitutionName="General Hospital")
    assert removed.InstitutionName != "General Hospital"


def test_photographs_and_video_of_the_patient_are_excluded_unless_they_say_nobody_is_recognisable() -> None:
    """A clinical photo says BurnedInAnnotation NO (no text in it), yet shows the patient: a de-identified export
    or share must leave it out, unless RecognizableVisualFeatures says NO."""
    from pydicom.dataset import Dataset

    from mosaic.governance.deid import burned_in_annotation_reason

    for sop_class in ("1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.1.1"):
        photo = Dataset()
        photo.SOPClassUID, photo.Modality, photo.BurnedInAnnotation = sop_class, "XC", "NO"
        assert burned_in_annotation_reason(photo) is not None
        photo.RecognizableVisualFeatures = "NO"
        assert burned_in_annotation_reason(photo) is None
    ct = Dataset()
    ct.SOPClassUID, ct.Modality, ct.BurnedInAnnotation, ct.RecognizableVisualFeatures = \
        "1.2.840.10008.5.1.4.1.1.2", "CT", "NO", "YES"  # a 3D surface rendering of a face
    assert burned_in_annotation_reason(ct) is not None
