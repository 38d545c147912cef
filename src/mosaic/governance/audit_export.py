"""The audit trail as others read it: JSON, FHIR R4 ``AuditEvent``, and DICOM PS3.15 A.5 audit messages sent
to an audit repository over RFC 5424 syslog (TCP, TLS as RFC 5425 and IHE ATNA ask, or UDP).

The forwarder reads the audit table after its own cursor (``audit_cursor('syslog')``): the table is the queue,
so a collector that is down or slow delays only the forwarder — records wait, are retried, and are never
dropped — and clinical requests never wait for it.
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import threading
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mosaic.config import SyslogSettings
from mosaic.core.times import as_utc
from mosaic.governance.audit import records_after
from mosaic.index.database import Database
from mosaic.index.schema import AuditCursor, AuditRecord

log = logging.getLogger("mosaic.audit.export")

DCM = "DCM"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SYSLOG_CURSOR = "syslog"

# action → (EventID code, meaning, EventActionCode, EventTypeCode or None), PS3.15 A.5.3 and CID 400-403
_EVENTS: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "query": ("110112", "Query", "E", None),
    "read": ("110103", "DICOM Instances Accessed", "R", None),
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

def dicom_audit_message(row: AuditRecord, source_id: str) -> str:
    """One record as a DICOM audit message (PS3.15 A.5.1 schema)."""
    code, meaning, action_code, subtype = _EVENTS.get(row.action, ("110100", "Application Activity", "E", None))
    when = as_utc(row.recorded_at).isoformat()
    type_code = (f"<EventTypeCode csd-code={quoteattr(subtype[0])} codeSystemName=\"DCM\" "
                 f"originalText={quoteattr(subtype[1])}/>") if subtype else ""
    if row.break_glass and not subtype:
        type_code = '<EventTypeCode csd-code="110127" codeSystemName="DCM" originalText="Emergency Override Started"/>'
    parts = [
        "<AuditMessage>",
        f"<EventIdentification EventActionCode=\"{action_code}\" EventDateTime={quoteattr(when)} "
        f"EventOutcomeIndicator=\"{_OUTCOMES.get(row.outcome, '8')}\">"
        f"<EventID csd-code=\"{code}\" codeSystemName=\"DCM\" originalText={quoteattr(meaning)}/>{type_code}"
        "</EventIdentification>",
        f"<ActiveParticipant UserID={quoteattr(row.actor)} UserIsRequestor=\"true\""
        + (f" NetworkAccessPointID={quoteattr(row.address)} NetworkAccessPointTypeCode=\"2\"" if row.address else "")
        + ">"
        + "".join(f"<RoleIDCode csd-code={quoteattr(role)} codeSystemName=\"99MOSAIC\" originalText={quoteattr(role)}/>"
                  for role in row.roles.split(",") if role)
        + "</ActiveParticipant>",
        f"<ActiveParticipant UserID={quoteattr(source_id)} UserIsRequestor=\"false\"/>",
        f"<AuditSourceIdentification AuditSourceID={quoteattr(source_id)}/>",
    ]
    if row.PatientID:
        patient = f"{row.PatientID}^^^{row.IssuerOfPatientID}" if row.IssuerOfPatientID else row.PatientID
        parts.append(f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(patient)} "
                     "ParticipantObjectTypeCode=\"1\" ParticipantObjectTypeCodeRole=\"1\">"
                     "<ParticipantObjectIDTypeCode csd-code=\"2\" codeSystemName=\"RFC-3881\" "
                     "originalText=\"Patient Number\"/></ParticipantObjectIdentification>")
    if row.StudyInstanceUID:
        parts.append(f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(row.StudyInstanceUID)} "
                     "ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\">"
                     "<ParticipantObjectIDTypeCode csd-code=\"110180\" codeSystemName=\"DCM\" "
                     "originalText=\"Study Instance UID\"/></ParticipantObjectIdentification>")
    parts.append("</AuditMessage>")
    return "".join(parts)


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
    """Sends every audit record, in order, to the configured collector; resumes where it stopped."""

    def __init__(self, database: Database, settings: SyslogSettings, source_id: str) -> None:
        self.database = database
        self.settings = settings
        self.source_id = source_id
        self.hostname = socket.gethostname()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._checkpoints: collections.deque[bytes] = collections.deque(maxlen=10000)
        """Signed checkpoints of the audit chain (``audit_anchor``) waiting to go out: the collector keeps a
        copy the index's writers cannot rewrite."""

    def send_checkpoint(self, line: bytes) -> None:
        """Queue a checkpoint line for the collector (in memory: the anchor file is the durable copy)."""
        self._checkpoints.append(line)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.forward_checkpoints()
                more = self.forward_batch()
            except OSError as exc:
                log.warning("audit collector %s:%d unreachable (%s); retrying in %.1f s", self.settings.host,
                            self.settings.port, exc, self.settings.retry_seconds)
                self._close()
                self._stop.wait(self.settings.retry_seconds)
                continue
            except Exception:
                log.exception("audit forwarding failed; retrying")
                self._stop.wait(self.settings.retry_seconds)
                continue
            if not more:
                self._wake.wait(1.0)
                self._wake.clear()

    def forward_batch(self, size: int = 200) -> bool:
        """Send the next records after the cursor; the cursor moves past what was sent, also when sending stops
        halfway. No transaction is open while it sends: on SQLite a write transaction would hold up every
        C-STORE for as long as a slow collector takes. True if there may be more."""
        seq = self._cursor()
        rows = records_after(self.database, seq, size)
        sent: AuditRecord | None = None
        try:
            for row in rows:
                self._send(syslog_frame(row, self.settings, self.source_id, self.hostname))
                sent = row
        finally:
            if sent is not None:
                self._advance(seq, sent)
        return len(rows) == size

    def forward_checkpoints(self) -> None:
        """Send the queued checkpoints, oldest first (one that fails to go out stays queued)."""
        while self._checkpoints:
            line = self._checkpoints[0]
            self._send(checkpoint_frame(line, self.settings, self.hostname))
            self._checkpoints.popleft()

    def _cursor(self) -> int:
        with self.database.session() as session:
            seq = session.scalar(select(AuditCursor.seq).where(AuditCursor.name == SYSLOG_CURSOR))
        if seq is not None:
            return int(seq)

        def create(session: Session) -> None:
            if session.get(AuditCursor, SYSLOG_CURSOR) is None:
                session.add(AuditCursor(name=SYSLOG_CURSOR, seq=0, hash="", updated_at=datetime.now(UTC)))

        self.database.write(create)
        return 0

    def _advance(self, seq: int, sent: AuditRecord) -> None:
        """Move the cursor from ``seq`` to ``sent`` (unless another node's forwarder moved it meanwhile)."""
        self.database.write(lambda session: session.execute(
            update(AuditCursor).where(AuditCursor.name == SYSLOG_CURSOR, AuditCursor.seq == seq)
            .values(seq=sent.seq, hash=sent.hash, updated_at=datetime.now(UTC))))

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
