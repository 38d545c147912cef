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
    patient_id, issuer = "", ""
    identifiers = _field(pid, 3)
    for repetition in identifiers:
        value = message.parsed.unescape(_component(repetition, 1))
        if value and value != DELETE:
            patient_id = value
            issuer = message.parsed.unescape(_component(repetition, 4, 1) or _component(repetition, 4, 2)) \
                or default_issuer
            break
    if not patient_id:
        raise Hl7Error("AE", 101, "PID-3 (patient identifier list) has no identifier", "PID^1^3^1^1")
    if len(patient_id) > 64 or len(issuer) > 64:
        raise Hl7Error("AE", 102, "PID-3: a patient identifier or its assigning authority is longer than 64 "
                                  "characters (the DICOM LO limit)", "PID^1^3^1^1")
    demographics: dict[str, str | None] = {
        "PatientName": _person_name(message, _field(pid, 5)),
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
    for repetition in _field(mrgs[0], 1):
        value = message.parsed.unescape(_component(repetition, 1))
        if value and value != DELETE:
            issuer = message.parsed.unescape(_component(repetition, 4, 1) or _component(repetition, 4, 2)) \
                or default_issuer
            return value, issuer
    raise Hl7Error("AE", 101, "MRG-1 (prior patient identifier list) has no identifier", "MRG^1^1^1^1")


def _field(segment: hl7.Segment, number: int) -> list[object]:
    try:
        field = segment[number]
    except IndexError:
        return []
    if isinstance(field, hl7.Field) or (isinstance(field, list) and not isinstance(field, str)):
        return list(field) if field and isinstance(field[0], (hl7.Repetition, list)) else [field]
    return [field]


def _component(repetition: object, number: int, sub: int | None = None) -> str:
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
    return message.parsed.unescape(_component(_field(segment, number)[0], 1))[:64]


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


def _person_name(message: Message, repetitions: list[object], *, xcn: bool = False) -> str | None:
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
        parts = [message.parsed.unescape(_component(repetition, number + shift)) for number in range(1, 9)]
        family, given, middle, suffix, prefix = parts[0], parts[1], parts[2], parts[3], parts[4]
        code = "" if xcn else parts[7]  # XPN-8; an XCN's representation code is its 15th component
        if xcn:
            code = message.parsed.unescape(_component(repetition, 15))
        representation = (code or ("A" if index == 0 else "")).upper()
        if representation not in groups or groups[representation]:
            continue
        groups[representation] = "^".join([family, given, middle, prefix, suffix]).rstrip("^")
    name = "=".join([groups["A"], groups["I"], groups["P"]]).rstrip("=")
    return name[:320]
