"""The report a result message (ORU^R01) or document message (MDM^T02) carries, as the archive stores it.

ORU^R01: each OBR group (an OBR and the OBX segments after it, up to the next OBR) is a report of its own, so a
report that covers several procedures is stored in each one's study; the message is applied whole or not at all.
MDM^T02: TXA and its OBX segments (an OBR when sent). Text observations (OBX-2 TX, FT, ST; FT's ``\\.br\\`` a new
line, HL7 escapes undone) are findings, or conclusions when OBX-3 says impression or conclusion (``&IMP``, LOINC
19005-8, its text); consecutive ones of one OBX-3 and sub-ID (OBX-4) are one text. An embedded document is an OBX-2
ED whose OBX-5 is ``application^type^subtype^Base64^data``: it must decode to a PDF. The study: an OBX whose OBX-3
is ``113014^DICOM Study^DCM`` (IHE; OBX-2 RP, ST or UI, its UID in OBX-5.1) or ZDS-1, else the accession number
(OBR-18, else the filler order number OBR-3, TXA-15). The status: OBR-25 (else the first OBX-11; MDM: TXA-17 AU / LA
authenticated → F); the interpreter OBR-32 (MDM: TXA-22, else TXA-9); the time OBR-22, else OBR-7 (MDM: TXA-4), else
MSH-7: an HL7 DTM of 8, 10, 12 or 14 digits (a fraction and UTC offset dropped), else AE 102 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime

import hl7

from mosaic.hl7.adt import PatientData, component, field, person_name
from mosaic.hl7.message import Hl7Error, Message
from mosaic.services.reports import Observation, Report

RESULT_EVENTS = frozenset({"R01"})
DOCUMENT_EVENTS = frozenset({"T02"})
"""MDM T02: original document notification and content."""
DICOM_STUDY = "113014"
"""DCM "DICOM Study": the OBX that names the report's study (IHE)."""
_TEXT_TYPES = frozenset({"TX", "FT", "ST"})
_UID_TYPES = frozenset({"RP", "ST", "UI"})
_CONCLUSION_CODES = frozenset({"&IMP", "IMP", "19005-8", "121076", "121077", "121072", "121073"})
_AUTHENTICATED = frozenset({"AU", "LA"})
"""HL7 Table 0271 (document completion status): authenticated, legally authenticated."""
_DTM = re.compile(r"^(\d{8}|\d{10}|\d{12}|\d{14})(?:\.\d{1,4})?(?:[+-]\d{4})?$")
"""What a report's time may be: an HL7 DTM to the day, hour, minute or second."""
_DTM_FORMATS = ("%Y", "%m", "%d", "%H", "%M", "%S")


def reports_of(message: Message, patient: PatientData, *, sender: str) -> list[Report]:
    """The reports of an ORU^R01 (one per OBR group: a report of several procedures) or MDM^T02 (one); raises
    :class:`Hl7Error` naming the field that is wrong."""
    segments = list(message.parsed)
    if message.message_type == "MDM":
        return [report_of(message, patient, sender=sender)]
    obrs = [segment for segment in segments if str(segment[0]) == "OBR"]
    if not obrs:
        raise Hl7Error("AE", 100, "a result message (ORU) needs an OBR segment", "OBR")
    return [report_of(message, patient, sender=sender, obr=obr, number=number)
            for number, obr in enumerate(obrs, start=1)]


def report_of(message: Message, patient: PatientData, *, sender: str, obr: hl7.Segment | None = None,
              number: int = 1) -> Report:
    """The report of one OBR group (``obr``, the ``number``-th of its message; the first when None) of an
    ORU^R01, or of an MDM^T02; raises :class:`Hl7Error` naming the field that is wrong."""
    document = message.message_type == "MDM"
    segments = list(message.parsed)
    obr = obr if obr is not None else _first(segments, "OBR")
    txa = _first(segments, "TXA")
    if document and txa is None:
        raise Hl7Error("AE", 100, "a document message (MDM) needs a TXA segment", "TXA")
    if not document and obr is None:
        raise Hl7Error("AE", 100, "a result message (ORU) needs an OBR segment", "OBR")
    observations = _observations(segments, start=obr if not document else txa)
    group = _group(segments, obr) if not document and obr is not None else segments
    if not observations:
        raise Hl7Error("AE", 101, "the report has no OBX segment (no text, no document)", "OBX")

    def text(segment: hl7.Segment | None, number: int, part: int = 1) -> str:
        if segment is None or not field(segment, number):
            return ""
        return message.parsed.unescape(component(field(segment, number)[0], part))

    report = Report(PatientID=patient.PatientID, IssuerOfPatientID=patient.IssuerOfPatientID,
                    StudyInstanceUID="", AccessionNumber="", result_status="", sender=sender,
                    control_id=message.control_id, demographics=patient.demographics)
    report.code = (text(obr, 4, 1), text(obr, 4, 2), text(obr, 4, 3))
    report.title = report.code[1][:64]
    for position, (index, segment) in enumerate(observations, start=1):
        kind = text(segment, 2).upper()
        code, meaning = text(segment, 3, 1), text(segment, 3, 2)
        where = f"OBX^{index}^5"
        if code == DICOM_STUDY and kind in _UID_TYPES:
            report.StudyInstanceUID = text(segment, 5, 1)
            report.study_location = where
        elif kind in _TEXT_TYPES:
            value = _text_value(message, segment)
            if not value.strip():
                continue
            conclusion = code.upper() in _CONCLUSION_CODES or any(
                word in meaning.upper() for word in ("IMPRESSION", "CONCLUSION"))
            previous = observations[position - 2][1] if position > 1 else None
            same = (previous is not None and report.observations and text(previous, 2).upper() in _TEXT_TYPES
                    and text(previous, 3, 1) == code and text(previous, 4) == text(segment, 4)
                    and report.observations[-1].conclusion == conclusion)
            if same:
                report.observations[-1] = Observation(f"{report.observations[-1].text}\n{value}", conclusion)
            else:
                report.observations.append(Observation(value, conclusion))
        elif kind == "ED":
            if report.pdf is not None:
                raise Hl7Error("AE", 102, "the report embeds more than one document (one PDF per message)", where)
            report.pdf = _pdf(segment, where)
            report.pdf_title = meaning[:64]
    if not report.StudyInstanceUID:
        zds = _first(group, "ZDS")
        report.StudyInstanceUID = text(zds, 1)
        if report.StudyInstanceUID:
            report.study_location = "ZDS^1^1^1^1"
    report.AccessionNumber, location = next(
        ((value, where) for value, where in ((text(obr, 18), f"OBR^{number}^18"),
                                             (text(obr, 3), f"OBR^{number}^3^1^1"),
                                             (text(txa, 15), "TXA^1^15^1^1")) if value), ("", f"OBR^{number}^18"))
    if len(report.AccessionNumber) > 16:
        raise Hl7Error("AE", 102, f"accession number {report.AccessionNumber!r} is longer than 16 characters (SH)",
                       location)
    if not report.StudyInstanceUID:
        if not report.AccessionNumber:
            raise Hl7Error("AE", 101, "the report names no study: no Study Instance UID (OBX 113014, ZDS-1) and "
                                      "no accession number (OBR-18)", f"OBR^{number}^18")
        report.study_location = location
    if len(report.StudyInstanceUID) > 64 or (not report.StudyInstanceUID.replace(".", "").isdigit() \
            and report.StudyInstanceUID):
        raise Hl7Error("AE", 102, f"{report.StudyInstanceUID!r} is not a Study Instance UID", report.study_location)
    if document:
        report.result_status = "F" if text(txa, 17).upper() in _AUTHENTICATED else "P"
        interpreter = person_name(message, field(txa, 22), xcn=True) if txa is not None else None
        report.interpreter = interpreter or (person_name(message, field(txa, 9), xcn=True) if txa else "") or ""
        times: tuple[tuple[str, str], ...] = ((text(obr, 22), "OBR^1^22"), (text(obr, 7), "OBR^1^7"),
                                              (text(txa, 4), "TXA^1^4"))
    else:
        first_status = next((text(segment, 11) for _, segment in observations if text(segment, 11)), "")
        report.result_status = (text(obr, 25) or first_status or "P")[:1].upper()
        report.interpreter = _interpreter(message, obr)
        times = ((text(obr, 22), f"OBR^{number}^22"), (text(obr, 7), f"OBR^{number}^7"))
    when, when_location = next(((value, where) for value, where in (
        *times, (message.value("MSH.F7").split("^")[0], "MSH^1^7")) if value.strip()), ("", "MSH^1^7"))
    report.observed = _dicom_datetime(when, when_location) if when.strip() else ""
    return report


def _dicom_datetime(value: str, location: str) -> str:
    """An HL7 DTM (``YYYYMMDD[HH[MM[SS]]]``, an optional fraction and UTC offset dropped) as DICOM DT digits;
    raises :class:`Hl7Error` (AE 102 at ``location``) for any other shape or a date or time that does not exist."""
    found = _DTM.match(value.strip())
    if found is None:
        raise Hl7Error("AE", 102, f"{value!r} is not an HL7 date/time (YYYYMMDD[HH[MM[SS]]][.S][+ZZZZ])", location)
    digits = found.group(1)
    parts = [digits[:4], *(digits[start:start + 2] for start in range(4, len(digits), 2))]
    try:  # separators: strptime's %m / %d / %H must each take their two digits
        datetime.strptime("-".join(parts), "-".join(_DTM_FORMATS[:len(parts)]))
    except ValueError as exc:
        raise Hl7Error("AE", 102, f"{value!r} is not a date/time that exists: {exc}", location) from exc
    return digits


def _group(segments: list[hl7.Segment], obr: hl7.Segment) -> list[hl7.Segment]:
    """The segments of ``obr``'s group: from it up to the next OBR."""
    start = next(index for index, segment in enumerate(segments) if segment is obr)
    end = next((index for index in range(start + 1, len(segments)) if str(segments[index][0]) == "OBR"),
               len(segments))
    return segments[start:end]


def _first(segments: list[hl7.Segment], name: str) -> hl7.Segment | None:
    return next((segment for segment in segments if str(segment[0]) == name), None)


def _observations(segments: list[hl7.Segment], *, start: hl7.Segment | None) -> list[tuple[int, hl7.Segment]]:
    """The OBX segments after ``start`` up to the next OBR, each with its place among the message's OBX (ERR-2)."""
    found: list[tuple[int, hl7.Segment]] = []
    started = start is None
    number = 0
    for segment in segments:
        name = str(segment[0])
        if segment is start:
            started = True
        elif name == "OBR" and started and start is not None and str(start[0]) == "OBR":
            break
        if name == "OBX":
            number += 1
            if started:
                found.append((number, segment))
    return found


def _text_value(message: Message, segment: hl7.Segment) -> str:
    """OBX-5 as text: its repetitions are lines; escapes undone (FT's \\.br\\ a line break)."""
    lines = []
    for repetition in field(segment, 5):
        raw = str(repetition)
        if raw == '""':
            continue
        lines.append(message.parsed.unescape(raw).replace("\r", "\n"))
    return "\n".join(lines).rstrip()


def _pdf(segment: hl7.Segment, where: str) -> bytes:
    repetitions = field(segment, 5)
    if not repetitions:
        raise Hl7Error("AE", 101, "the embedded document (OBX-2 ED) has no OBX-5", where)
    subtype = component(repetitions[0], 3).upper()
    encoding = component(repetitions[0], 4).upper()
    data = component(repetitions[0], 5)
    if subtype and subtype != "PDF":
        raise Hl7Error("AE", 102, f"embedded documents of subtype {subtype!r} are not stored (PDF is)", where)
    if encoding not in ("BASE64", "B64"):
        raise Hl7Error("AE", 102, f"the embedded document's encoding is {encoding or 'not given'!r}, not Base64",
                       where)
    try:
        document = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Hl7Error("AE", 102, f"the embedded document is not valid Base64: {exc}", where) from exc
    if not document.startswith(b"%PDF"):
        raise Hl7Error("AE", 102, "the embedded document is not a PDF (its bytes do not start with %PDF)", where)
    return document


def _interpreter(message: Message, obr: hl7.Segment | None) -> str:
    """OBR-32 (principal result interpreter, NDL): its first component is a CNN, ID&family&given&middle&suffix&
    prefix, as a DICOM person name (family^given^middle^prefix^suffix)."""
    if obr is None or not field(obr, 32):
        return ""
    parts = [message.parsed.unescape(part) for part in component(field(obr, 32)[0], 1).split("&")]
    if len(parts) == 1:  # no subcomponents: the name sent as text (or only an ID)
        return parts[0] if not parts[0].isdigit() else ""
    family, given, middle, suffix, prefix = (parts + [""] * 6)[1:6]
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")[:320]
