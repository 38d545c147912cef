"""C-FIND responses encoded straight from the index are byte-for-byte what pydicom would write."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from mosaic.app import Mosaic
from mosaic.config import Settings
from mosaic.dimse.query import encoded_responses
from mosaic.index.query import Scope
from tests.factory import make_bytes

PREFIX = "1.2.826.0.1.3680043.10.1234.6."


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("encoding")))
    for number, name in enumerate(["Doe^Jane", "Müller^Jürgen", "Yamada^Tarou=山田^太郎", "Odd^Len"], start=1):
        mosaic.ingest.store(make_bytes(patient_id=f"E{number}", patient_name=name, study_uid=f"{PREFIX}{number}",
                                       series_uid=f"{PREFIX}{number}.1", sop_uid=f"{PREFIX}{number}.1.1",
                                       charset="ISO_IR 192", PatientWeight="71.25", SeriesNumber=number,
                                       ProtocolName="Thorax"), door="test")
    yield mosaic
    mosaic.stop()


def identifier(level: str, **keys: str) -> Dataset:
    dataset = Dataset()
    dataset.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    ("root", "query"),
    [
        ("PATIENT", identifier("PATIENT", PatientID="", PatientName="", PatientBirthDate="",
                               NumberOfPatientRelatedStudies="")),
        ("STUDY", identifier("STUDY", StudyInstanceUID="", PatientName="", PatientID="", StudyDate="",
                             ModalitiesInStudy="", NumberOfStudyRelatedInstances="", PatientWeight="",
                             AccessionNumber="", ReferringPhysicianName="")),
        ("STUDY", identifier("SERIES", StudyInstanceUID=f"{PREFIX}2", SeriesInstanceUID="", Modality="",
                             SeriesNumber="", NumberOfSeriesRelatedInstances="")),
        ("STUDY", identifier("IMAGE", SeriesInstanceUID=f"{PREFIX}3.1", SOPInstanceUID="", SOPClassUID="",
                             InstanceNumber="", Rows="", Columns="", NumberOfFrames="")),
        ("STUDY", identifier("IMAGE", SOPInstanceUID="", ProtocolName="")),  # a metadata-only key
    ],
    ids=["patient", "study", "series", "image", "metadata-key"],
)
def test_fast_responses_equal_pydicom_encoding(node: Mosaic, root: str, query: Dataset, implicit: bool) -> None:
    fast = list(encoded_responses(node.query, query, root=root, implicit=implicit, scope=Scope.everything()))
    reference = [encode(response, implicit, True)
                 for response in node.query.c_find(query, root=root, scope=Scope.everything())]
    assert fast and fast == reference
