"""C-FIND and QIDO-RS matching give the same answers on SQLite and on PostgreSQL (one code path, two engines)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, inspect

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, IndexSettings, Settings
from mosaic.index.database import MIGRATIONS
from mosaic.index.query import Scope
from tests.auth_support import auth_headers
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
    return list(node.query.c_find(identifier, root=root, scope=Scope.everything()))


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


# --- QIDO-RS over HTTP on both engines: fuzzy matching of person names ----------------------------------------

FUZZY = "1.2.826.0.1.3680043.10.1234.52."
FUZZY_PEOPLE = [("F1", "Müller^Hans", "Weiß^Doktor"), ("F2", "Muller^Anne", "White^Ann"),
                ("F3", "Straße^Jörg", ""), ("F4", "Øster^Ægir", ""), ("F5", "Łukasz^Żaneta", ""),
                ("F6", "Núñez^José", ""), ("F7", "Yamada^Taro=山田^太郎=ヤマダ^タロウ", "")]


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    """A running node (HTTP on 127.0.0.1) on each engine, with names accents and case tell apart."""
    url = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    node = Mosaic(Settings(data_dir=tmp_path_factory.mktemp(f"fuzzy-{request.param}"), index=IndexSettings(url=url),
                           http=HttpSettings(port=0), dicom=DicomSettings(port=0)))
    for number, (patient_id, name, referring) in enumerate(FUZZY_PEOPLE, start=1):
        node.ingest.store(make_bytes(patient_id=patient_id, patient_name=name, study_uid=f"{FUZZY}{number}",
                                     series_uid=f"{FUZZY}{number}.1", sop_uid=f"{FUZZY}{number}.1.1",
                                     charset="ISO_IR 192", ReferringPhysicianName=referring), door="test")
    node.start()
    yield node
    node.stop()


def qido_ids(node: Mosaic, path: str = "/studies", **params: str) -> list[str]:
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web{path}", params=params,
                         headers=auth_headers(node), timeout=30)
    assert response.status_code == 200, response.text
    return sorted(item["00100020"]["Value"][0] for item in response.json())


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "muller"}, ["F1", "F2"]),  # ü is u, case does not matter
        ({"PatientName": "MÜLLER"}, ["F1", "F2"]),
        ({"PatientName": "hans"}, ["F1"]),  # any component it begins
        ({"PatientName": "muller^ha"}, ["F1"]),
        ({"PatientName": "mul*"}, ["F1", "F2"]),  # wildcards: folded too
        ({"PatientName": "strasse"}, ["F3"]),  # ß is ss (NFKD keeps ß whole)
        ({"PatientName": "jorg"}, ["F3"]),
        ({"PatientName": "oster"}, ["F4"]),  # Ø, Æ, Ł: not decomposed by NFKD either
        ({"PatientName": "aegir"}, ["F4"]),
        ({"PatientName": "lukasz"}, ["F5"]),
        ({"PatientName": "zaneta"}, ["F5"]),
        ({"PatientName": "nunez^jose"}, ["F6"]),
        ({"PatientName": "山田"}, ["F7"]),  # other component groups still match
        ({"PatientName": "ﾔﾏﾀﾞ"}, ["F7"]),  # half-width katakana (NFKD), the voiced mark kept…
        ({"PatientName": "ヤマタ"}, []),  # …so タ is not ダ
        ({"ReferringPhysicianName": "weiss"}, ["F1"]),
        ({"ReferringPhysicianName": "whi"}, ["F2"]),
    ],
)
def test_fuzzy_matching_ignores_case_and_accents(served: Mosaic, params: dict[str, str],
                                                 expected: list[str]) -> None:
    assert qido_ids(served, **params, fuzzymatching="true") == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "muller"}, []),  # single value matching: the whole name
        ({"PatientName": "MULLER*"}, ["F2"]),  # case-insensitive (as documented) but not accent-insensitive
        ({"PatientName": "müller*"}, ["F1"]),
        ({"PatientName": "nunez*"}, []),
        ({"PatientName": "oster*"}, []),
        ({"ReferringPhysicianName": "Weiss*"}, ["F1"]),  # upper case of ß is SS (str.upper, as before)
    ],
)
def test_matching_without_fuzzymatching_keeps_accents(served: Mosaic, params: dict[str, str],
                                                      expected: list[str]) -> None:
    assert qido_ids(served, **params) == expected
    assert qido_ids(served, **params, fuzzymatching="false") == expected


def test_fuzzy_matching_at_series_and_instance_level(served: Mosaic) -> None:
    assert qido_ids(served, "/series", PatientName="muller", fuzzymatching="true") == ["F1", "F2"]
    assert qido_ids(served, "/instances", PatientName="OSTER", fuzzymatching="true") == ["F4"]


def test_a_nul_in_a_value_is_400_not_a_server_error(served: Mosaic) -> None:
    response = httpx.get(f"http://127.0.0.1:{served.http_port}/dicom-web/studies", params={"PatientID": "F1\x00"},
                         headers=auth_headers(served), timeout=30)
    assert response.status_code == 400 and "PatientID" in response.json()["error"]


def test_names_indexed_before_the_upgrade_are_folded(tmp_path: Path) -> None:
    """Migration 0007 fills the folded names of an index written before it."""
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0))
    node = Mosaic(settings)
    node.ingest.store(make_bytes(patient_id="OLD", patient_name="Gößmann^Zoë", study_uid=f"{FUZZY}99",
                                 series_uid=f"{FUZZY}99.1", sop_uid=f"{FUZZY}99.1.1", charset="ISO_IR 192",
                                 ReferringPhysicianName="Ærø^Bjørn"), door="test")
    url = node.database.url
    node.stop()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "0006")  # the index as the previous release left it
    engine = create_engine(url)
    with engine.connect() as connection:
        assert "PatientNameFuzzy" not in {column["name"] for column in inspect(connection).get_columns("patient")}
    engine.dispose()
    node = Mosaic(settings)
    node.start()
    try:
        assert qido_ids(node, PatientName="gossmann^zoe", fuzzymatching="true") == ["OLD"]
        assert qido_ids(node, ReferringPhysicianName="aero^bjorn", fuzzymatching="true") == ["OLD"]
    finally:
        node.stop()
