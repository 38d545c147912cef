"""An EHR's FHIR client library reads Mosaic: SMART's python ``fhirclient`` (R4 models) searches patients and
their imaging studies, follows the searchset's paging and reads a study by id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRServer

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from mosaic.services.origin import IngestOrigin
from tests.auth_support import auth_headers
from tests.factory import make_bytes

LOCALHOST = "127.0.0.1"
PREFIX = "1.2.826.0.1.3680043.10.1234.94"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0)))
    for number in range(1, 4):
        mosaic.ingest.store(make_bytes(patient_id="MRN9", issuer="GENHOSP", patient_name="Nuñez^Inés",
                                       study_uid=f"{PREFIX}.{number}", series_uid=f"{PREFIX}.{number}.1",
                                       sop_uid=f"{PREFIX}.{number}.1.1", modality="MR", accession=f"ACC9{number}",
                                       study_date=f"202{number}0101"), IngestOrigin(door="test"))
    mosaic.start()
    yield mosaic
    mosaic.stop()


def test_fhirclient_finds_the_patient_and_pages_through_its_studies(node: Mosaic) -> None:
    server = FHIRServer(None, base_uri=f"http://{LOCALHOST}:{node.http_port}/fhir/")
    server.session.headers.update(auth_headers(node))
    [patient] = Patient.where(struct={"identifier": "MRN9"}).perform_resources(server)
    assert patient.name[0].family == "Nuñez" and patient.name[0].given == ["Inés"]
    bundle = ImagingStudy.where(struct={"patient": f"Patient/{patient.id}", "_count": "2"}).perform(server)
    assert bundle.total == 3 and len(bundle.entry) == 2
    following = next(link.url for link in bundle.link if link.relation == "next")
    rest = server.request_json(following.split("/fhir/", 1)[1])
    ids = {entry.resource.id for entry in bundle.entry} | {entry["resource"]["id"] for entry in rest["entry"]}
    assert ids == {f"{PREFIX}.{number}" for number in range(1, 4)}
    study = ImagingStudy.read(f"{PREFIX}.2", server)
    assert study.identifier[0].value == f"urn:oid:{PREFIX}.2" and study.modality[0].code == "MR"
    assert study.subject.reference == f"Patient/{patient.id}"
