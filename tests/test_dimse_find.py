"""C-FIND matching (PS3.4 C.2.2.2) and the Patient Root / Study Root models, queried with dcmtk findscu.

A small synthetic archive, stored with storescu:

====== ============ ============= ============ ============= ==================== =========
patient PatientID   name          study        date / time   series (instances)   accession
====== ============ ============= ============ ============= ==================== =========
1      PID-1        Doe^John      chest        20230105 0830 CT (3), SR (1)       ACC-1
1      PID-1        Doe^John      knee         20230620 1430 MR (2)               ACC-2
2      PID-2        Doe^Jane      head         20240101 1015 CT (1)               ACC-3
3      SAME/HOSP-A  Smith^Anna    abdomen      20221231 2359 US (1)               XYZ-4
4      SAME/HOSP-B  Smythe^Anne   spine        20220101 0000 CT (2)               XYZ-5
====== ============ ============= ============ ============= ==================== =========
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    MRImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from mosaic.app import Mosaic
from tests.dimse_support import findscu, identifier, peer_args, pynetdicom_find, run_tool, start_node
from tests.factory import PREFIX, make_instance

pytestmark = pytest.mark.dcmtk


@dataclass
class Archive:
    node: Mosaic
    work: Path
    env: dict[str, str]
    studies: dict[str, str] = field(default_factory=dict)
    """Study name → StudyInstanceUID."""
    series: dict[str, str] = field(default_factory=dict)
    """'<study>/<modality>' → SeriesInstanceUID."""
    instances: dict[str, list[str]] = field(default_factory=dict)
    """'<study>/<modality>' → SOPInstanceUIDs."""
    _queries: Iterator[int] = field(default_factory=itertools.count)

    def find(self, keys: dict[str, str], model: str = "-S") -> list[Dataset]:
        return findscu(self.node, keys, self.work / f"find-{next(self._queries)}", env=self.env, model=model)


STUDIES = [
    # name, patient id, issuer, patient name, date, time, accession, description,
    # [(modality, sop class, instances)]
    ("chest", "PID-1", None, "Doe^John", "20230105", "083000", "ACC-1", "CT Chest",
     [("CT", CTImageStorage, 3), ("SR", BasicTextSRStorage, 1)]),
    ("knee", "PID-1", None, "Doe^John", "20230620", "143015", "ACC-2", "MR Knee",
     [("MR", MRImageStorage, 2)]),
    ("head", "PID-2", None, "Doe^Jane", "20240101", "101500", "ACC-3", "CT Head",
     [("CT", CTImageStorage, 1)]),
    ("abdomen", "SAME", "HOSP-A", "Smith^Anna", "20221231", "235959", "XYZ-4", "US Abdomen",
     [("US", UltrasoundImageStorage, 1)]),
    ("spine", "SAME", "HOSP-B", "Smythe^Anne", "20220101", "000000", "XYZ-5", "CT Spine",
     [("CT", CTImageStorage, 2)]),
]


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            dcmtk: dict[str, str]) -> Iterator[Archive]:
    """The synthetic archive, on SQLite and on PostgreSQL: matching must not depend on the engine."""
    index_url = server = database = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        database = server.create_database()
        index_url = server.url(database)
    work = tmp_path_factory.mktemp(f"find-{request.param}")
    node = start_node(work / "mosaic", index_url=index_url)
    archive = Archive(node, work, dcmtk)
    files: list[Path] = []
    for name, patient_id, issuer, patient_name, date, time, accession, description, series in STUDIES:
        study_uid = archive.studies[name] = generate_uid(prefix=PREFIX)
        for number, (modality, sop_class, count) in enumerate(series, start=1):
            series_uid = archive.series[f"{name}/{modality}"] = generate_uid(prefix=PREFIX)
            uids = archive.instances[f"{name}/{modality}"] = []
            for instance_number in range(1, count + 1):
                sop_uid = generate_uid(prefix=PREFIX)
                uids.append(sop_uid)
                dataset = make_instance(
                    patient_id=patient_id, issuer=issuer, patient_name=patient_name, study_uid=study_uid,
                    series_uid=series_uid, sop_uid=sop_uid, sop_class_uid=sop_class, modality=modality,
                    study_date=date, study_time=time, accession=accession, instance_number=instance_number,
                    StudyDescription=description, SeriesNumber=number,
                    rows=0 if modality == "SR" else 8, columns=0 if modality == "SR" else 8,
                )
                path = work / "input" / f"{sop_uid}.dcm"
                path.parent.mkdir(exist_ok=True)
                dataset.save_as(path, enforce_file_format=True)
                files.append(path)
    try:
        result = run_tool("storescu", *peer_args(node), *files, env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        yield archive
    finally:
        node.stop()
        if server is not None:
            server.drop_database(database)


def values(responses: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(response.get(keyword, "")) for response in responses)


# --- single value, wildcard, range, list, universal (PS3.4 C.2.2.2) -----------------------------------------


def test_single_value_matching_on_patient_id(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "PatientID": "PID-1", "StudyInstanceUID": ""})
    assert values(responses, "StudyInstanceUID") == sorted(
        [archive.studies["chest"], archive.studies["knee"]])


def test_single_value_matching_on_accession_number_is_exact(archive: Archive) -> None:
    assert len(archive.find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC-1"})) == 1
    assert archive.find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC"}) == []


def test_single_value_matching_on_a_date(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "StudyDate": "20230105", "StudyInstanceUID": ""})
    assert values(responses, "StudyInstanceUID") == [archive.studies["chest"]]


def test_wildcard_on_patient_name_is_case_insensitive(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "PATIENT", "PatientName": "doe*", "PatientID": ""},
                             model="-P")
    assert values(responses, "PatientName") == ["Doe^Jane", "Doe^John"]
    assert values(responses, "PatientID") == ["PID-1", "PID-2"]


def test_question_mark_wildcard_matches_one_character(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "PATIENT", "PatientName": "Sm?th^*", "PatientID": ""},
                             model="-P")
    assert values(responses, "PatientName") == ["Smith^Anna"]
    responses = archive.find({"QueryRetrieveLevel": "PATIENT", "PatientName": "*^ann?"}, model="-P")
    assert values(responses, "PatientName") == ["Smith^Anna", "Smythe^Anne"]


def test_wildcard_on_other_attributes(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "XYZ-*",
                              "StudyDescription": ""})
    assert values(responses, "StudyDescription") == ["CT Spine", "US Abdomen"]
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "StudyDescription": "CT*",
                              "AccessionNumber": ""})
    assert values(responses, "AccessionNumber") == ["ACC-1", "ACC-3", "XYZ-5"]
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC-?"})
    assert len(responses) == 3


def test_date_range_matching(archive: Archive) -> None:
    def studies(date_range: str) -> list[str]:
        return values(archive.find({"QueryRetrieveLevel": "STUDY", "StudyDate": date_range,
                                    "AccessionNumber": ""}), "AccessionNumber")

    assert studies("20230101-20231231") == ["ACC-1", "ACC-2"]
    assert studies("-20221231") == ["XYZ-4", "XYZ-5"]
    assert studies("20240101-") == ["ACC-3"]
    assert studies("20221231-20230105") == ["ACC-1", "XYZ-4"]


def test_time_range_matching(archive: Archive) -> None:
    def studies(time_range: str) -> list[str]:
        return values(archive.find({"QueryRetrieveLevel": "STUDY", "StudyTime": time_range,
                                    "AccessionNumber": ""}), "AccessionNumber")

    assert studies("080000-090000") == ["ACC-1"]
    assert studies("1400-1500") == ["ACC-2"]
    assert studies("-0100") == ["XYZ-5"]
    assert studies("2300-") == ["XYZ-4"]


def test_list_of_uid_matching(archive: Archive) -> None:
    wanted = [archive.studies["chest"], archive.studies["spine"]]
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "\\".join(wanted)})
    assert values(responses, "StudyInstanceUID") == sorted(wanted)


def test_universal_matching_returns_the_attribute_for_every_entity(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "StudyDescription": "",
                              "ReferringPhysicianName": "", "PatientName": "", "AccessionNumber": ""})
    assert len(responses) == len(STUDIES)
    assert values(responses, "StudyDescription") == sorted(study[7] for study in STUDIES)
    for response in responses:
        assert "ReferringPhysicianName" in response
        assert str(response.ReferringPhysicianName) == "Ref^Doctor"


def test_universal_matching_of_an_absent_attribute_returns_it_empty(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC-1",
                              "NameOfPhysiciansReadingStudy": "", "InstitutionName": ""})
    assert len(responses) == 1
    assert "NameOfPhysiciansReadingStudy" in responses[0] and not responses[0].NameOfPhysiciansReadingStudy
    assert "InstitutionName" in responses[0] and not responses[0].InstitutionName


# --- information models and levels --------------------------------------------------------------------------


def test_patient_root_patient_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "PATIENT", "PatientID": "PID-1", "PatientName": "",
                              "PatientBirthDate": "", "NumberOfPatientRelatedStudies": ""}, model="-P")
    assert len(responses) == 1
    patient = responses[0]
    assert patient.QueryRetrieveLevel == "PATIENT"
    assert str(patient.PatientName) == "Doe^John"
    assert patient.PatientBirthDate == "19700101"
    assert int(patient.NumberOfPatientRelatedStudies) == 2


def test_patient_root_study_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "PatientID": "PID-1", "StudyInstanceUID": "",
                              "StudyDate": ""}, model="-P")
    assert values(responses, "StudyDate") == ["20230105", "20230620"]
    assert all(response.PatientID == "PID-1" for response in responses)


def test_patient_root_series_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "SERIES", "PatientID": "PID-1",
                              "StudyInstanceUID": archive.studies["chest"], "SeriesInstanceUID": "",
                              "Modality": "", "NumberOfSeriesRelatedInstances": ""}, model="-P")
    by_modality = {response.Modality: response for response in responses}
    assert set(by_modality) == {"CT", "SR"}
    assert by_modality["CT"].SeriesInstanceUID == archive.series["chest/CT"]
    assert int(by_modality["CT"].NumberOfSeriesRelatedInstances) == 3
    assert int(by_modality["SR"].NumberOfSeriesRelatedInstances) == 1


def test_patient_root_image_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "IMAGE", "PatientID": "PID-1",
                              "StudyInstanceUID": archive.studies["chest"],
                              "SeriesInstanceUID": archive.series["chest/CT"], "SOPInstanceUID": "",
                              "InstanceNumber": "", "SOPClassUID": ""}, model="-P")
    assert values(responses, "SOPInstanceUID") == sorted(archive.instances["chest/CT"])
    assert values(responses, "InstanceNumber") == ["1", "2", "3"]
    assert {response.SOPClassUID for response in responses} == {CTImageStorage}


def test_study_root_study_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": archive.studies["knee"],
                              "PatientName": "", "PatientID": "", "StudyDescription": ""})
    assert len(responses) == 1
    assert str(responses[0].PatientName) == "Doe^John"
    assert responses[0].StudyDescription == "MR Knee"


def test_study_root_series_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": archive.studies["spine"],
                              "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": ""})
    assert len(responses) == 1
    assert responses[0].SeriesInstanceUID == archive.series["spine/CT"]
    assert responses[0].StudyInstanceUID == archive.studies["spine"]


def test_study_root_series_level_matches_on_modality(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "SERIES", "Modality": "CT", "SeriesInstanceUID": ""})
    assert values(responses, "SeriesInstanceUID") == sorted(
        [archive.series["chest/CT"], archive.series["head/CT"], archive.series["spine/CT"]])


def test_study_root_image_level(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": archive.studies["knee"],
                              "SeriesInstanceUID": archive.series["knee/MR"], "SOPInstanceUID": "",
                              "SOPClassUID": ""})
    assert values(responses, "SOPInstanceUID") == sorted(archive.instances["knee/MR"])
    assert {response.SOPClassUID for response in responses} == {MRImageStorage}


def test_study_root_has_no_patient_level(archive: Archive) -> None:
    assert archive.find({"QueryRetrieveLevel": "PATIENT", "PatientID": "PID-1"}) == []
    query = identifier(QueryRetrieveLevel="PATIENT", PatientID="PID-1")
    statuses, responses = pynetdicom_find(archive.node, query)
    assert (statuses, responses) == ([0xA900], [])  # Identifier does not match SOP Class


# --- computed attributes (PS3.4 C.3) ------------------------------------------------------------------------


def test_study_computed_attributes_are_returned(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": archive.studies["chest"],
                              "NumberOfStudyRelatedInstances": "", "NumberOfStudyRelatedSeries": "",
                              "ModalitiesInStudy": ""})
    assert len(responses) == 1
    study = responses[0]
    assert int(study.NumberOfStudyRelatedInstances) == 4
    assert int(study.NumberOfStudyRelatedSeries) == 2
    assert sorted(study.ModalitiesInStudy) == ["CT", "SR"]


def test_modalities_in_study_matching(archive: Archive) -> None:
    def studies(modalities: str) -> list[str]:
        return values(archive.find({"QueryRetrieveLevel": "STUDY", "ModalitiesInStudy": modalities,
                                    "AccessionNumber": ""}), "AccessionNumber")

    assert studies("SR") == ["ACC-1"]
    assert studies("CT") == ["ACC-1", "ACC-3", "XYZ-5"]
    assert studies("MR\\US") == ["ACC-2", "XYZ-4"]


def test_number_of_patient_related_studies(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "PATIENT", "PatientID": "", "IssuerOfPatientID": "",
                              "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedInstances": ""},
                             model="-P")
    by_patient = {(response.PatientID, response.get("IssuerOfPatientID", "")): response
                  for response in responses}
    assert {key: int(response.NumberOfPatientRelatedStudies) for key, response in by_patient.items()} == {
        ("PID-1", ""): 2, ("PID-2", ""): 1, ("SAME", "HOSP-A"): 1, ("SAME", "HOSP-B"): 1}
    assert int(by_patient[("PID-1", "")].NumberOfPatientRelatedInstances) == 6


# --- patient identity ---------------------------------------------------------------------------------------


def test_same_patient_id_with_two_issuers_is_two_patients(archive: Archive) -> None:
    responses = archive.find({"QueryRetrieveLevel": "PATIENT", "PatientID": "SAME", "IssuerOfPatientID": "",
                              "PatientName": ""}, model="-P")
    assert sorted((response.IssuerOfPatientID, str(response.PatientName)) for response in responses) == [
        ("HOSP-A", "Smith^Anna"), ("HOSP-B", "Smythe^Anne")]
    responses = archive.find({"QueryRetrieveLevel": "STUDY", "PatientID": "SAME",
                              "IssuerOfPatientID": "HOSP-B", "AccessionNumber": ""})
    assert values(responses, "AccessionNumber") == ["XYZ-5"]


def test_wildcard_matching_of_other_attributes_is_case_sensitive(archive: Archive) -> None:
    assert archive.find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "acc-*"}) == []
    assert archive.find({"QueryRetrieveLevel": "STUDY", "StudyDescription": "ct*"}) == []


# --- invalid matching values (PS3.4 C.2.2.2.5, C.4.1.1.4) -------------------------------------------------------


def _find_statuses(node: Mosaic, query: Dataset) -> list[tuple[int, str]]:
    """(Status, ErrorComment) of each C-FIND response, with a pynetdicom SCU."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate("127.0.0.1", node.dicom_port, ae_title="MOSAIC")
    assert association.is_established
    answers: list[tuple[int, str]] = []
    try:
        for status, _identifier in association.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            assert status, "no C-FIND response (aborted or timed out)"
            answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        association.release()
    return answers


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "notadate"}, "notadate"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "20231301-"}, "20231301-"),
        ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "", "StudyTime": "2599"}, "2599"),
        ({"QueryRetrieveLevel": "SERIES", "SeriesDate": "20230105-20230101", "SeriesInstanceUID": ""},
         "20230105-20230101"),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3\\not-a-uid"}, "not-a-uid"),
    ],
)
def test_invalid_matching_values_fail_with_a_comment(archive: Archive, keys: dict[str, str], named: str) -> None:
    """Not "success, nothing matched": 0xA900 (Identifier does not match SOP Class) naming attribute and value."""
    query = identifier(**keys)
    query.PatientID = ""
    [(status, comment)] = _find_statuses(archive.node, query)  # no pending response before the failure
    assert status == 0xA900
    keyword = next(keyword for keyword in keys if keyword not in ("QueryRetrieveLevel", "PatientID") and keys[keyword])
    assert keyword in comment and named in comment, comment


def test_valid_date_ranges_still_match(archive: Archive) -> None:
    query = identifier(QueryRetrieveLevel="STUDY", StudyDate="20230101-20231231", AccessionNumber="")
    statuses, responses = pynetdicom_find(archive.node, query)
    assert statuses[-1] == 0x0000
    assert sorted(str(response.AccessionNumber) for response in responses) == ["ACC-1", "ACC-2"]
