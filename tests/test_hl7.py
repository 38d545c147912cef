"""HL7 v2 over MLLP: ADT creates and updates patients, each message answered on its connection.

Real sockets on both sides: python-hl7's own MLLP client (`hl7.client.MLLPClient`) sends messages shaped like the
HL7 v2.5.1 chapter 3 examples; raw sockets send the framing faults and the other character sets as bytes. What
a user notices is checked the way they would: the ACK's MSA/ERR, a PATIENT-level C-FIND (pynetdicom, Patient
Root) and the administrators' patient history.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import hl7
import httpx
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, Hl7Sender, Hl7Settings, HttpSettings, Settings
from mosaic.index.query import Scope
from tests.auth_support import auth_headers
from tests.dimse_support import c_get_study
from tests.factory import make_bytes

LOCALHOST = "127.0.0.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    settings = Settings(
        data_dir=tmp_path, http=HttpSettings(port=0),
        dicom=DicomSettings(port=0, peers=[DicomPeer(ae_title="FINDER", host=LOCALHOST, port=11112)]),
        hl7=Hl7Settings(port=0, senders=[
            Hl7Sender(application="EPIC", facility="GENHOSP", may_send=["ADT"], issuer="GENHOSP"),
            Hl7Sender(application="RIS", may_send=["ORM"]),
        ]))
    mosaic = Mosaic(settings)
    mosaic.start()
    yield mosaic
    mosaic.stop()


def adt(event: str, pid: str, *, control: str = "MSG00001", sender: str = "EPIC^GENHOSP", version: str = "2.5.1",
        charset: str = "") -> str:
    application, _, facility = sender.partition("^")
    msh = (f"MSH|^~\\&|{application}|{facility}|MOSAIC|RADIOLOGY|20261207120000||ADT^{event}^ADT_A01|{control}|P|"
           f"{version}|||AL|NE||{charset}")
    return "\r".join([msh.rstrip("|"), f"EVN|{event}|20261207120000", pid, "PV1|1|O"]) + "\r"


def send(node: Mosaic, *messages: str | bytes) -> list[hl7.Message]:
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:
        return [hl7.parse(client.send_message(message).decode("latin-1")) for message in messages]


def msa(answer: hl7.Message) -> tuple[str, str]:
    return str(answer["MSA.F1"]), str(answer["MSA.F2"])


def err(answer: hl7.Message) -> tuple[str, str]:
    """(ERR-2 location, ERR-3 code)."""
    segment = answer.segment("ERR")
    return str(segment[2]), str(segment[3][0][0])


def patient_c_find(node: Mosaic, **keys: str) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = ""
    identifier.PatientBirthDate = ""
    identifier.PatientSex = ""
    identifier.IssuerOfPatientID = ""
    identifier.PatientID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=node.settings.dicom.ae_title)
    assert association.is_established
    try:
        return [found for status, found in association.send_c_find(
            identifier, PatientRootQueryRetrieveInformationModelFind) if status and status.Status in (0xFF00, 0xFF01)]
    finally:
        association.release()


def history(node: Mosaic, patient_id: str, issuer: str) -> httpx.Response:
    return httpx.get(f"http://{LOCALHOST}:{node.http_port}/api/patients/history", headers=auth_headers(node),
                     params={"PatientID": patient_id, "IssuerOfPatientID": issuer}, timeout=30)


def test_an_admission_creates_a_patient_before_any_image_and_an_update_changes_it(node: Mosaic) -> None:
    [created] = send(node, adt("A01", "PID|1||MRN4711^^^GENHOSP^MR||Everywoman^Eve^E^^Dr||19620320|F"))
    assert msa(created) == ("AA", "MSG00001")
    assert str(created.segment("MSH")[9]) == "ACK^A01^ACK" and str(created.segment("MSH")[5]) == "EPIC"
    [found] = patient_c_find(node, PatientID="MRN4711")
    assert (str(found.PatientName), found.PatientBirthDate, found.PatientSex, found.IssuerOfPatientID) == (
        "Everywoman^Eve^E^Dr", "19620320", "F", "GENHOSP")

    # an empty field leaves the value; "" clears it (HL7 2.5.3); several messages on one connection
    renamed, cleared = send(node, adt("A08", "PID|1||MRN4711^^^GENHOSP^MR||Everywoman^Eva||", control="MSG00002"),
                            adt("A08", "|".join(["PID", "1", "", "MRN4711^^^GENHOSP^MR", "", "", "", "", '""']),
                                control="MSG00003"))
    assert msa(renamed) == ("AA", "MSG00002") and msa(cleared) == ("AA", "MSG00003")
    [found] = patient_c_find(node, PatientID="MRN4711")
    assert (str(found.PatientName), found.PatientBirthDate, found.PatientSex) == ("Everywoman^Eva", "19620320", "")

    record = history(node, "MRN4711", "GENHOSP").json()
    assert [change["action"] for change in record["history"]] == ["created", "updated", "updated"]
    assert record["history"][1]["before"]["PatientName"] == "Everywoman^Eve^E^Dr"
    assert record["history"][1]["after"]["PatientName"] == "Everywoman^Eva"
    assert record["history"][1]["source"] == "hl7:EPIC^GENHOSP"
    assert record["history"][1]["reference"] == "ADT^A08 MSG00002"


def test_an_update_shows_at_once_in_the_studies_already_stored(node: Mosaic) -> None:
    node.ingest.store(make_bytes(patient_id="MRN5", issuer="GENHOSP", patient_name="Old^Name",
                                 study_uid="1.2.826.0.1.3680043.10.1234.91"), door="test")
    [answer] = send(node, adt("A08", "PID|1||MRN5^^^GENHOSP||New^Name||19700101|M"))
    assert msa(answer)[0] == "AA"
    scoped = Scope(facilities=frozenset({""}))  # a restricted caller sees the patient through its studies
    from mosaic.index.query import Query

    for scope in (Scope.everything(), scoped):
        [match] = node.query.find(Query("STUDY", [], ["PatientName"]), door="test", scope=scope)
        assert str(node.query.response(match, Query("STUDY", [], ["PatientName"]), root="STUDY").PatientName) \
            == "New^Name"


def test_names_are_decoded_by_msh_18(node: Mosaic) -> None:
    latin = adt("A04", "PID|1||MRN-L^^^GENHOSP||Müller^Jürgen||19500101|M", charset="8859/1").encode("latin-1")
    japanese = adt("A04", "PID|1||MRN-J^^^GENHOSP||Yamada^Tarou^^^^^^A~山田^太郎^^^^^^I||19500101|M",
                   charset="~ISO IR87").encode("iso2022_jp")
    utf8 = adt("A04", "PID|1||MRN-U^^^GENHOSP||Ωmega^Zoë||19500101|F", charset="UNICODE UTF-8").encode("utf-8")
    default = adt("A04", "PID|1||MRN-D^^^GENHOSP||Ærø^Åse||19500101|F").encode("latin-1")  # no MSH-18
    answers = send(node, latin, japanese, utf8, default)
    assert [msa(answer)[0] for answer in answers] == ["AA"] * 4
    names = {str(found.PatientID): str(found.PatientName) for found in patient_c_find(node)}
    assert names["MRN-L"] == "Müller^Jürgen"
    assert names["MRN-J"] == "Yamada^Tarou=山田^太郎"
    assert names["MRN-U"] == "Ωmega^Zoë"
    assert names["MRN-D"] == "Ærø^Åse"


def test_the_sender_is_configured_or_refused_and_audited(node: Mosaic) -> None:
    [stranger] = send(node, adt("A01", "PID|1||MRN9^^^GENHOSP||Doe^John", sender="OTHER^ELSEWHERE"))
    [wrong_type] = send(node, adt("A01", "PID|1||MRN9^^^GENHOSP||Doe^John", sender="RIS^X"))
    assert msa(stranger) == ("AR", "MSG00001") and err(stranger) == ("MSH^1^3", "207")
    assert "not a configured HL7 sender" in str(stranger["ERR.F8"])
    assert msa(wrong_type)[0] == "AR" and err(wrong_type)[1] == "200"
    assert patient_c_find(node, PatientID="MRN9") == []
    node.audit.flush()
    records, _total = node.audit.search(action="modify")
    denied = [record for record in records if record.outcome == "denied"]
    assert {record.actor for record in denied} >= {"hl7:OTHER^ELSEWHERE", "hl7:RIS^X"}


@pytest.mark.parametrize(("message", "ack", "location", "code"), [
    (adt("A01", "PID|1||^^^GENHOSP||Doe^John"), "AE", "PID^1^3^1^1", "101"),  # no patient identifier
    (adt("A01", "PID|1||MRN7^^^GENHOSP||Doe^John||1962-3"), "AE", "PID^1^7^1^1", "102"),  # not a date
    ("MSH|^~\\&|EPIC|GENHOSP|MOSAIC||20261207||ADT^A01|C1|P|2.5.1\rEVN|A01\r", "AE", "PID", "100"),  # no PID
    (adt("A02", "PID|1||MRN7^^^GENHOSP||Doe^John"), "AR", "MSH^1^9^1^2", "201"),  # a transfer: not applied
    (adt("A01", "PID|1||MRN7^^^GENHOSP||Doe^John", version="3.0"), "AR", "MSH^1^12", "203"),
    (adt("A01", "PID|1||MRN7^^^GENHOSP||Doe^John", charset="KLINGON"), "AR", "MSH^1^18", "207"),
])
def test_a_message_that_cannot_be_applied_changes_nothing(node: Mosaic, message: str, ack: str, location: str,
                                                          code: str) -> None:
    [answer] = send(node, message)
    assert msa(answer)[0] == ack
    assert err(answer) == (location, code), str(answer)
    assert patient_c_find(node, PatientID="MRN7") == []


def test_higher_versions_are_accepted(node: Mosaic) -> None:
    [answer] = send(node, adt("A28", "PID|1||MRN28^^^GENHOSP||Newer^Version", version="2.9"))
    assert msa(answer)[0] == "AA"
    assert [str(found.PatientName) for found in patient_c_find(node, PatientID="MRN28")] == ["Newer^Version"]


def _raw_exchange(node: Mosaic, data: bytes, *, close_after: bool = True) -> bytes:
    with socket.create_connection((LOCALHOST, node.hl7_port), timeout=10) as connection:
        connection.sendall(data)
        if close_after:
            connection.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return received
            received += chunk


def test_framing_faults_are_survived_and_apply_nothing_half(node: Mosaic) -> None:
    good = adt("A01", "PID|1||MRN-F^^^GENHOSP||Framed^Fine").encode("latin-1")
    cut = adt("A01", "PID|1||MRN-CUT^^^GENHOSP||Cut^Off", control="CUT").encode("latin-1")
    # bytes outside a frame are skipped, the framed message after them answered; a frame cut off is not applied
    received = _raw_exchange(node, b"garbage\r\n" + b"\x0b" + good + b"\x1c\x0d" + b"\x0b" + cut[:40])
    assert received.startswith(b"\x0b") and received.endswith(b"\x1c\x0d")
    assert msa(hl7.parse(received[1:-2].decode("latin-1")))[0] == "AA"
    assert patient_c_find(node, PatientID="MRN-CUT") == []
    assert [str(found.PatientName) for found in patient_c_find(node, PatientID="MRN-F")] == ["Framed^Fine"]
    # the listener still serves the next connection
    [answer] = send(node, adt("A08", "PID|1||MRN-F^^^GENHOSP||Framed^Again"))
    assert msa(answer)[0] == "AA"


def test_a_frame_larger_than_allowed_closes_the_connection(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                        hl7=Hl7Settings(port=0, max_message_bytes=2048,
                                        senders=[Hl7Sender(application="EPIC", may_send=["ADT"])]))
    node = Mosaic(settings)
    node.start(http=False)
    try:
        huge = adt("A01", "PID|1||BIG^^^X||" + "A" * 5000).encode("latin-1")
        # closed by Mosaic (a connection left open would time the client's read out after 10 s)
        received = _raw_exchange(node, b"\x0b" + huge + b"\x1c\x0d", close_after=False)
        assert received == b""
        with node.database.session() as session:
            from sqlalchemy import select

            from mosaic.index.schema import Patient
            assert session.scalars(select(Patient.PatientID)).all() == []
    finally:
        node.stop()


def merge(event: str, pid: str, mrg: str, *, control: str = "MRG001") -> str:
    msh = f"MSH|^~\\&|EPIC|GENHOSP|MOSAIC|RADIOLOGY|20261207130000||ADT^{event}^ADT_A39|{control}|P|2.5.1"
    return "\r".join([msh, f"EVN|{event}|20261207130000", pid, mrg]) + "\r"


def studies_of(node: Mosaic, patient_id: str) -> dict[str, str]:
    """StudyInstanceUID → PatientName of the studies a STUDY-level query for ``patient_id`` finds."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    identifier.PatientName = ""
    identifier.StudyInstanceUID = ""
    return {str(found.StudyInstanceUID): str(found.PatientName)
            for found in node.query.c_find(identifier, root="STUDY", scope=Scope.everything())}


def test_a_merge_moves_the_studies_and_the_old_identity_becomes_an_alias(node: Mosaic) -> None:
    prefix = "1.2.826.0.1.3680043.10.1234.93"
    for number in (1, 2):
        node.ingest.store(make_bytes(patient_id="TEMP77", issuer="GENHOSP", patient_name="Unknown^Trauma",
                                     study_uid=f"{prefix}.{number}", series_uid=f"{prefix}.{number}.1",
                                     sop_uid=f"{prefix}.{number}.1.1"), door="test")
    [admitted] = send(node, adt("A01", "PID|1||MRN100^^^GENHOSP||Real^Name||19800101|F"))
    [merged] = send(node, merge("A40", "PID|1||MRN100^^^GENHOSP||Real^Name||19800101|F",
                                "MRG|TEMP77^^^GENHOSP"))
    assert msa(admitted)[0] == "AA" and msa(merged) == ("AA", "MRG001")

    assert patient_c_find(node, PatientID="TEMP77") == []  # the old identity is no patient any more
    [survivor] = patient_c_find(node, PatientID="MRN100", NumberOfPatientRelatedStudies="")
    assert int(survivor.NumberOfPatientRelatedStudies) == 2
    assert studies_of(node, "MRN100") == {f"{prefix}.1": "Real^Name", f"{prefix}.2": "Real^Name"}

    # what still arrives under the old identity is filed under the survivor
    node.ingest.store(make_bytes(patient_id="TEMP77", issuer="GENHOSP", patient_name="Unknown^Trauma",
                                 study_uid=f"{prefix}.3", series_uid=f"{prefix}.3.1", sop_uid=f"{prefix}.3.1.1"),
                      door="test")
    [late] = send(node, adt("A08", "PID|1||TEMP77^^^GENHOSP||Real^Name^Middle", control="LATE"))
    assert msa(late)[0] == "AA"
    assert patient_c_find(node, PatientID="TEMP77") == []
    assert studies_of(node, "MRN100") == {f"{prefix}.{n}": "Real^Name^Middle" for n in (1, 2, 3)}
    assert studies_of(node, "TEMP77") == {}

    record = history(node, "MRN100", "GENHOSP").json()
    assert [change["action"] for change in record["history"]] == ["created", "merged", "updated"]
    assert record["history"][1]["before"]["PatientID"] == "TEMP77"
    assert history(node, "TEMP77", "GENHOSP").json()["PatientID"] == "MRN100"  # an alias reads as its survivor

    [again] = send(node, merge("A40", "PID|1||MRN100^^^GENHOSP||Real^Name", "MRG|TEMP77^^^GENHOSP", control="M2"))
    assert msa(again)[0] == "AA"  # the same merge twice changes nothing more


def test_a_merge_of_an_unknown_patient_changes_nothing(node: Mosaic) -> None:
    [answer] = send(node, merge("A40", "PID|1||MRN200^^^GENHOSP||New^Survivor", "MRG|NOBODY^^^GENHOSP"))
    assert msa(answer)[0] == "AE" and err(answer) == ("MRG^1^1^1^1", "204")
    assert patient_c_find(node, PatientID="MRN200") == []  # whole or nothing: the survivor was not created
    [no_mrg] = send(node, merge("A40", "PID|1||MRN200^^^GENHOSP||New^Survivor", "PV1|1|O"))
    assert msa(no_mrg)[0] == "AE" and err(no_mrg) == ("MRG", "100")
    assert patient_c_find(node, PatientID="MRN200") == []


def test_an_identifier_change_keeps_the_old_one_as_an_alias(node: Mosaic) -> None:
    send(node, adt("A04", "PID|1||OLD5^^^GENHOSP||Renamed^Person"), adt("A04", "PID|1||TAKEN^^^GENHOSP||Other^One"))
    [taken] = send(node, merge("A47", "PID|1||TAKEN^^^GENHOSP", "MRG|OLD5^^^GENHOSP"))
    assert msa(taken)[0] == "AE" and err(taken) == ("PID^1^3^1^1", "205")
    [changed] = send(node, merge("A47", "PID|1||NEW5^^^GENHOSP", "MRG|OLD5^^^GENHOSP", control="A47OK"))
    assert msa(changed)[0] == "AA"
    assert patient_c_find(node, PatientID="OLD5") == []
    assert [str(found.PatientName) for found in patient_c_find(node, PatientID="NEW5")] == ["Renamed^Person"]
    node.ingest.store(make_bytes(patient_id="OLD5", issuer="GENHOSP", patient_name="Renamed^Person",
                                 study_uid="1.2.826.0.1.3680043.10.1234.94"), door="test")
    assert studies_of(node, "NEW5") == {"1.2.826.0.1.3680043.10.1234.94": "Renamed^Person"}


def test_retrieval_delivers_the_current_demographics_and_the_stored_bytes_stay(node: Mosaic) -> None:
    """WADO-RS (dicomweb-client), WADO-URI and C-GET (pynetdicom) send the Patient module as ADT made it; the
    pixel data and the rest go out as stored, the blob's SHA-256 and `mosaic verify` are unchanged."""
    import hashlib
    import io

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from mosaic.services.verify import VerifyService

    study = "1.2.826.0.1.3680043.10.1234.95"
    stored_bytes = make_bytes(patient_id="MRN300", issuer="GENHOSP", patient_name="Before^Name",
                              study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.1")
    node.ingest.store(stored_bytes, door="test")
    [instance] = node.retrieve.instances_in(study, scope=Scope.everything())
    [answer] = send(node, adt("A08", "PID|1||MRN300^^^GENHOSP||Müller^Zoë||19991231|F", charset="8859/1")
                    .encode("latin-1"))
    assert msa(answer)[0] == "AA"

    client = DICOMwebClient(f"http://{LOCALHOST}:{node.http_port}/dicom-web", headers=auth_headers(node))
    retrieved = client.retrieve_instance(study, f"{study}.1", f"{study}.1.1")
    original = pydicom.dcmread(io.BytesIO(stored_bytes))
    assert (str(retrieved.PatientName), retrieved.PatientBirthDate, retrieved.PatientSex) == (
        "Müller^Zoë", "19991231", "F")
    assert retrieved.PixelData == original.PixelData and retrieved.SOPInstanceUID == original.SOPInstanceUID
    [metadata] = client.retrieve_series_metadata(study, f"{study}.1")
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "Müller^Zoë"}]
    assert metadata["00100030"]["Value"] == ["19991231"] and metadata["7FE00010"]["BulkDataURI"]
    url = f"http://{LOCALHOST}:{node.http_port}/dicom-web/studies/{study}/series/{study}.1/metadata"
    etag = httpx.get(url, headers=auth_headers(node), timeout=30).headers["etag"]
    instance_url = f"http://{LOCALHOST}:{node.http_port}/dicom-web/studies/{study}/series/{study}.1/instances/" \
                   f"{study}.1.1"
    accept = {**auth_headers(node), "Accept": 'multipart/related; type="application/dicom"'}
    instance_etag = httpx.get(instance_url, headers=accept, timeout=30).headers["etag"]
    assert httpx.get(instance_url, headers={**accept, "If-None-Match": instance_etag},
                     timeout=30).status_code == 304  # the coerced answer is cached while the patient is unchanged
    [again] = send(node, adt("A08", "PID|1||MRN300^^^GENHOSP||Müller^Zoë^Anna", charset="8859/1").encode("latin-1"))
    assert msa(again)[0] == "AA"
    changed = httpx.get(instance_url, headers={**accept, "If-None-Match": instance_etag}, timeout=30)
    assert changed.status_code == 200 and "Müller^Zoë^Anna".encode() in changed.content
    after = httpx.get(url, headers={**auth_headers(node), "If-None-Match": etag}, timeout=30)
    assert after.status_code == 200 and after.json()[0]["00100010"]["Value"] == [{"Alphabetic": "Müller^Zoë^Anna"}]
    uri = httpx.get(f"http://{LOCALHOST}:{node.http_port}/wado", headers=auth_headers(node), timeout=30, params={
        "requestType": "WADO", "studyUID": study, "seriesUID": f"{study}.1", "objectUID": f"{study}.1.1",
        "contentType": "application/dicom"})
    assert str(pydicom.dcmread(io.BytesIO(uri.content)).PatientName) == "Müller^Zoë^Anna"

    received, _statuses = c_get_study(node, study, calling_ae="FINDER")
    assert [str(item.PatientName) for item in received] == ["Müller^Zoë^Anna"]

    with node.blobs.open(instance.blob_key) as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == instance.sha256
    assert VerifyService(node.database, node.blobs).run(orphans=False).healthy


def test_a_sender_configured_with_an_unknown_message_type_is_a_configuration_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ADTT: not a message type Mosaic applies"):
        Hl7Sender(application="EPIC", may_send=["ADTT"])


def test_connections_beyond_the_limit_are_closed_and_the_others_served(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                        hl7=Hl7Settings(port=0, max_connections=2,
                                        senders=[Hl7Sender(application="EPIC", may_send=["ADT"])]))
    node = Mosaic(settings)
    node.start(http=False)
    held = [socket.create_connection((LOCALHOST, node.hl7_port), timeout=10) for _ in range(2)]
    try:
        # connections are admitted in the order they are accepted: the first two hold both places
        with socket.create_connection((LOCALHOST, node.hl7_port), timeout=10) as third:
            assert third.recv(1) == b""  # closed at once, nothing read
        held[0].sendall(b"\x0b" + adt("A04", "PID|1||MRN-C^^^X||Held^Open").encode("latin-1") + b"\x1c\x0d")
        assert b"MSA|AA" in held[0].recv(65536)
    finally:
        for connection in held:
            connection.close()
        node.stop()
