"""The one ingest path: identity, duplicates, bad input, two-phase blob writes and the outbox.

Runs against each index and blob backend: SQLite + folder (the embedded default), PostgreSQL +
folder, and SQLite + S3 (a local moto server), with the same code path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mosaic.app import Mosaic
from mosaic.config import DuplicatePolicy, IndexSettings, IngestSettings, Settings, StorageSettings
from mosaic.core.errors import DuplicateInstance, InvalidObject
from mosaic.index.query import Scope
from mosaic.index.schema import Event, Instance, InstanceVersion, Patient, Series, Study
from mosaic.services.ingest import IngestOutcome
from tests.factory import make_bytes, make_instance, to_bytes

BACKENDS = ["sqlite+folder", "postgres+folder", "sqlite+s3"]


@pytest.fixture(params=BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mosaic]:
    index_url = None
    storage = StorageSettings()
    if request.param.startswith("postgres"):
        index_url = request.getfixturevalue("fresh_postgres_url")
    if request.param.endswith("s3"):
        storage = request.getfixturevalue("s3_storage_settings")
    node = Mosaic(Settings(data_dir=tmp_path / "data", index=IndexSettings(url=index_url), storage=storage))
    yield node
    node.stop()


def count(node: Mosaic, model: type) -> int:
    with node.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def blob_keys(node: Mosaic) -> list[str]:
    return sorted(node.blobs.iter_keys())


def test_stored_instance_is_indexed_with_its_checksum_and_bytes(archive: Mosaic) -> None:
    data = make_bytes(patient_id="P1", accession="A1")
    result = archive.ingest.store(data, door="test")
    assert result.outcome == IngestOutcome.STORED
    with archive.database.session() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.sha256 == result.sha256
        assert instance.size == len(data)
        with archive.blobs.open(instance.blob_key) as stream:
            assert stream.read() == data  # stored exactly as received
        study = session.scalars(select(Study)).one()
        assert study.AccessionNumber == "A1"
        assert study.ModalitiesInStudy == "\\CT\\"
        assert study.NumberOfStudyRelatedInstances == 1
        metadata = json.loads(instance.metadata_json)
        assert metadata["00100020"]["Value"] == ["P1"]
        assert metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}


def test_same_bytes_twice_is_success_and_stored_once(archive: Mosaic) -> None:
    data = make_bytes()
    archive.ingest.store(data, door="test")
    again = archive.ingest.store(data, door="test")
    assert again.outcome == IngestOutcome.ALREADY_STORED
    assert count(archive, Instance) == 1
    assert len(blob_keys(archive)) == 1


def test_same_uid_with_different_bytes_is_rejected_by_default(archive: Mosaic) -> None:
    first = make_instance(patient_name="Doe^Jane")
    archive.ingest.store(to_bytes(first), door="test")
    first.PatientName = "Changed^Name"
    with pytest.raises(DuplicateInstance) as raised:
        archive.ingest.store(to_bytes(first), door="test")
    assert raised.value.status == 0x0111
    assert first.SOPInstanceUID in str(raised.value)
    assert len(blob_keys(archive)) == 1
    with archive.database.session() as session:
        assert session.scalars(select(Patient.PatientName)).one() == "Doe^Jane"


def test_keep_new_version_policy_keeps_the_old_version_in_history(archive: Mosaic) -> None:
    archive.ingest.settings = IngestSettings(duplicate_policy=DuplicatePolicy.KEEP_NEW_VERSION)
    dataset = make_instance()
    old = archive.ingest.store(to_bytes(dataset), door="test")
    dataset.SeriesDescription = "corrected"
    new = archive.ingest.store(to_bytes(dataset), door="test")
    assert new.outcome == IngestOutcome.REPLACED
    with archive.database.session() as session:
        instance = session.scalars(select(Instance)).one()
        history = session.scalars(select(InstanceVersion)).one()
        assert (instance.version, instance.sha256) == (2, new.sha256)
        assert (history.version, history.sha256) == (1, old.sha256)
        assert archive.blobs.exists(history.blob_key)  # the original is never rewritten or dropped
        assert session.scalar(select(Series.NumberOfSeriesRelatedInstances)) == 1
        types = session.scalars(select(Event.type).order_by(Event.seq)).all()
    assert types[-1] == "InstanceReplaced"


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda data: b"this is not a DICOM file at all" * 20, "not a DICOM file"),
        (lambda data: data[: len(data) - 100], "truncated"),
        (lambda data: data[:200], "empty"),
    ],
    ids=["not-dicom", "truncated", "cut-in-meta"],
)
def test_bad_bytes_are_rejected_with_a_reason_and_nothing_is_stored(archive: Mosaic, mangle, reason) -> None:
    with pytest.raises(InvalidObject) as raised:
        archive.ingest.store(mangle(make_bytes()), door="test")
    assert reason in str(raised.value)
    assert count(archive, Instance) == 0
    assert blob_keys(archive) == []


@pytest.mark.parametrize(
    ("uid", "problem"),
    [("", "missing"), ("1.2.03.4", "not a UID"), ("1.2.abc", "not a UID"), ("1." + "2" * 70, "at most 64")],
)
def test_missing_or_malformed_uids_are_rejected(archive: Mosaic, uid: str, problem: str) -> None:
    dataset = make_instance()
    dataset.SeriesInstanceUID = uid
    with pytest.raises(InvalidObject) as raised:
        archive.ingest.store(to_bytes(dataset), door="test")
    assert "SeriesInstanceUID" in str(raised.value) and problem in str(raised.value)
    assert count(archive, Series) == 0
    assert blob_keys(archive) == []


def test_sop_class_that_differs_from_the_negotiated_one_is_rejected(archive: Mosaic) -> None:
    with pytest.raises(InvalidObject) as raised:
        archive.ingest.store(make_bytes(), door="dimse", expected_sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    assert raised.value.status == 0xA900
    assert count(archive, Instance) == 0


def test_same_patient_id_from_two_issuers_is_two_patients(archive: Mosaic) -> None:
    archive.ingest.store(make_bytes(patient_id="123", issuer="HOSPITAL_A"), door="test")
    archive.ingest.store(make_bytes(patient_id="123", issuer="HOSPITAL_B"), door="test")
    archive.ingest.store(make_bytes(patient_id="123", issuer="HOSPITAL_A"), door="test")
    with archive.database.session() as session:
        patients = session.execute(select(Patient.IssuerOfPatientID, Patient.NumberOfPatientRelatedStudies)
                                   .order_by(Patient.IssuerOfPatientID)).all()
    assert [tuple(row) for row in patients] == [("HOSPITAL_A", 2), ("HOSPITAL_B", 1)]


def test_blob_is_revoked_when_the_index_commit_fails(archive: Mosaic, monkeypatch: pytest.MonkeyPatch) -> None:
    # fault injection: the index transaction fails after the blob was written
    from mosaic.services import ingest as ingest_module

    def failing_write(self: object) -> None:
        raise RuntimeError("index unavailable")

    monkeypatch.setattr(ingest_module._IndexWriter, "write", failing_write)
    with pytest.raises(RuntimeError):
        archive.ingest.store(make_bytes(), door="test")
    assert blob_keys(archive) == []
    assert count(archive, Instance) == 0


def test_every_index_change_writes_an_ordered_event(archive: Mosaic) -> None:
    study_uid = "1.2.826.0.1.3680043.10.1234.77"
    for number in (1, 2):
        archive.ingest.store(make_bytes(study_uid=study_uid, series_uid=f"{study_uid}.{number}",
                                        instance_number=number), door="test")
    page = archive.changes.page(since=0, limit=3)
    assert [change["type"] for change in page.changes] == ["PatientCreated", "StudyCreated", "SeriesCreated"]
    assert not page.done
    rest = archive.changes.page(since=page.last, limit=100)
    assert [change["type"] for change in rest.changes] == ["InstanceStored", "SeriesCreated", "InstanceStored"]
    assert rest.done
    assert [change["seq"] for change in page.changes + rest.changes] == sorted(
        change["seq"] for change in page.changes + rest.changes)
    assert all(change["StudyInstanceUID"] == study_uid for change in rest.changes)


def test_queries_read_metadata_from_the_index_not_the_blobs(archive: Mosaic) -> None:
    from pydicom.dataset import Dataset

    archive.ingest.store(make_bytes(patient_id="META1", BodyPartExamined="CHEST", ProtocolName="Thorax"),
                         door="test")
    for key in blob_keys(archive):
        archive.blobs.delete(key)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.PatientID = "META1"
    identifier.ProtocolName = ""
    identifier.SOPInstanceUID = ""
    [response] = list(archive.query.c_find(identifier, root="PATIENT", scope=Scope.everything()))
    assert response.ProtocolName == "Thorax"


def test_stored_original_does_not_change_when_the_source_file_changes(archive: Mosaic, tmp_path: Path) -> None:
    source = tmp_path / "from-user.dcm"
    data = make_bytes()
    source.write_bytes(data)
    result = archive.ingest.store(source, door="import")
    with open(source, "r+b") as stream:  # the user edits their own copy in place afterwards
        stream.seek(len(data) - 1)
        stream.write(b"\xff")
    with archive.database.session() as session:
        key = session.scalars(select(Instance.blob_key)).one()
    with archive.blobs.open(key) as stream:
        assert stream.read() == data
    assert result.sha256 == __import__("hashlib").sha256(data).hexdigest()


def test_concurrent_series_of_different_modalities_all_reach_the_study(archive: Mosaic) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

    study_uid = "1.2.826.0.1.3680043.10.1234.55"
    archive.ingest.store(make_bytes(study_uid=study_uid, series_uid=f"{study_uid}.0"), door="test")
    kinds = [("MR", MRImageStorage), ("OT", SecondaryCaptureImageStorage), ("PT", "1.2.840.10008.5.1.4.1.1.128"),
             ("US", "1.2.840.10008.5.1.4.1.1.6.1"), ("SR", "1.2.840.10008.5.1.4.1.1.88.11"),
             ("XA", "1.2.840.10008.5.1.4.1.1.12.1")]
    payloads = [make_bytes(study_uid=study_uid, series_uid=f"{study_uid}.{number}", modality=modality,
                           sop_class_uid=sop_class) for number, (modality, sop_class) in enumerate(kinds, start=1)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda data: archive.ingest.store(data, door="test"), payloads))
    with archive.database.session() as session:
        study = session.scalars(select(Study)).one()
    assert sorted(filter(None, study.ModalitiesInStudy.split("\\"))) == sorted(["CT", *[kind for kind, _ in kinds]])
    assert len(list(filter(None, study.SOPClassesInStudy.split("\\")))) == 7
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (7, 7)
