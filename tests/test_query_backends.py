"""C-FIND matching gives the same answers on SQLite and on PostgreSQL (one code path, two engines)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from mosaic.app import Mosaic
from mosaic.config import IndexSettings, Settings
from tests.factory import make_bytes

PREFIX = "1.2.826.0.1.3680043.10.1234.5."


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    url = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    node = Mosaic(Settings(data_dir=tmp_path_factory.mktemp(request.param), index=IndexSettings(url=url)))
    people = [("P1", "Smith^John", "20230105", "CT", "ACC_1"), ("P2", "smithers^Waylon", "20230210", "MR", "ACC%2"),
              ("P3", "Jones^Ann", "20240301", "CT", "ACC_3"), ("P4", "Müller^Jürgen", "20240402", "US", "X-4")]
    for number, (patient_id, name, date, modality, accession) in enumerate(people, start=1):
        for series in (1, 2):
            node.ingest.store(make_bytes(
                patient_id=patient_id, patient_name=name, study_date=date, accession=accession,
                modality=modality if series == 1 else "SR", study_uid=f"{PREFIX}{number}",
                series_uid=f"{PREFIX}{number}.{series}", sop_uid=f"{PREFIX}{number}.{series}.1",
                charset="ISO_IR 192", study_time=f"{8 + number:02d}3000"), door="test")
    yield node
    node.stop()


def find(node: Mosaic, level: str = "STUDY", root: str = "STUDY", **keys: str) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.PatientID = ""
    if level != "PATIENT":
        identifier.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return list(node.query.c_find(identifier, root=root))


def patient_ids(responses: list[Dataset]) -> list[str]:
    return sorted(str(response.PatientID) for response in responses)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "SMITH*"}, ["P1", "P2"]),  # wildcard, case-insensitive
        ({"PatientName": "smith^john"}, ["P1"]),  # single value, case-insensitive
        ({"PatientName": "J?nes*"}, ["P3"]),
        ({"PatientName": "müller*"}, ["P4"]),  # non-ASCII, upper-cased
        ({"StudyDate": "20230101-20231231"}, ["P1", "P2"]),
        ({"StudyDate": "-20230131"}, ["P1"]),
        ({"StudyDate": "20240301-"}, ["P3", "P4"]),
        ({"StudyTime": "1000-1159"}, ["P2", "P3"]),
        ({"AccessionNumber": "ACC%2"}, ["P2"]),  # SQL wildcard characters are literal
        ({"AccessionNumber": "ACC_*"}, ["P1", "P3"]),
        ({"ModalitiesInStudy": "MR"}, ["P2"]),
        ({"ModalitiesInStudy": "US\\MR"}, ["P2", "P4"]),
        ({"StudyInstanceUID": f"{PREFIX}1\\{PREFIX}3"}, ["P1", "P3"]),  # list of UIDs
        ({"PatientName": "*"}, ["P1", "P2", "P3", "P4"]),
        ({"PatientName": "Nobody"}, []),
    ],
)
def test_study_matching_is_the_same_on_every_engine(archive: Mosaic, keys: dict[str, str],
                                                    expected: list[str]) -> None:
    assert patient_ids(find(archive, **keys)) == expected


def test_computed_attributes_and_levels(archive: Mosaic) -> None:
    [study] = find(archive, PatientID="P2", ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                   NumberOfStudyRelatedInstances="")
    assert sorted(study.ModalitiesInStudy) == ["MR", "SR"]
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 2)
    series = find(archive, level="SERIES", StudyInstanceUID=f"{PREFIX}2", Modality="", SeriesInstanceUID="")
    assert sorted(str(item.Modality) for item in series) == ["MR", "SR"]
    [patient] = find(archive, level="PATIENT", root="PATIENT", PatientID="P4", PatientName="",
                     NumberOfPatientRelatedStudies="")
    assert str(patient.PatientName) == "Müller^Jürgen" and patient.NumberOfPatientRelatedStudies == 1
    images = find(archive, level="IMAGE", StudyInstanceUID=f"{PREFIX}3", SeriesInstanceUID=f"{PREFIX}3.2",
                  SOPInstanceUID="")
    assert [str(item.SOPInstanceUID) for item in images] == [f"{PREFIX}3.2.1"]
