"""The audit trail as others read it: JSON, FHIR R4 ``AuditEvent``, and DICOM PS3.15 A.5 audit messages sent
to an audit repository over RFC 5424 syslog (TCP, TLS as RFC 5425 and IHE ATNA ask, or UDP).

The forwarder reads the audit table after its own cursor (``audit_cursor('syslog')``, through the generic
:class:`~mosaic.jobs.outbox.OutboxConsumer`): the table is the queue,
so a collector that is down or slow delays only the forwarder — records wait, are retried, and are never
dropped — and clinical requests never wait for it.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import logging
import socket
import ssl
from datetime import UTC, datetime
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from mosaic.config import SyslogSettings
from mosaic.core.times import as_utc
from mosaic.governance.audit import QUERY_TRANSFER_SYNTAX, records_after
from mosaic.index.database import Database
from mosaic.index.schema import AuditRecord
from mosaic.jobs.outbox import OutboxConsumer

log = logging.getLogger("mosaic.audit.export")

DCM = "DCM"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SYSLOG_CURSOR = "syslog"

# action → (EventID code, meaning, EventActionCode, EventTypeCode or None), PS3.15 A.5.3 and CID 400-403
_EVENTS: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "query": ("110112", "Query", "E", None),
    "read": ("110104", "DICOM Instances Transferred", "R", None),
    "store": ("110104", "DICOM Instances Transferred", "C", None),
    "modify": ("110103", "DICOM Instances Accessed", "U", None),
    "delete": ("110105", "DICOM Study Deleted", "D", None),
    "export": ("110106", "Export", "R", None),
    "login": ("110114", "User Authentication", "E", ("110122", "Login")),
    "logout": ("110114", "User Authentication", "E", ("110123", "Logout")),
    "break-glass": ("110113", "Security Alert", "E", ("110127", "Emergency Override Started")),
    "policy-change": ("110113", "Security Alert", "E", ("110136", "Security Roles Changed")),
    "legal-hold": ("110113", "Security Alert", "E", ("110135", "Object Security Attributes Changed")),
    "audit-read": ("110101", "Audit Log Used", "R", None),
}
_OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}


def record_json(row: AuditRecord) -> dict[str, Any]:
    return {
        "seq": row.seq, "recorded_at": as_utc(row.recorded_at).isoformat(), "actor": row.actor,
        "actor_kind": row.actor_kind, "roles": [role for role in row.roles.split(",") if role],
        "address": row.address, "interface": row.interface, "action": row.action, "outcome": row.outcome,
        "PatientID": row.PatientID, "IssuerOfPatientID": row.IssuerOfPatientID,
        "StudyInstanceUID": row.StudyInstanceUID, "SeriesInstanceUID": row.SeriesInstanceUID,
        "SOPInstanceUID": row.SOPInstanceUID, "break_glass": row.break_glass, "detail": row.detail,
        "hash": row.hash,
    }


# --- FHIR R4 AuditEvent ---------------------------------------------------------------------------

def fhir_audit_event(row: AuditRecord, observer: str) -> dict[str, Any]:
    """One record as a FHIR R4 ``AuditEvent`` (DICOM event codes, as the IHE BALP profile does)."""
    code, meaning, action_code, subtype = _EVENTS.get(row.action, ("110100", "Application Activity", "E", None))
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"mosaic-audit-{row.seq}",
        "type": {"system": DCM_SYSTEM, "code": code, "display": meaning},
        "action": action_code,
        "recorded": as_utc(row.recorded_at).isoformat(),
        "outcome": _OUTCOMES.get(row.outcome, "8"),
        "agent": [{
            "who": {"display": row.actor},
            **({"altId": row.actor_kind} if row.actor_kind else {}),
            "requestor": True,
            **({"role": [{"text": role} for role in row.roles.split(",") if role]} if row.roles else {}),
            **({"network": {"address": row.address, "type": "2"}} if row.address else {}),
        }],
        "source": {"observer": {"display": observer},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
    }
    if subtype:
        event["subtype"] = [{"system": DCM_SYSTEM, "code": subtype[0], "display": subtype[1]}]
    if row.break_glass:
        event["purposeOfEvent"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                "code": "BTG", "display": "break the glass"}]}]
    entities: list[dict[str, Any]] = []
    if row.PatientID:
        entities.append({"what": {"identifier": {"value": row.PatientID,
                                                 **({"system": row.IssuerOfPatientID} if row.IssuerOfPatientID
                                                    else {})}},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    if row.StudyInstanceUID:
        entities.append({"what": {"identifier": {"system": "urn:dicom:uid",
                                                 "value": f"urn:oid:{row.StudyInstanceUID}"}},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3"}})
    if entities:
        event["entity"] = entities
    return _validated(event)


def _validated(event: dict[str, Any]) -> dict[str, Any]:
    """Checked against fhir.resources' R4B model (R4B's AuditEvent is R4's)."""
    from fhir.resources.R4B.auditevent import AuditEvent

    return AuditEvent.model_validate(event).model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def fhir_bundle(rows: list[AuditRecord], total: int, observer: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": total,
            "entry": [{"resource": fhir_audit_event(row, observer)} for row in rows]}


# --- DICOM PS3.15 A.5 audit message + RFC 5424 syslog -------------------------------------------

# PS3.15 A.5.3 participant codes (CID 402 Audit Active Participant Role ID, CID 404 ID Type, CID 405 Media Type)
_SOURCE = ("110153", DCM, "Source Role ID")
_DESTINATION = ("110152", DCM, "Destination Role ID")
_DESTINATION_MEDIA = ("110154", DCM, "Destination Media")
_URI_MEDIA = ("110037", DCM, "URI")
_PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
_STUDY_UID = ("110180", DCM, "Study Instance UID")
_SOP_CLASS_UID = ("110181", DCM, "SOP Class UID")
_URI = ("12", "RFC-3881", "URI")
_USER_IDENTIFIER = ("11", "RFC-3881", "User Identifier")
_APPLICATION_SERVER = "4"
"""Audit Source Type Code (A.5.1.2.1): application server process tier."""


def dicom_audit_message(row: AuditRecord, source_id: str) -> str:
    """One record as a DICOM audit message (PS3.15 A.5.1 schema), with the participants A.5.3 asks of its event:
    e.g. Source (110153) and Destination (110152) roles for Instances Transferred and Query, the query itself as
    a participant object, the audit log for Audit Log Used. ``source_id`` names Mosaic (its AE title)."""
    code, meaning, action_code, subtype = _EVENTS.get(row.action, ("110100", "Application Activity", "E", None))
    detail = _detail(row)
    message = Element("AuditMessage")
    identification = SubElement(message, "EventIdentification", EventActionCode=action_code,
                                EventDateTime=as_utc(row.recorded_at).isoformat(),
                                EventOutcomeIndicator=_OUTCOMES.get(row.outcome, "8"))
    _coded(identification, "EventID", (code, DCM, meaning))
    if subtype:
        _coded(identification, "EventTypeCode", (subtype[0], DCM, subtype[1]))
    if row.break_glass and row.action != "break-glass":
        _coded(identification, "EventTypeCode", ("110127", DCM, "Emergency Override Started"))
    reason = detail.get("reason") or detail.get("error")
    if row.outcome != "success" and reason:
        SubElement(identification, "EventOutcomeDescription").text = str(reason)[:1000]
    for participant in _active_participants(row, detail, source_id):
        message.append(participant)
    audit_source = SubElement(message, "AuditSourceIdentification", AuditSourceID=source_id)
    SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": _APPLICATION_SERVER})
    for participant_object in _participant_objects(row, detail, source_id):
        message.append(participant_object)
    return tostring(message, encoding="unicode")


def _detail(row: AuditRecord) -> dict[str, Any]:
    try:
        value = json.loads(row.detail) if row.detail else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _coded(parent: Element, tag: str, code: tuple[str, str, str]) -> Element:
    return SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _participant(user_id: str, requestor: bool, role: tuple[str, str, str] | None = None, *,
                 address: str = "", roles: str = "") -> Element:
    """An ActiveParticipant: its PS3.15 role (if the event names one) first, then Mosaic's own roles."""
    participant = Element("ActiveParticipant", UserID=user_id or "-", UserIsRequestor="true" if requestor else "false")
    if address:
        participant.set("NetworkAccessPointID", address)
        participant.set("NetworkAccessPointTypeCode", "2" if _is_ip(address) else "1")
    if role is not None:
        _coded(participant, "RoleIDCode", role)
    for name in (role for role in roles.split(",") if role):
        _coded(participant, "RoleIDCode", (name, "99MOSAIC", name))
    return participant


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _requestor(row: AuditRecord, role: tuple[str, str, str] | None = None) -> Element:
    return _participant(row.actor, True, role, address=row.address, roles=row.roles)


def _active_participants(row: AuditRecord, detail: dict[str, Any], source_id: str) -> list[Element]:
    """Who took part, as A.5.3 lists them for the event; the one who asked comes first."""
    if row.action == "store":  # A.5.3.7: the sender (source) transferred to Mosaic (destination)
        return [_requestor(row, _SOURCE), _participant(source_id, False, _DESTINATION)]
    if row.action == "read":  # A.5.3.7: Mosaic (source) transferred to the caller or the C-MOVE destination
        destination = str(detail.get("destination") or "")
        if destination:
            return [_requestor(row), _participant(source_id, False, _SOURCE),
                    _participant(destination, False, _DESTINATION)]
        return [_requestor(row, _DESTINATION), _participant(source_id, False, _SOURCE)]
    if row.action == "query":  # A.5.3.10: the process issuing the query and the one answering it
        return [_requestor(row, _SOURCE), _participant(source_id, False, _DESTINATION)]
    if row.action == "export":  # A.5.3.4: who exported (source) and the destination media
        media = _participant(str(detail.get("destination") or "-"), False, _DESTINATION_MEDIA)
        media.insert(1, _media_identifier())
        return [_requestor(row, _SOURCE), _participant(source_id, False), media]
    # A.5.3.2, .6, .8, .11, .12: the person or process acting, and Mosaic (authenticating, reporting, holding)
    return [_requestor(row), _participant(source_id, False)]


def _media_identifier() -> Element:
    identifier = Element("MediaIdentifier")
    _coded(identifier, "MediaType", _URI_MEDIA)
    return identifier


def _participant_objects(row: AuditRecord, detail: dict[str, Any], source_id: str) -> list[Element]:
    """What the event was about, as A.5.3 lists it: studies (with their instances) and the patient; the query
    for Query; the audit log for Audit Log Used; the account for a change of security roles."""
    if row.action in {"login", "logout"}:  # A.5.3.12 User Authentication has no participant object
        return []
    if row.action == "audit-read":  # A.5.3.2
        log_object = _object(f"urn:mosaic:{source_id}:audit-trail", "2", "13", _URI)
        SubElement(log_object, "ParticipantObjectName").text = "Security Audit Log"
        return [log_object]
    objects: list[Element] = []
    if row.action == "query":
        objects.append(_query_object(row, detail))
    elif row.action == "policy-change":  # A.5.3.11 alert subject: the account whose roles or access changed
        account = _object(str(detail.get("user") or detail.get("path") or "-"), "1", "11", _USER_IDENTIFIER)
        _value_pair(account, "Alert Description", json.dumps(detail, sort_keys=True, default=str))
        objects.append(account)
    if row.StudyInstanceUID:
        objects.append(_study_object(row, detail))
    if row.PatientID:
        patient = f"{row.PatientID}^^^{row.IssuerOfPatientID}" if row.IssuerOfPatientID else row.PatientID
        objects.append(_object(patient, "1", "1", _PATIENT_NUMBER))
    return objects


def _object(identifier: str, type_code: str, role: str, id_type: tuple[str, str, str]) -> Element:
    participant_object = Element("ParticipantObjectIdentification", ParticipantObjectID=identifier or "-",
                                 ParticipantObjectTypeCode=type_code, ParticipantObjectTypeCodeRole=role)
    _coded(participant_object, "ParticipantObjectIDTypeCode", id_type)
    return participant_object


def _value_pair(parent: Element, kind: str, value: str) -> None:
    SubElement(parent, "ParticipantObjectDetail", type=kind, value=base64.b64encode(value.encode()).decode())


def _query_object(row: AuditRecord, detail: dict[str, Any]) -> Element:
    """A.5.3.10 "SOP Queried and the Query": the SOP Class and the query data set (DIMSE), or the URI and its
    query string (QIDO-RS and the API: the standard's note on non-DICOM queries)."""
    if detail.get("SOPClassUID"):
        query = _object(str(detail["SOPClassUID"]), "2", "3", _SOP_CLASS_UID)
        SubElement(query, "ParticipantObjectQuery").text = str(detail.get("identifier") or "")
        _value_pair(query, "TransferSyntax", str(detail.get("TransferSyntaxUID") or QUERY_TRANSFER_SYNTAX))
        return query
    query = _object(str(detail.get("path") or row.interface or "-"), "2", "3", _URI)
    text = str(detail.get("query") or json.dumps({key: value for key, value in detail.items() if key != "path"},
                                                  sort_keys=True, default=str))
    SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(text.encode()).decode()
    return query


def _study_object(row: AuditRecord, detail: dict[str, Any]) -> Element:
    """A Study participant object; the instances it names (stored one by one: their UIDs; retrieved: how many
    were sent) in its ParticipantObjectDescription, as A.5.2.1 describes."""
    study = _object(row.StudyInstanceUID, "2", "3", _STUDY_UID)
    instances = [str(item.get("SOPInstanceUID")) for item in detail.get("instances", [])
                 if isinstance(item, dict) and item.get("SOPInstanceUID")] \
        if isinstance(detail.get("instances"), list) else []
    if not instances and row.SOPInstanceUID:
        instances = [row.SOPInstanceUID]
    count = len(instances) or _count(detail.get("sent", detail.get("instances", detail.get("exported"))))
    if count:
        description = SubElement(study, "ParticipantObjectDescription")
        sop_class = SubElement(description, "SOPClass", NumberOfInstances=str(count))
        for uid in instances:
            SubElement(sop_class, "Instance", UID=uid)
    return study


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def syslog_frame(row: AuditRecord, settings: SyslogSettings, source_id: str, hostname: str) -> bytes:
    """RFC 5424 message (facility 10 authpriv, severity notice or warning) carrying the audit message."""
    severity = 5 if row.outcome == "success" else 4
    priority = 10 * 8 + severity
    timestamp = as_utc(row.recorded_at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = f"<{priority}>1 {timestamp} {hostname or '-'} {settings.app_name} - IHE+RFC-3881 - "
    return header.encode() + b"\xef\xbb\xbf" + dicom_audit_message(row, source_id).encode("utf-8")


def checkpoint_frame(line: bytes, settings: SyslogSettings, hostname: str) -> bytes:
    """RFC 5424 message (authpriv, notice; MSGID ``MOSAIC-CHECKPOINT``) carrying one signed checkpoint line."""
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = f"<{10 * 8 + 5}>1 {timestamp} {hostname or '-'} {settings.app_name} - MOSAIC-CHECKPOINT - "
    return header.encode() + b"\xef\xbb\xbf" + line.rstrip(b"\n")


class SyslogForwarder:
    """Sends every audit record, in order, to the configured collector; resumes where it stopped (an
    :class:`~mosaic.jobs.outbox.OutboxConsumer` of the audit table under the cursor ``syslog``)."""

    def __init__(self, database: Database, settings: SyslogSettings, source_id: str) -> None:
        self.database = database
        self.settings = settings
        self.source_id = source_id
        self.hostname = socket.gethostname()
        self._socket: socket.socket | None = None
        self._checkpoints: collections.deque[bytes] = collections.deque(maxlen=10000)
        """Signed checkpoints of the audit chain (``audit_anchor``) waiting to go out: the collector keeps a
        copy the index's writers cannot rewrite."""
        self.outbox: OutboxConsumer[AuditRecord] = OutboxConsumer(
            database, SYSLOG_CURSOR, read=lambda seq, limit: records_after(database, seq, limit),
            deliver=lambda row: self._send(syslog_frame(row, self.settings, self.source_id, self.hostname)),
            position=lambda row: (row.seq, row.hash), before=self.forward_checkpoints, on_failure=self._failed,
            retry_seconds=settings.retry_seconds, thread_name="audit-syslog")

    def send_checkpoint(self, line: bytes) -> None:
        """Queue a checkpoint line for the collector (in memory: the anchor file is the durable copy)."""
        self._checkpoints.append(line)
        self.outbox.wake()

    def start(self) -> None:
        self.outbox.start()

    def wake(self) -> None:
        self.outbox.wake()

    def stop(self) -> None:
        self.outbox.stop()
        self._close()

    def _failed(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, OSError):
            log.warning("audit collector %s:%d unreachable (%s); retrying in %.1f s", self.settings.host,
                        self.settings.port, exc, delay)
            self._close()
        else:
            log.exception("audit forwarding failed; retrying", exc_info=exc)

    def forward_batch(self, size: int = 200) -> bool:
        """Send the next records after the cursor; the cursor moves past what was sent, also when sending stops
        halfway. No transaction is open while it sends: on SQLite a write transaction would hold up every
        C-STORE for as long as a slow collector takes. True if there may be more."""
        return self.outbox.deliver_batch(size)

    def forward_checkpoints(self) -> None:
        """Send the queued checkpoints, oldest first (one that fails to go out stays queued)."""
        while self._checkpoints:
            line = self._checkpoints[0]
            self._send(checkpoint_frame(line, self.settings, self.hostname))
            self._checkpoints.popleft()

    def _send(self, message: bytes) -> None:
        assert self.settings.host is not None
        if self.settings.protocol == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(message, (self.settings.host, self.settings.port))
            return
        if self._socket is None:
            connection = socket.create_connection((self.settings.host, self.settings.port), timeout=10)
            if self.settings.protocol == "tls":
                try:
                    connection = self._tls().wrap_socket(connection, server_hostname=self.settings.host)
                except BaseException:
                    connection.close()
                    raise
            self._socket = connection
        self._socket.sendall(str(len(message)).encode() + b" " + message)  # RFC 6587/5425 octet counting

    def _tls(self) -> ssl.SSLContext:
        """TLS 1.2+ verifying the collector against ``tls_ca_file`` (or the system's CAs), presenting Mosaic's own
        certificate when configured (mutual authentication, IHE ATNA)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(self.settings.tls_ca_file) if self.settings.tls_ca_file
                                             else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.settings.tls_cert_file is not None:
            context.load_cert_chain(str(self.settings.tls_cert_file),
                                    str(self.settings.tls_key_file) if self.settings.tls_key_file else None)
        return context

    def _close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None
