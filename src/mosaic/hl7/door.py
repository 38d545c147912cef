"""The HL7 v2 door: who sent a message, whether it may, how it is applied, its audit record and its ACK.

Each message is applied whole or not at all (one index transaction) and answered on its connection:
``AA`` applied; ``AR`` refused — an unknown sender (audited as denied), a message type or event Mosaic does not
take or this sender may not send (ERR-3 200 / 201), a version that is not 2.x (203), a character set Mosaic
cannot decode; ``AE`` the message cannot be applied — a required field missing (101), a bad value (102), an
unknown key such as a report's study (204), an internal failure (207), ERR-2 naming the field.

Reports (ORU^R01, MDM^T02) are stored through ingest as DICOM objects (:mod:`mosaic.services.reports`) by the
sender as a principal of its own (``hl7:<application>^<facility>``, store permission only): ``AA`` once every
object of the report is durable. Their SR and PDF are two stores; a message sent again stores nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mosaic.config import HL7_MESSAGE_TYPES, Hl7Sender, Hl7Settings
from mosaic.core.errors import InvalidObject
from mosaic.core.status import StorageStatus
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.policy import ALL, Permission, Principal
from mosaic.hl7.ack import acknowledgement
from mosaic.hl7.adt import MERGE_EVENTS, PATIENT_EVENTS, PatientData, patient_of, prior_identity
from mosaic.hl7.charsets import CharsetError, codec_for, header_fields
from mosaic.hl7.message import Hl7Error, Message, read_message
from mosaic.hl7.orders import ORDER_MESSAGES, orders_of
from mosaic.hl7.reports import DOCUMENT_EVENTS, RESULT_EVENTS, reports_of
from mosaic.index.query import Scope
from mosaic.services.origin import Door, IngestOrigin
from mosaic.services.patients import DuplicatePatient, PatientService, UnknownPatient
from mosaic.services.reports import ReportError, ReportService
from mosaic.services.worklist import ForeignOrder, WorklistService

log = logging.getLogger("mosaic.hl7")

SUPPORTED: dict[str, frozenset[str]] = {"ADT": PATIENT_EVENTS | MERGE_EVENTS, **ORDER_MESSAGES,
                                        "ORU": RESULT_EVENTS, "MDM": DOCUMENT_EVENTS}
assert set(SUPPORTED) == set(HL7_MESSAGE_TYPES), "config.HL7_MESSAGE_TYPES names what the door applies"
"""Message types Mosaic applies, and their trigger events."""


@dataclass(frozen=True)
class Answer:
    """The acknowledgement to send (encoded) and what the door decided (for the connection's log)."""

    payload: bytes
    code: str


class Hl7Door:
    def __init__(self, settings: Hl7Settings, patients: PatientService, audit: AuditTrail,
                 worklist: WorklistService | None = None, reports: ReportService | None = None) -> None:
        self.settings = settings
        self.patients = patients
        self.audit = audit
        self.worklist = worklist
        self.reports = reports

    def sender(self, application: str, facility: str, address: str) -> Hl7Sender | None:
        for sender in self.settings.senders:
            if sender.application != application:
                continue
            if sender.facility and sender.facility != facility:
                continue
            if sender.addresses and address not in sender.addresses:
                continue
            return sender
        return None

    def handle(self, raw: bytes, address: str) -> Answer:
        """Apply one framed message from ``address`` and build its acknowledgement."""
        try:
            message = read_message(raw, self.settings.default_charset)
        except CharsetError as exc:
            return self._refusal(raw, Hl7Error("AR", 207, str(exc), "MSH^1^18"), address)
        except Hl7Error as exc:
            return self._refusal(raw, exc, address)
        name = f"hl7:{message.sending_application}^{message.sending_facility}"
        entry = AuditEntry(action=AuditAction.MODIFY, outcome="success", actor=name, actor_kind="hl7",
                           address=address, interface="hl7",
                           detail={"message": f"{message.message_type}^{message.trigger_event}",
                                   "control_id": message.control_id[:64]})
        try:
            sender = self.sender(message.sending_application, message.sending_facility, address)
            if sender is None:
                entry.outcome = "denied"
                raise Hl7Error("AR", 207, f"sending application {message.sending_application!r} of facility "
                                          f"{message.sending_facility!r} is not a configured HL7 sender "
                                          f"(hl7.senders) for address {address}", "MSH^1^3")
            self._check(message, sender, entry)
            self._apply(message, sender, entry)
            code, error = "AA", None
        except Hl7Error as exc:
            code, error = exc.ack_code, exc
            if entry.outcome == "success":
                entry.outcome = "failure"
            entry.detail["reason"] = str(exc)[:500]
        except Exception as exc:  # the index or a bug: the sender gets AE 207 and may send it again
            log.exception("HL7 %s from %s could not be applied", message.control_id, address)
            code, error = "AE", Hl7Error("AE", 207, f"internal error: {type(exc).__name__}")
            entry.outcome = "failure"
            entry.detail["reason"] = f"{type(exc).__name__}: {exc}"[:500]
        self.audit.record(entry)
        text = acknowledgement(message.raw_header, code, error=error, trigger_event=message.trigger_event)
        return Answer(text.encode(message.codec, errors="replace"), code)

    def _check(self, message: Message, sender: Hl7Sender, entry: AuditEntry) -> None:
        kind, event = message.message_type, message.trigger_event
        if not message.version.startswith("2."):
            raise Hl7Error("AR", 203, f"HL7 version {message.version!r} is not 2.x", "MSH^1^12")
        if kind not in SUPPORTED:
            raise Hl7Error("AR", 200, f"message type {kind!r} is not one Mosaic applies "
                                      f"({', '.join(sorted(SUPPORTED))})", "MSH^1^9^1^1")
        if event not in SUPPORTED[kind]:
            raise Hl7Error("AR", 201, f"{kind} event {event!r} is not one Mosaic applies "
                                      f"({', '.join(sorted(SUPPORTED[kind]))})", "MSH^1^9^1^2")
        if kind not in sender.may_send:
            entry.outcome = "denied"
            raise Hl7Error("AR", 200, f"{sender.application} may not send {kind} messages "
                                      f"(hl7.senders may_send: {', '.join(sender.may_send) or 'none'})",
                           "MSH^1^9^1^1")

    def _apply(self, message: Message, sender: Hl7Sender, entry: AuditEntry) -> None:
        patient = patient_of(message, default_issuer=sender.issuer)
        entry.PatientID, entry.IssuerOfPatientID = patient.PatientID, patient.IssuerOfPatientID
        reference = f"{message.message_type}^{message.trigger_event} {message.control_id}"
        if message.message_type in ("ORU", "MDM"):
            self._store_report(message, sender, patient, entry)
            return
        if message.message_type in ORDER_MESSAGES:
            if self.worklist is None:
                raise Hl7Error("AR", 200, "this node keeps no worklist", "MSH^1^9^1^1")
            orders = orders_of(message, patient)
            entry.detail["accession"] = ",".join(dict.fromkeys(order.AccessionNumber for order in orders))[:200]
            try:
                entry.detail["order"] = self.worklist.apply(orders, facility=sender.patient_facility,
                                                            source=entry.actor, reference=reference,
                                                            demographics=patient.demographics)
            except LookupError as exc:
                where = "IPC^1^1" if message.message_type == "OMI" else "OBR^1^18"
                raise Hl7Error("AE", 204, str(exc), where) from exc
            except ForeignOrder as exc:
                where = "IPC^1^1" if message.message_type == "OMI" else "OBR^1^18"
                raise Hl7Error("AE", 205, str(exc), where) from exc
            return
        if message.trigger_event in MERGE_EVENTS:
            old = prior_identity(message, default_issuer=sender.issuer)
            entry.detail["prior"] = f"{old[0]}^^^{old[1]}" if old[1] else old[0]
            survivor = (patient.PatientID, patient.IssuerOfPatientID)
            try:
                if message.trigger_event == "A40":
                    entry.detail["studies_moved"] = self.patients.merge(
                        survivor, old, patient.demographics, source=entry.actor, reference=reference)
                else:
                    self.patients.change_identifier(survivor, old, source=entry.actor, reference=reference)
            except UnknownPatient as exc:
                raise Hl7Error("AE", 204, f"{exc} is not in the archive (or was merged already)",
                               "MRG^1^1^1^1") from exc
            except DuplicatePatient as exc:
                raise Hl7Error("AE", 205, str(exc), "PID^1^3^1^1") from exc
            return
        change = self.patients.apply(patient.PatientID, patient.IssuerOfPatientID, patient.demographics,
                                     source=entry.actor, reference=reference)
        entry.detail["patient"] = "created" if change.created else "updated" if change.changed else "unchanged"
        if change.changed:
            entry.detail["changed"] = sorted(change.changed)

    def _store_report(self, message: Message, sender: Hl7Sender, patient: PatientData, entry: AuditEntry) -> None:
        if self.reports is None:
            raise Hl7Error("AR", 200, "this node stores no reports", "MSH^1^9^1^1")
        reports = reports_of(message, patient, sender=entry.actor)
        entry.detail["accession"] = ",".join(dict.fromkeys(report.AccessionNumber for report in reports))[:200]
        facilities = frozenset({sender.patient_facility or ALL})
        principal = Principal(name=entry.actor, kind="hl7", permissions=frozenset({Permission.STORE}),
                              facilities=facilities, address=entry.address, interface="hl7")
        origin = IngestOrigin(door=Door.HL7, principal=principal, calling_ae_title=sender.application[:16],
                              address=entry.address, facility=sender.patient_facility)
        scope = Scope.everything() if ALL in facilities else Scope(facilities=facilities)
        try:
            stored = self.reports.store(reports, origin, scope=scope)
        except ReportError as exc:
            location = "PID^1^3^1^1" if exc.location == "patient" else exc.location
            raise Hl7Error("AE", 204, str(exc), location) from exc
        except InvalidObject as exc:
            if exc.status == StorageStatus.NOT_AUTHORIZED:  # the study is another facility's
                raise Hl7Error("AE", 204, f"the report's study is not one this sender may add to: {exc.reason}",
                               "OBR^1") from exc
            raise Hl7Error("AE", 207, f"the report could not be stored: {exc.reason}", "OBR^1") from exc
        entry.StudyInstanceUID = stored[0].StudyInstanceUID
        entry.SOPInstanceUID = stored[0].SOPInstanceUID
        entry.detail["reports"] = [f"{item.kind} {item.SOPInstanceUID} {item.outcome}" for item in stored]

    def refused_handshake(self, address: str, reason: str) -> None:
        """A connection whose TLS handshake failed (no or an untrusted client certificate): audited, nothing read."""
        self.audit.record(AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor="hl7:unknown",
                                     actor_kind="hl7", address=address, interface="hl7",
                                     detail={"reason": f"TLS handshake failed: {reason}"[:500]}))

    def _refusal(self, raw: bytes, error: Hl7Error, address: str) -> Answer:
        """An ACK for a message that could not even be read, from whatever of its header is readable, in the
        message's own character set when that can be told (else 8859/1, which any byte decodes in)."""
        try:
            codec = codec_for(raw, self.settings.default_charset)[1]
        except CharsetError:
            codec = "latin-1"
        try:
            header = [field.decode("latin-1") for field in header_fields(raw)]
            header[0] = raw[3:4].decode("latin-1")
        except CharsetError:
            header = []
        self.audit.record(AuditEntry(action=AuditAction.MODIFY, outcome="failure", actor="hl7:unknown",
                                     actor_kind="hl7", address=address, interface="hl7",
                                     detail={"reason": str(error)[:500]}))
        text = acknowledgement(header, error.ack_code, error=error)
        return Answer(text.encode(codec, errors="replace"), error.ack_code)
