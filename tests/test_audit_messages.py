"""Every DICOM audit message Mosaic sends validates against the PS3.15 A.5.1 schema and carries the participants
PS3.15 A.5.3 asks of its event.

The schema is the standard's RELAX NG (tests/data/ps3.15-audit-message.rnc, transcribed from A.5.1.1). The
schema only fixes the structure, so the participants each event needs (Source and Destination roles, the query,
the audit log, the patient and studies) are checked against :data:`REQUIRED`, read from the A.5.3 tables.
Records come from the real doors where a test can drive them (C-STORE and C-FIND with pynetdicom, QIDO-RS,
WADO-RS, the audit API) and, for the others, from entries shaped as those doors write them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from lxml import etree
from pydicom.filereader import read_dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.audit_export import dicom_audit_message
from mosaic.index.schema import AuditRecord
from tests.auth_support import auth_headers
from tests.dimse_support import MOSAIC_AE, identifier, pynetdicom_find
from tests.factory import make_instance
from tests.helpers import LOCALHOST

SCHEMA_FILE = Path(__file__).parent / "data" / "ps3.15-audit-message.rnc"
STUDY = "1.2.826.0.1.3680043.10.1234.501"
PATIENT = "AUDIT-MSG-1"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return etree.RelaxNG.from_rnc_string(SCHEMA_FILE.read_text(encoding="utf-8"))


# --- what PS3.15 A.5.3 asks of each event ---------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """A.5.3's requirements of one event: action codes, active participants' roles (each exactly once), and the
    participant objects by (ParticipantObjectTypeCode, ParticipantObjectTypeCodeRole, IDTypeCode)."""

    name: str
    actions: frozenset[str]
    roles: tuple[str, ...] = ()
    objects: tuple[tuple[str, str, frozenset[str]], ...] = ()
    type_codes: frozenset[str] = frozenset()
    no_objects: bool = False


PATIENT_OBJECT = ("1", "1", frozenset({"2"}))
STUDY_OBJECT = ("2", "3", frozenset({"110180"}))
REQUIRED = {
    "110104": Event("DICOM Instances Transferred (A.5.3.7)", frozenset("CRUE"), ("110153", "110152"),
                    (STUDY_OBJECT, PATIENT_OBJECT)),
    "110112": Event("Query (A.5.3.10)", frozenset("E"), ("110153", "110152"),
                    (("2", "3", frozenset({"110181", "12"})),)),
    "110103": Event("DICOM Instances Accessed (A.5.3.6)", frozenset("CRUD"), (), (STUDY_OBJECT, PATIENT_OBJECT)),
    "110105": Event("DICOM Study Deleted (A.5.3.8)", frozenset("D"), (), (STUDY_OBJECT, PATIENT_OBJECT)),
    "110106": Event("Export (A.5.3.4)", frozenset("R"), ("110153", "110154"), (PATIENT_OBJECT,)),
    "110114": Event("User Authentication (A.5.3.12)", frozenset("E"), type_codes=frozenset({"110122", "110123"}),
                    no_objects=True),
    "110113": Event("Security Alert (A.5.3.11)", frozenset("E"),
                    type_codes=frozenset({"110127", "110135", "110136"})),
    "110101": Event("Audit Log Used (A.5.3.2)", frozenset("R"), (), (("2", "13", frozenset({"12"})),)),
}


def conformance_problems(message: etree._Element) -> list[str]:
    """What ``message`` lacks of A.5.3's requirements for its event (empty: nothing)."""
    identification = message.find("EventIdentification")
    event_id = identification.find("EventID").get("csd-code")
    event = REQUIRED.get(event_id)
    if event is None:
        return [f"event {event_id} is not one Mosaic should send"]
    problems: list[str] = []
    if identification.get("EventActionCode") not in event.actions:
        problems.append(f"{event.name}: EventActionCode {identification.get('EventActionCode')}")
    participants = message.findall("ActiveParticipant")
    if not any(participant.get("UserIsRequestor") == "true" for participant in participants):
        problems.append(f"{event.name}: no requesting active participant")
    for role in event.roles:
        holders = [participant for participant in participants
                   if any(code.get("csd-code") == role and code.get("codeSystemName") == "DCM"
                          for code in participant.findall("RoleIDCode"))]
        if len(holders) != 1:
            problems.append(f"{event.name}: {len(holders)} active participants with RoleIDCode {role}")
        elif role == "110154" and holders[0].find("MediaIdentifier/MediaType") is None:
            problems.append(f"{event.name}: the destination media has no MediaIdentifier")
    if event.type_codes and not {code.get("csd-code") for code in identification.findall("EventTypeCode")} \
            & event.type_codes:
        problems.append(f"{event.name}: no EventTypeCode of {sorted(event.type_codes)}")
    objects = message.findall("ParticipantObjectIdentification")
    if event.no_objects and objects:
        problems.append(f"{event.name}: participant objects where there should be none")
    for type_code, role, id_types in event.objects:
        matching = [item for item in objects if item.get("ParticipantObjectTypeCode") == type_code
                    and item.get("ParticipantObjectTypeCodeRole") == role
                    and item.find("ParticipantObjectIDTypeCode").get("csd-code") in id_types]
        if not matching:
            problems.append(f"{event.name}: no participant object ({type_code}, {role}, {sorted(id_types)})")
        for item in matching:
            if event_id == "110112":
                if item.find("ParticipantObjectQuery") is None:
                    problems.append(f"{event.name}: the query object carries no ParticipantObjectQuery")
                if item.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181" and not [
                        detail for detail in item.findall("ParticipantObjectDetail")
                        if detail.get("type") == "TransferSyntax"]:
                    problems.append(f"{event.name}: the query names no TransferSyntax")
            if event_id == "110101" and item.findtext("ParticipantObjectName") != "Security Audit Log":
                problems.append(f"{event.name}: the audit log is not named 'Security Audit Log'")
    return problems


def validated(schema: etree.RelaxNG, row: AuditRecord) -> etree._Element:
    message = etree.fromstring(dicom_audit_message(row, MOSAIC_AE).encode())
    assert schema.validate(message), f"record {row.seq} ({row.action}): {schema.error_log}"
    assert not conformance_problems(message), (row.action, conformance_problems(message),
                                               etree.tostring(message).decode())
    return message


# --- the doors --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    node = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("audit-messages"), http=HttpSettings(port=0),
                           dicom=DicomSettings(ae_title=MOSAIC_AE, port=0, allow_unknown_calling_aes=True)))
    node.start()
    yield node
    node.stop()


def rows_of(node: Mosaic, **filters: str) -> list[AuditRecord]:
    assert node.audit.flush()
    rows, _ = node.audit.search(limit=1000, **filters)  # type: ignore[arg-type]
    return rows


def c_store(node: Mosaic, count: int) -> None:
    ae = AE(ae_title="AUDIT_MODALITY")
    ae.add_requested_context(CTImageStorage)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established
    try:
        for number in range(count):
            dataset = make_instance(patient_id=PATIENT, study_uid=STUDY, series_uid=f"{STUDY}.1",
                                    sop_uid=f"{STUDY}.1.{number}", instance_number=number + 1)
            assert association.send_c_store(dataset).Status == 0x0000
    finally:
        association.release()


def test_the_schema_is_the_one_checked(schema: etree.RelaxNG) -> None:
    """The schema rejects what A.5.1 forbids (so a pass means something)."""
    no_source = b'<AuditMessage><EventIdentification EventActionCode="E" EventDateTime="2024-01-01T00:00:00Z" ' \
                b'EventOutcomeIndicator="0"><EventID csd-code="110112" codeSystemName="DCM" originalText="Query"/>' \
                b'</EventIdentification><ActiveParticipant UserID="x" UserIsRequestor="true"/></AuditMessage>'
    assert not schema.validate(etree.fromstring(no_source))
    bad_role = no_source.replace(b"</AuditMessage>", b'<AuditSourceIdentification AuditSourceID="M"/>'
                                 b'<ParticipantObjectIdentification ParticipantObjectID="1" '
                                 b'ParticipantObjectTypeCodeRole="99"><ParticipantObjectIDTypeCode csd-code="2" '
                                 b'codeSystemName="RFC-3881" originalText="Patient Number"/>'
                                 b'</ParticipantObjectIdentification></AuditMessage>')
    assert not schema.validate(etree.fromstring(bad_role))
    assert schema.validate(etree.fromstring(bad_role.replace(b'"99"', b'"1"')))


def test_dimse_store_and_find_messages(node: Mosaic, schema: etree.RelaxNG) -> None:
    c_store(node, 3)
    statuses, _ = pynetdicom_find(node, identifier(QueryRetrieveLevel="STUDY", PatientID=PATIENT,
                                                   StudyInstanceUID=""), calling_ae="AUDIT_QUERIER")
    assert statuses[-1] == 0x0000
    stores = [validated(schema, row) for row in rows_of(node, action="store", user="AUDIT_MODALITY")]
    assert stores
    sender = [participant for message in stores for participant in message.findall("ActiveParticipant")
              if participant.find("RoleIDCode").get("csd-code") == "110153"]
    assert {participant.get("UserID") for participant in sender} == {"AUDIT_MODALITY"}
    instances = {instance.get("UID") for message in stores
                 for instance in message.iterfind("ParticipantObjectIdentification/ParticipantObjectDescription/"
                                                  "SOPClass/Instance")}
    assert instances == {f"{STUDY}.1.{number}" for number in range(3)}
    [query] = [validated(schema, row) for row in rows_of(node, action="query", user="AUDIT_QUERIER")]
    [queried] = [item for item in query.findall("ParticipantObjectIdentification")
                 if item.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"]
    assert queried.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
    dataset = read_dataset(BytesIO(base64.b64decode(queried.findtext("ParticipantObjectQuery"))),
                           is_implicit_VR=False, is_little_endian=True)
    assert dataset.PatientID == PATIENT and dataset.QueryRetrieveLevel == "STUDY"


def test_http_query_read_and_audit_messages(node: Mosaic, schema: etree.RelaxNG) -> None:
    c_store(node, 1)
    base = f"http://{LOCALHOST}:{node.http_port}"
    headers = auth_headers(node)
    assert httpx.get(f"{base}/dicom-web/studies", params={"PatientID": PATIENT}, headers=headers,
                     timeout=60).status_code == 200
    assert httpx.get(f"{base}/dicom-web/studies/{STUDY}/metadata", headers=headers, timeout=60).status_code == 200
    assert httpx.get(f"{base}/api/audit", params={"patient": PATIENT}, headers=headers, timeout=60).status_code == 200
    for action in ("query", "read", "audit-read"):
        rows = rows_of(node, action=action, user="admin")
        assert rows, action
        for row in rows:
            validated(schema, row)
    [read] = [validated(schema, row) for row in rows_of(node, action="read", user="admin")][:1]
    destination = [participant for participant in read.findall("ActiveParticipant")
                   if participant.find("RoleIDCode") is not None
                   and participant.find("RoleIDCode").get("csd-code") == "110152"]
    assert destination[0].get("UserID") == "admin" and destination[0].get("UserIsRequestor") == "true"


# every other event, shaped as its door writes it (see the door named with each)
DOOR_ENTRIES: dict[str, Callable[[], AuditEntry]] = {
    "dimse C-MOVE (dimse.retrieve._audit_retrieve)": lambda: AuditEntry(
        action=AuditAction.READ, outcome="success", actor="VIEWER_AE", actor_kind="ae", address="10.0.0.7",
        interface="dimse", PatientID=PATIENT, StudyInstanceUID=STUDY,
        detail={"service": "C-MOVE", "instances": 3, "sent": 3, "destination": "WORKSTATION"}),
    "dimse C-GET refused (dimse.retrieve._audit_refused_retrieve)": lambda: AuditEntry(
        action=AuditAction.READ, outcome="failure", actor="VIEWER_AE", actor_kind="ae", interface="dimse",
        PatientID=PATIENT, StudyInstanceUID=STUDY, detail={"service": "C-GET", "reason": "no such study"}),
    "http login (web.account)": lambda: AuditEntry(action=AuditAction.LOGIN, outcome="success", actor="alice",
                                                    actor_kind="user", address="192.0.2.1", interface="http"),
    "http login refused (web.account)": lambda: AuditEntry(
        action=AuditAction.LOGIN, outcome="denied", actor="mallory", address="192.0.2.66", interface="http",
        detail={"reason": "wrong password"}),
    "http logout (web.account)": lambda: AuditEntry(action=AuditAction.LOGOUT, outcome="success", actor="alice",
                                                     actor_kind="user", address="192.0.2.1", interface="http"),
    "break-glass (web.account)": lambda: AuditEntry(
        action=AuditAction.BREAK_GLASS, outcome="success", actor="alice", roles="clinician", interface="http",
        PatientID=PATIENT, StudyInstanceUID=STUDY, break_glass=True, detail={"reason": "emergency in ED"}),
    "account change (cli, web.users_routes)": lambda: AuditEntry(
        action=AuditAction.POLICY_CHANGE, outcome="success", actor="os:root", actor_kind="cli", interface="cli",
        detail={"user": "bob", "change": "updated", "roles": ["auditor"]}),
    "legal hold (governance.holds)": lambda: AuditEntry(
        action=AuditAction.LEGAL_HOLD, outcome="success", actor="admin", interface="http", PatientID=PATIENT,
        detail={"hold": "case-7", "change": "placed"}),
    "retention mark (governance.retention)": lambda: AuditEntry(
        action=AuditAction.MODIFY, outcome="success", actor="retention", actor_kind="system",
        interface="retention", PatientID=PATIENT, StudyInstanceUID=STUDY,
        detail={"retention": "marked", "rule": "adults-7y"}),
    "study deleted (web.retention_routes, cli delete)": lambda: AuditEntry(
        action=AuditAction.DELETE, outcome="success", actor="admin", interface="http", PatientID=PATIENT,
        StudyInstanceUID=STUDY, detail={"instances": 3}),
    "export (export.service)": lambda: AuditEntry(
        action=AuditAction.EXPORT, outcome="success", actor="researcher", interface="http", PatientID=PATIENT,
        StudyInstanceUID=STUDY, detail={"export": "e-1", "project": "p", "de-identified": True,
                                        "destination": "folder:/exports/p", "exported": 3}),
    "retention list (web.retention_routes)": lambda: AuditEntry(
        action=AuditAction.QUERY, outcome="success", actor="admin", interface="http",
        detail={"path": "/api/holds", "matches": 0}),
}


@pytest.mark.parametrize("door", sorted(DOOR_ENTRIES))
def test_every_other_event_validates(node: Mosaic, schema: etree.RelaxNG, door: str) -> None:
    entry = DOOR_ENTRIES[door]()
    entry.actor = f"{entry.actor}-{abs(hash(door)) % 10**6}"  # find this record again
    node.audit.record(entry)
    [row] = rows_of(node, user=entry.actor)
    message = validated(schema, row)
    if entry.outcome != "success" and entry.detail.get("reason"):
        assert message.findtext("EventIdentification/EventOutcomeDescription") == entry.detail["reason"]
