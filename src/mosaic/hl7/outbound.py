"""Outbound HL7 v2: ORU^R01 "images available" to each of ``hl7.receivers``, from the outbox.

Each receiver has an outbox consumer of the ``StudyAvailable`` announcements under its own cursor
(``hl7:<name>``): messages go out one at a time, in order, each waiting for its ACK on the connection (original
mode); ``AA`` or ``CA`` delivers it and moves the cursor past it, anything else (``AE``, ``AR``, no ACK within
the receiver's ``timeout``, a refused or broken connection) is a failure retried after ``retry_seconds``,
doubling up to ``max_retry_seconds``. The connection stays open between messages and is opened again after a
failure.

**At least once, with an idempotency key.** MSH-10 (the message control ID) is derived from the announcement's
outbox seq and the receiver's name, never random: a message sent again — after an ``AE``, a lost ACK, or a
crash between the ACK and the move of the cursor — carries the control ID of the first attempt, so a receiver
that has already applied that control ID can acknowledge and drop the copy. A new stable period of a study
(images arrived after its announcement) is a new announcement with a control ID of its own.

The message (HL7 v2.5.1 ORU^R01, as IHE RAD-132 "images available" has it): PID with PatientID^^^Issuer and the
patient's current name, birth date and sex; ORC-1 ``SC`` (status changed), ORC-2/3 the placer/filler order
numbers when the worklist knows the order, ORC-5 ``CM`` (completed); OBR-4 the requested procedure (else the
study description), OBR-7 the study date and time, OBR-18 the accession number, OBR-22 the announcement time,
OBR-24 the first modality, OBR-25 ``I`` (images available, no report yet); OBX-1 ``ST`` 113014^DICOM Study^DCM
with the Study Instance UID, and with ``http.public_url`` an OBX-2 ``RP`` with the WADO-RS URL of the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
from datetime import UTC, datetime

from mosaic.config import Hl7Receiver
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.hl7.ack import escape
from mosaic.hl7.message import Hl7Error, read_message
from mosaic.hl7.mllp import Framing, frame, read_frames
from mosaic.jobs.outbox import OutboxConsumer
from mosaic.services.availability import AnnouncedOrder, AnnouncedPatient, StudyAvailability, StudyAvailable

log = logging.getLogger("mosaic.hl7.outbound")

CHARSET = "UNICODE UTF-8"
"""MSH-18 of every message Mosaic sends (names of any script)."""
MAX_ACK_BYTES = 1024 * 1024


class DeliveryFailed(Exception):
    """The receiver did not accept a message (``AE``/``AR``, no ACK, or an ACK of another message)."""


def control_id(receiver: str, seq: int) -> str:
    """MSH-10 of the announcement ``seq`` for ``receiver``: the same every time it is sent (at most 20 characters,
    the ST length of MSH-10 in v2.5.1)."""
    tag = hashlib.sha256(receiver.encode()).hexdigest()[:6].upper()
    return f"M{tag}{seq}"[:20]


def _xpn(dicom_name: str) -> str:
    """A DICOM PN (its alphabetic group: family^given^middle^prefix^suffix) as an HL7 XPN
    (family^given^middle^suffix^prefix), escaped."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(part) for part in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def oru_message(announcement: StudyAvailable, receiver: Hl7Receiver, *, sending_application: str,
                patient: AnnouncedPatient | None, order: AnnouncedOrder | None, wado_root: str | None = None,
                now: datetime | None = None) -> str:
    """The ORU^R01 v2.5.1 "images available" of one announcement, segments ending in ``\\r``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    announced = announcement.announced_at.strftime("%Y%m%d%H%M%S")
    msh = ["MSH", "^~\\&", escape(sending_application), "", escape(receiver.application), escape(receiver.facility),
           stamp, "", "ORU^R01^ORU_R01", control_id(receiver.name, announcement.seq), "P", "2.5.1", "", "", "", "",
           "", CHARSET]
    identifier = escape(announcement.PatientID)
    if announcement.IssuerOfPatientID:
        identifier += f"^^^{escape(announcement.IssuerOfPatientID)}"
    pid = ["PID", "1", "", identifier, "", _xpn(patient.PatientName) if patient else "", "",
           escape(patient.PatientBirthDate) if patient else "", escape(patient.PatientSex) if patient else ""]
    placer = escape(order.placer_order) if order else ""
    filler = escape(order.filler_order) if order and order.filler_order else escape(announcement.AccessionNumber)
    orc = ["ORC", "SC", placer, filler, "", "CM"]
    service = ("^".join(escape(part) for part in order.RequestedProcedureCode.split("^"))
               if order and order.RequestedProcedureCode
               else "^" + escape(order.RequestedProcedureDescription if order and order.RequestedProcedureDescription
                                 else announcement.StudyDescription or "Imaging study"))
    modality = announcement.ModalitiesInStudy[0] if announcement.ModalitiesInStudy else ""
    obr = ["OBR", "1", placer, filler, service, "", "",
           (announcement.StudyDate + announcement.StudyTime.split(".")[0])[:14], "", "", "", "", "", "", "", "",
           "", "", escape(announcement.AccessionNumber), "", "", "", announced, "", escape(modality), "I"]
    segments = ["|".join(msh), "|".join(pid), "|".join(orc), "|".join(obr),
                "|".join(["OBX", "1", "ST", "113014^DICOM Study^DCM", "", announcement.StudyInstanceUID,
                          "", "", "", "", "", "F"])]
    if wado_root:
        url = f"{wado_root.rstrip('/')}/studies/{announcement.StudyInstanceUID}"
        segments.append("|".join(["OBX", "2", "RP", "113014^DICOM Study^DCM", "",
                                  f"{escape(url)}^{escape(sending_application)}^Application^DICOM",
                                  "", "", "", "", "", "F"]))
    return "\r".join(segments) + "\r"


class Hl7Receiving:
    """The MLLP connection to one receiver: send a message, read its ACK (the connection kept for the next)."""

    def __init__(self, receiver: Hl7Receiver) -> None:
        self.receiver = receiver
        self._socket: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None
        if receiver.tls:
            self._tls = ssl.create_default_context(
                cafile=str(receiver.tls_ca_file) if receiver.tls_ca_file else None)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2

    def exchange(self, message: bytes) -> bytes:
        """Send one framed message and return its ACK's payload; OSError or :class:`DeliveryFailed` when there is
        none (the connection is closed then, and opened again by the next call)."""
        try:
            connection = self._connected()
            connection.sendall(frame(message))
            answer = next(read_frames(connection, max_bytes=MAX_ACK_BYTES, framing=Framing()), None)
        except Exception:
            self.close()
            raise
        if answer is None:
            self.close()
            raise DeliveryFailed(f"no ACK from {self._where} within {self.receiver.timeout:g} s")
        return answer

    @property
    def _where(self) -> str:
        return f"HL7 receiver {self.receiver.name} ({self.receiver.host}:{self.receiver.port})"

    def _connected(self) -> socket.socket:
        if self._socket is None:
            plain = socket.create_connection((self.receiver.host, self.receiver.port), timeout=self.receiver.timeout)
            if self._tls is not None:
                try:
                    self._socket = self._tls.wrap_socket(plain, server_hostname=self.receiver.host)
                except Exception:
                    plain.close()
                    raise
            else:
                self._socket = plain
            self._socket.settimeout(self.receiver.timeout)
        return self._socket

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None


class Hl7Notifier:
    """Sends every announcement to one receiver, in order, until it acknowledges each (see the module)."""

    def __init__(self, receiver: Hl7Receiver, availability: StudyAvailability, audit: AuditTrail, *,
                 sending_application: str, wado_root: str | None = None) -> None:
        self.receiver = receiver
        self.availability = availability
        self.audit = audit
        self.sending_application = sending_application
        self.wado_root = wado_root
        self.connection = Hl7Receiving(receiver)
        self._refusals: dict[int, int] = {}
        """Event seq → AE/AR answers it got (in this process)."""
        self.outbox: OutboxConsumer[StudyAvailable] = availability.consumer(
            f"hl7:{receiver.name}", self.deliver, on_failure=self._failed, retry_seconds=receiver.retry_seconds,
            max_retry_seconds=receiver.max_retry_seconds, thread_name=f"hl7-out-{receiver.name}")

    def start(self) -> None:
        self.outbox.start()

    def stop(self) -> None:
        self.outbox.stop()
        self.availability.forget(self.outbox)
        self.connection.close()

    def deliver(self, announcement: StudyAvailable) -> None:
        """Send the announcement's ORU^R01 and wait for its ACK; raises unless it is ``AA``/``CA``."""
        text = oru_message(announcement, self.receiver, sending_application=self.sending_application,
                           patient=self.availability.patient(announcement.PatientID, announcement.IssuerOfPatientID),
                           order=self.availability.order(announcement), wado_root=self.wado_root)
        control = control_id(self.receiver.name, announcement.seq)
        entry = AuditEntry(action=AuditAction.EXPORT, outcome="success", actor=f"hl7:{self.receiver.name}",
                           actor_kind="hl7", address=self.receiver.host, interface="hl7",
                           PatientID=announcement.PatientID, IssuerOfPatientID=announcement.IssuerOfPatientID,
                           StudyInstanceUID=announcement.StudyInstanceUID,
                           detail={"message": "ORU^R01", "control_id": control, "event": announcement.seq,
                                   "destination": f"{self.receiver.application}^{self.receiver.facility} "
                                                  f"{self.receiver.host}:{self.receiver.port}"})
        answer = self.connection.exchange(text.encode("utf-8"))
        try:
            ack = read_message(answer, CHARSET)
            code, acknowledged = ack.value("MSA.F1").upper(), ack.value("MSA.F2")
        except Exception as exc:  # CharsetError, Hl7Error: not an ACK Mosaic can read
            code, acknowledged = "", ""
            entry.detail["reason"] = f"unreadable ACK: {exc}"[:500]
        if code in ("AA", "CA") and acknowledged == control:
            self._refusals.pop(announcement.seq, None)
            entry.detail["ack"] = code
            self.audit.record(entry)
            return
        entry.outcome = "failure"
        entry.detail["ack"] = code
        if acknowledged != control and code:
            entry.detail["reason"] = f"the ACK answers {acknowledged!r}, not {control!r}"
        elif code:
            entry.detail["reason"] = (ack.value("ERR.F8") or ack.value("MSA.F3") or code)[:500]
            refusals = self._refusals.get(announcement.seq, 0) + 1
            self._refusals[announcement.seq] = refusals
            if refusals >= self.receiver.max_refusals:  # the receiver will not take it: the next ones must go
                entry.detail["set_aside"] = f"refused {refusals} times (hl7.receivers max_refusals)"
                self.audit.record(entry)
                del self._refusals[announcement.seq]
                log.error("HL7 receiver %s refused ORU^R01 %s for study %s %d times (%s); set aside, sending the "
                          "next announcements", self.receiver.name, control, announcement.StudyInstanceUID,
                          refusals, entry.detail["reason"])
                return
        self.audit.record(entry)
        self.connection.close()
        raise DeliveryFailed(f"{self.receiver.name} did not accept ORU^R01 {control} for study "
                             f"{announcement.StudyInstanceUID}: {entry.detail.get('reason') or code}")

    def _failed(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, (OSError, DeliveryFailed, Hl7Error)):
            log.warning("HL7 receiver %s (%s:%d): %s; sending again in %.1f s", self.receiver.name,
                        self.receiver.host, self.receiver.port, exc, delay)
        else:
            log.exception("HL7 receiver %s: delivery failed; sending again in %.1f s", self.receiver.name, delay,
                          exc_info=exc)
