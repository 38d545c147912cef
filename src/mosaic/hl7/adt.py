"""The patient an ADT message names, and its demographics, as the archive keeps them (PatientID + issuer, the
Patient module's attributes).

PID-3 (patient identifier list): the first repetition with an ID; its assigning authority (PID-3.4, the
namespace ID) is the IssuerOfPatientID, or the sender's configured issuer when it sends none. PID-5 (XPN:
family^given^middle^suffix^prefix) becomes a DICOM person name (family^given^middle^prefix^suffix), its
repetitions by representation (XPN-8: A alphabetic, I ideographic, P phonetic) the three component groups.
An empty field leaves the attribute as it is; ``""`` clears it (HL7 v2.5.1 2.5.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import hl7

from mosaic.hl7.message import Hl7Error, Message

PATIENT_EVENTS = frozenset({"A01", "A04", "A05", "A08", "A28", "A31"})
"""ADT events that create or update a patient: admit, register, pre-admit, update, add person, update person."""
MERGE_EVENTS = frozenset({"A40", "A47"})
"""Merge patient (MRG-1 into PID-3) and change patient identifier list (MRG-1 becomes PID-3)."""

_SEX = {"M": "M", "F": "F", "O": "O", "U": "", "A": "O", "N": "", "X": "O"}
"""HL7 Table 0001 → DICOM Patient's Sex (M, F, O; unknown left empty)."""
DELETE = '""'


@dataclass(frozen=True)
class PatientData:
    PatientID: str
    IssuerOfPatientID: str
    demographics: dict[str, str | None]


def patient_of(message: Message, *, default_issuer: str = "") -> PatientData:
    """The patient of an ADT message's PID segment; raises :class:`Hl7Error` (AE) when it has none."""
    pids = message.segments("PID")
    if not pids:
        raise Hl7Error("AE", 100, "the message has no PID segment", "PID")
    pid = pids[0]
    patient_id, issuer = _identifier(message, pid, 3, default_issuer)
    demographics: dict[str, str | None] = {
        "PatientName": person_name(message, field(pid, 5)),
        "PatientBirthDate": _date(message, pid, 7),
        "PatientBirthTime": _time(message, pid, 7),
        "PatientSex": _coded(message, pid, 8, _SEX),
        "EthnicGroup": _text(message, pid, 22),
    }
    return PatientData(patient_id, issuer, demographics)


def prior_identity(message: Message, *, default_issuer: str = "") -> tuple[str, str]:
    """MRG-1 (prior patient identifier list): the identity a merge or identifier change replaces."""
    mrgs = message.segments("MRG")
    if not mrgs:
        raise Hl7Error("AE", 100, "a merge needs an MRG segment", "MRG")
    return _identifier(message, mrgs[0], 1, default_issuer)


def _identifier(message: Message, segment: hl7.Segment, number: int, default_issuer: str) -> tuple[str, str]:
    """The first identifier of a CX list (PID-3, MRG-1) and its assigning authority (CX-4, the namespace or the
    universal ID), else ``default_issuer``; raises AE 101 when there is none, 102 when longer than DICOM's LO."""
    name = f"{segment[0]}-{number}"
    location = f"{segment[0]}^1^{number}^1^1"
    for repetition in field(segment, number):
        value = message.parsed.unescape(component(repetition, 1))
        if value and value != DELETE:
            issuer = message.parsed.unescape(component(repetition, 4, 1) or component(repetition, 4, 2)) \
                or default_issuer
            if len(value) > 64 or len(issuer) > 64:
                raise Hl7Error("AE", 102, f"{name}: a patient identifier or its assigning authority is longer than "
                                          "64 characters (the DICOM LO limit)", location)
            return value, issuer
    raise Hl7Error("AE", 101, f"{name} (patient identifier list) has no identifier", location)


def field(segment: hl7.Segment, number: int) -> list[object]:
    """The repetitions of field ``number`` of ``segment`` (one item for a field without repetitions)."""
    try:
        value = segment[number]
    except IndexError:
        return []
    if isinstance(value, list):  # python-hl7's Field: a list of repetitions, or of one field's parts
        return list(value) if value and isinstance(value[0], list) else [value]
    return [value]


def component(repetition: object, number: int, sub: int | None = None) -> str:
    """Component ``number`` (and subcomponent ``sub``) of one repetition, as sent (escapes kept), "" when absent."""
    if isinstance(repetition, str):
        return repetition if number == 1 and not sub else ""
    try:
        value = repetition[number - 1]  # type: ignore[index]
    except (IndexError, TypeError):
        return ""
    if sub is not None and not isinstance(value, str):
        try:
            value = value[sub - 1]
        except (IndexError, TypeError):
            return ""
    return str(value) if value is not None else ""


def _raw(segment: hl7.Segment, number: int) -> str | None:
    """The field as sent, or None when it is absent or empty (not sent: no change)."""
    try:
        value = str(segment[number])
    except IndexError:
        return None
    return value if value != "" else None


def _text(message: Message, segment: hl7.Segment, number: int) -> str | None:
    raw = _raw(segment, number)
    if raw is None:
        return None
    if raw == DELETE:
        return ""
    return message.parsed.unescape(component(field(segment, number)[0], 1))[:64]


def _coded(message: Message, segment: hl7.Segment, number: int, table: dict[str, str]) -> str | None:
    value = _text(message, segment, number)
    if value is None or value == "":
        return value
    return table.get(value.upper(), "")


def _date(message: Message, segment: hl7.Segment, number: int) -> str | None:
    value = _text(message, segment, number)
    if value is None or value == "":
        return value
    digits = value.split("+")[0].split("-")[0]
    if len(digits) < 8 or not digits[:8].isdigit():
        raise Hl7Error("AE", 102, f"PID-{number}: {value!r} is not a date (YYYYMMDD…)", f"PID^1^{number}^1^1")
    return digits[:8]


def _time(message: Message, segment: hl7.Segment, number: int) -> str | None:
    value = _text(message, segment, number)
    if value is None or value == "":
        return value
    digits = value.split("+")[0].split("-")[0]
    return digits[8:14] if len(digits) > 8 and digits[8:14].isdigit() else ""


def person_name(message: Message, repetitions: list[object], *, xcn: bool = False) -> str | None:
    """A DICOM person name from an XPN field (or an XCN one, ``xcn``: an ID component first)."""
    if not repetitions:
        return None
    if len(repetitions) == 1 and str(repetitions[0]) == "":
        return None
    if str(repetitions[0]) == DELETE:
        return ""
    groups = {"A": "", "I": "", "P": ""}
    for index, repetition in enumerate(repetitions):
        shift = 1 if xcn else 0
        parts = [message.parsed.unescape(component(repetition, number + shift)) for number in range(1, 9)]
        family, given, middle, suffix, prefix = parts[0], parts[1], parts[2], parts[3], parts[4]
        code = "" if xcn else parts[7]  # XPN-8; an XCN's representation code is its 15th component
        if xcn:
            code = message.parsed.unescape(component(repetition, 15))
        representation = (code or ("A" if index == 0 else "")).upper()
        if representation not in groups or groups[representation]:
            continue
        groups[representation] = "^".join([family, given, middle, prefix, suffix]).rstrip("^")
    name = "=".join([groups["A"], groups["I"], groups["P"]]).rstrip("=")
    return name[:320]
