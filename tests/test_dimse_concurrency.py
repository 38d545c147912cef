"""Simultaneous storescu associations filling one new patient/study: every C-STORE succeeds, nothing is
created twice and the computed counts are exact, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from mosaic.app import Mosaic
from mosaic.core.events import EventType
from mosaic.index.schema import Event, Instance
from tests.dimse_support import TOOL_TIMEOUT, counts, findscu, peer_args, start_node
from tests.factory import PREFIX, make_instance, to_bytes

pytestmark = pytest.mark.dcmtk

ASSOCIATIONS = 8
INSTANCES_PER_ASSOCIATION = 8


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mosaic]:
    index_url = request.getfixturevalue("fresh_postgres_url") if request.param == "postgres" else None
    mosaic = start_node(tmp_path / "mosaic", index_url=index_url)
    yield mosaic
    mosaic.stop()


def test_simultaneous_associations_storing_one_new_study_all_succeed_with_exact_counts(
        node: Mosaic, tmp_path: Path, dcmtk: dict[str, str]) -> None:
    study = generate_uid(prefix=PREFIX)
    series = [generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)]
    batches: list[list[Path]] = []
    for association in range(ASSOCIATIONS):
        folder = tmp_path / f"batch-{association}"
        folder.mkdir()
        batch = []
        for number in range(INSTANCES_PER_ASSOCIATION):
            # every association sends into both series, so they race to create patient, study and series
            path = folder / f"{number}.dcm"
            path.write_bytes(to_bytes(make_instance(
                patient_id="CONCURRENT", patient_name="Race^Condition", study_uid=study,
                series_uid=series[number % 2], modality="CT" if number % 2 else "MR",
                instance_number=association * INSTANCES_PER_ASSOCIATION + number + 1)))
            batch.append(path)
        batches.append(batch)
    processes = [subprocess.Popen(["storescu", *peer_args(node), *map(str, batch)], env=dcmtk,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for batch in batches]
    outputs = [process.communicate(timeout=TOOL_TIMEOUT)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * ASSOCIATIONS, outputs

    total = ASSOCIATIONS * INSTANCES_PER_ASSOCIATION
    assert counts(node) == {"Patient": 1, "Study": 1, "Series": 2, "Instance": total}
    with node.database.session() as session:
        assert session.scalar(select(func.count(func.distinct(Instance.blob_key)))) == total
        events = dict(session.execute(select(Event.type, func.count()).group_by(Event.type)).all())
    # one outbox event per creation, none lost and none doubled by a retried transaction
    assert events == {EventType.PATIENT_CREATED: 1, EventType.STUDY_CREATED: 1, EventType.SERIES_CREATED: 2,
                      EventType.INSTANCE_STORED: total}
    [patient] = findscu(node, {"QueryRetrieveLevel": "PATIENT", "PatientID": "CONCURRENT",
                               "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedSeries": "",
                               "NumberOfPatientRelatedInstances": ""},
                         tmp_path / "patient", env=dcmtk, model="-P")
    assert (int(patient.NumberOfPatientRelatedStudies), int(patient.NumberOfPatientRelatedSeries),
            int(patient.NumberOfPatientRelatedInstances)) == (1, 2, total)
    [found_study] = findscu(node, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study,
                                   "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
                                   "ModalitiesInStudy": ""}, tmp_path / "study", env=dcmtk)
    assert int(found_study.NumberOfStudyRelatedSeries) == 2
    assert int(found_study.NumberOfStudyRelatedInstances) == total
    assert sorted(found_study.ModalitiesInStudy) == ["CT", "MR"]
    found_series = findscu(node, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study,
                                  "SeriesInstanceUID": "", "NumberOfSeriesRelatedInstances": ""},
                           tmp_path / "series", env=dcmtk)
    assert [int(item.NumberOfSeriesRelatedInstances) for item in found_series] == [total // 2] * 2
    images = findscu(node, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study, "SOPInstanceUID": ""},
                     tmp_path / "images", env=dcmtk)
    assert len({image.SOPInstanceUID for image in images}) == total
