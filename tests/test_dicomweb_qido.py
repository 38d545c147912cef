"""QIDO-RS over HTTP: the same matching as C-FIND, in PS3.18's parameter syntax and DICOM JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from tests.auth_support import auth_headers
from tests.factory import make_bytes

PREFIX = "1.2.826.0.1.3680043.10.1234.8."


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("qido"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0)))
    people = [("Q1", "Smith^John", "20230105", "CT"), ("Q2", "Johnson^Ann", "20230210", "MR"),
              ("Q3", "Jones^Ann=山田^花子", "20240301", "CT"), ("Q4", "Ng^Lee", "20240402", "US")]
    for number, (patient_id, name, date, modality) in enumerate(people, start=1):
        for series in (1, 2):
            for instance in (1, 2, 3):
                mosaic.ingest.store(make_bytes(
                    patient_id=patient_id, patient_name=name, study_date=date, modality=modality,
                    accession=f"A{number}", study_uid=f"{PREFIX}{number}", series_uid=f"{PREFIX}{number}.{series}",
                    sop_uid=f"{PREFIX}{number}.{series}.{instance}", instance_number=instance,
                    charset="ISO_IR 192", SeriesNumber=series, PatientWeight="71.5"), door="test")
    mosaic.start()
    yield mosaic
    mosaic.stop()


def qido(node: Mosaic, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web{path}", params=params, headers=auth_headers(node))


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return sorted(result[tag]["Value"][0] for result in results if "Value" in result.get(tag, {}))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "jo*"}, ["Q2", "Q3"]),
        ({"00100010": "JO*"}, ["Q2", "Q3"]),  # tag numbers as keys, like OHIF's prior-study query
        ({"00100020": "Q4"}, ["Q4"]),
        ({"StudyDate": "20230101-20231231"}, ["Q1", "Q2"]),
        ({"ModalitiesInStudy": "CT"}, ["Q1", "Q3"]),
        ({"AccessionNumber": "A2"}, ["Q2"]),
        ({"StudyInstanceUID": f"{PREFIX}1\\{PREFIX}4"}, ["Q1", "Q4"]),  # a backslash list (PS3.4 C.2.2.2.2)
        ({"PatientName": "john", "fuzzymatching": "true"}, ["Q1", "Q2"]),  # any component starting with it
        ({"PatientName": "john", "fuzzymatching": "false"}, []),
        ({"PatientName": "山田*"}, ["Q3"]),  # ideographic group
    ],
)
def test_study_search(node: Mosaic, params: dict[str, str], expected: list[str]) -> None:
    response = qido(node, "/studies", **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert values(response.json(), "00100020") == expected


def test_default_study_attributes_and_json_types(node: Mosaic) -> None:
    [study] = qido(node, "/studies", PatientID="Q3").json()
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Jones^Ann", "Ideographic": "山田^花子"}]}
    assert study["00201206"] == {"vr": "IS", "Value": [2]}  # NumberOfStudyRelatedSeries as a number
    assert study["00201208"] == {"vr": "IS", "Value": [6]}
    assert study["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert study["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{PREFIX}3")
    assert "00080052" not in study and "00080054" not in study  # no DIMSE-only attributes


def test_includefield_by_name_tag_comma_list_and_all(node: Mosaic) -> None:
    # OHIF sends comma-separated tag lists, percent-encoded
    url = f"http://127.0.0.1:{node.http_port}/dicom-web/studies?PatientID=Q1&includefield=00081030%2C00101030"
    [study] = httpx.get(url, headers=auth_headers(node)).json()
    assert study["00081030"]["Value"] == ["Synthetic study"]  # StudyDescription
    assert study["00101030"] == {"vr": "DS", "Value": [71.5]}  # PatientWeight as a number
    [everything] = qido(node, "/studies", PatientID="Q1", includefield="all").json()
    assert everything["00100030"]["Value"] == ["19700101"] and "7FE00010" not in everything


def test_paging_with_limit_offset_and_total_count(node: Mosaic) -> None:
    first = qido(node, "/studies", limit=3)
    rest = qido(node, "/studies", limit=3, offset=3)
    assert first.headers["X-Total-Count"] == "4" and rest.headers["X-Total-Count"] == "4"
    uids = values(first.json(), "0020000D") + values(rest.json(), "0020000D")
    assert sorted(uids) == [f"{PREFIX}{n}" for n in (1, 2, 3, 4)]


def test_series_and_instance_levels(node: Mosaic) -> None:
    series = qido(node, f"/studies/{PREFIX}2/series").json()
    assert values(series, "0020000E") == [f"{PREFIX}2.1", f"{PREFIX}2.2"]
    assert all(item["00201209"]["Value"] == [3] for item in series)
    assert "00100020" not in series[0]  # under a study, only series attributes
    everywhere = qido(node, "/series", Modality="US").json()
    assert values(everywhere, "00100020") == ["Q4", "Q4"]  # /series also carries the study's attributes
    instances = qido(node, f"/studies/{PREFIX}2/series/{PREFIX}2.2/instances").json()
    assert values(instances, "00080018") == [f"{PREFIX}2.2.{n}" for n in (1, 2, 3)]
    assert values(qido(node, "/instances", SOPInstanceUID=f"{PREFIX}4.1.2").json(), "00200013") == [2]
    assert values(qido(node, f"/studies/{PREFIX}1/instances", InstanceNumber="3").json(), "00080018") == [
        f"{PREFIX}1.1.3", f"{PREFIX}1.2.3"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"NotAnAttribute": "x"}, "NotAnAttribute"),
        ({"includefield": "FFFFFFF1"}, "FFFFFFF1"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"ReferencedStudySequence": "x"}, "sequence"),
    ],
)
def test_bad_parameters_are_400_with_a_message(node: Mosaic, params: dict[str, str], message: str) -> None:
    response = qido(node, "/studies", **params)
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances", f"/studies/{PREFIX}1/series",
                                  f"/studies/{PREFIX}1/instances", f"/studies/{PREFIX}1/series/{PREFIX}1.1/instances"])
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"StudyDate": "notadate"}, ["StudyDate", "notadate"]),
        ({"StudyDate": "20230230"}, ["StudyDate", "20230230"]),  # no such day
        ({"StudyDate": "20231231-20230101"}, ["StudyDate", "20231231-20230101"]),  # a range that ends first
        ({"StudyDate": "2023-"}, ["StudyDate", "2023-"]),
        ({"StudyDate": "-"}, ["StudyDate"]),
        ({"00080020": "yesterday"}, ["StudyDate", "yesterday"]),  # by tag
        ({"StudyTime": "2561"}, ["StudyTime", "2561"]),
        ({"SeriesDate": "2023.01.05"}, ["SeriesDate", "2023.01.05"]),
        ({"AcquisitionDateTime": "soon"}, ["AcquisitionDateTime", "soon"]),  # no column: matched on metadata
        ({"PatientBirthDate": "19700101-x"}, ["PatientBirthDate", "19700101-x"]),
        ({"SOPInstanceUID": f"{PREFIX}1.1.1\\not-a-uid"}, ["SOPInstanceUID", "not-a-uid"]),
        ({"SeriesInstanceUID": f"{PREFIX}*"}, ["SeriesInstanceUID", "wildcards"]),
        ({"SeriesNumber": "one"}, ["SeriesNumber", "one"]),
        ({"PatientWeight": "heavy"}, ["PatientWeight", "heavy"]),
        ({"StudyInstanceUID": f"{PREFIX}1,not-a-uid"}, ["StudyInstanceUID", "not-a-uid"]),
        ({"AccessionNumber": ["A1", "A2"]}, ["AccessionNumber", "twice"]),  # no list matching for LO
        ({"PatientID": "Q1\x00"}, ["PatientID", "control character U+0000"]),  # PostgreSQL would refuse it: a 500
        ({"limit": "1.5"}, ["limit", "1.5"]),
        ({"offset": "ten"}, ["offset", "ten"]),
        ({"includefield": "PatientName,NoSuchKeyword"}, ["NoSuchKeyword"]),
        ({"includefield": "0009ZZZZ"}, ["0009ZZZZ"]),
        ({"NoSuchKeyword": "x"}, ["NoSuchKeyword"]),
    ],
)
def test_invalid_matching_values_are_400_naming_attribute_and_value(node: Mosaic, path: str, params: dict[str, str],
                                                                    named: list[str]) -> None:
    """Not 200 with the filter silently matching nothing (or ignored), at every level, for keys of any level."""
    response = qido(node, path, **params)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert all(word in message for word in named), message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"StudyDate": "20230105"}, ["Q1"]),
        ({"StudyDate": "-20230131"}, ["Q1"]),
        ({"StudyDate": "20240301-"}, ["Q3", "Q4"]),
        ({"StudyDate": "20230105\\20240402"}, ["Q1", "Q4"]),
        ({"StudyTime": "08-12"}, ["Q1", "Q2", "Q3", "Q4"]),
        ({"ModalitiesInStudy": "C*"}, ["Q1", "Q3"]),
        ({"SeriesDate": ""}, ["Q1", "Q2", "Q3", "Q4"]),
        ({"StudyInstanceUID": f"{PREFIX}1,{PREFIX}4"}, ["Q1", "Q4"]),  # PS3.18 8.3.4.1: commas list UIDs too
        ({"StudyInstanceUID": [f"{PREFIX}1", f"{PREFIX}4"]}, ["Q1", "Q4"]),  # the key repeated (dicomweb-client)
        ({"ModalitiesInStudy": "MR,US"}, ["Q2", "Q4"]),
        ({"ModalitiesInStudy": "ct"}, []),  # code strings match case-sensitively (PS3.4 C.2.2.2.1)
    ],
)
def test_valid_dates_ranges_and_codes_still_match(node: Mosaic, params: dict[str, str], expected: list[str]) -> None:
    response = qido(node, "/studies", **params)
    assert response.status_code == 200, response.text
    assert values(response.json(), "00100020") == expected


def test_no_match_is_an_empty_array(node: Mosaic) -> None:
    response = qido(node, "/studies", PatientID="NOBODY")
    assert response.status_code == 200 and response.json() == []
    assert response.headers["X-Total-Count"] == "0"


def test_large_answers_are_gzipped_when_asked(node: Mosaic) -> None:
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
                         headers={"Accept-Encoding": "gzip", **auth_headers(node)})
    assert response.headers.get("content-encoding") == "gzip"
    assert len(response.json()) == 4


def test_modality_asked_of_a_study_lists_every_modality(node: Mosaic) -> None:
    # OHIF's study list asks studies for 00080060; a study of several modalities answers with all of them
    [study] = qido(node, "/studies", PatientID="Q1", includefield="00080060").json()
    assert study["00080060"] == {"vr": "CS", "Value": ["CT"]}
