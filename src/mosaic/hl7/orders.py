"""The scheduled procedure steps an order message describes, as the worklist keeps them.

Two message structures (HL7 v2.5.1 chapter 4; IHE RAD TF-2 RAD-4 / RAD-13):

* **ORM^O01**: one step per ORC/OBR pair. OBR-18 accession number, OBR-19 requested procedure ID, OBR-20
  scheduled procedure step ID, OBR-21 the scheduled station AE title, OBR-24 modality; ZDS-1 (IHE) the Study
  Instance UID.
* **OMI^O23** (imaging order): one step per IPC segment of an ORC/TQ1/OBR group. IPC-1 accession identifier,
  IPC-2 requested procedure ID, IPC-3 Study Instance UID, IPC-4 scheduled procedure step ID, IPC-5 modality,
  IPC-7 scheduled station name, IPC-8 scheduled procedure step location, IPC-9 scheduled station AE title.

Common to both: ORC-1 order control (NW, XO, SC, CA, DC; HL7 Table 0119); ORC-2/3 placer and filler order
numbers; the start date/time TQ1-7 (else ORC-7.4 or OBR-27.4, v2.3 quantity/timing) and the priority TQ1-9 (else
ORC-7.6: S stat, A asap, R routine); OBR-4 the universal service (code^text^coding system) as the requested
procedure; PV1-8 (else OBR-16) the referring physician. A step without a Study Instance UID gets one when it is
created. Every order group of a message is applied in one transaction, or none is.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

import hl7

from mosaic.hl7.adt import PatientData, component, field, person_name
from mosaic.hl7.message import Hl7Error, Message
from mosaic.services.worklist import Order

ORDER_MESSAGES: dict[str, frozenset[str]] = {"ORM": frozenset({"O01"}), "OMI": frozenset({"O23"})}
"""Order message types and their trigger events."""
_CONTROLS = frozenset({"NW", "XO", "SC", "CA", "DC"})
_PRIORITY = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "MEDIUM", "C": "HIGH", "T": "HIGH"}


@dataclass
class _Group:
    """One order: its ORC and the segments that follow it up to the next ORC."""

    number: int
    """The ORC's position among the message's ORC segments (1-based), for ERR-2."""
    orc: hl7.Segment
    obr: hl7.Segment | None = None
    tq1: hl7.Segment | None = None
    zds: hl7.Segment | None = None
    ipcs: list[hl7.Segment] = dataclass_field(default_factory=list)


def orders_of(message: Message, patient: PatientData) -> list[Order]:
    """The steps of every order group of ``message``; raises :class:`Hl7Error` naming the field at fault."""
    groups = _groups(message)
    if not groups:
        raise Hl7Error("AE", 100, "an order message needs an ORC segment", "ORC")
    omi = message.message_type == "OMI"
    pv1 = message.segments("PV1")
    orders: list[Order] = []
    for group in groups:
        if group.obr is None:
            raise Hl7Error("AE", 100, f"order {group.number} (ORC) has no OBR segment", f"ORC^{group.number}")
        if omi and not group.ipcs:
            raise Hl7Error("AE", 100, f"imaging order {group.number} (OMI) has no IPC segment", "IPC")
        orders += _steps(message, group, patient, pv1[0] if pv1 else None, omi)
    return orders


def _groups(message: Message) -> list[_Group]:
    groups: list[_Group] = []
    for segment in message.parsed:
        name = str(segment[0])
        if name == "ORC":
            groups.append(_Group(len(groups) + 1, segment))
        elif groups and name == "OBR" and groups[-1].obr is None:
            groups[-1].obr = segment
        elif groups and name == "TQ1" and groups[-1].tq1 is None:
            groups[-1].tq1 = segment
        elif groups and name == "ZDS" and groups[-1].zds is None:
            groups[-1].zds = segment
        elif groups and name == "IPC":
            groups[-1].ipcs.append(segment)
    return groups


def _steps(message: Message, group: _Group, patient: PatientData, pv1: hl7.Segment | None,
           omi: bool) -> list[Order]:
    def text(segment: hl7.Segment | None, number: int, part: int = 1) -> str:
        if segment is None:
            return ""
        repetitions = field(segment, number)
        return message.parsed.unescape(component(repetitions[0], part)) if repetitions else ""

    orc, obr = group.orc, group.obr
    control = text(orc, 1).upper()
    if control not in _CONTROLS:
        raise Hl7Error("AR", 207, f"order control {control!r} is not one Mosaic applies "
                                  f"({', '.join(sorted(_CONTROLS))})", f"ORC^{group.number}^1")
    start = text(group.tq1, 7) or text(orc, 7, 4) or text(obr, 27, 4)
    digits = "".join(char for char in start if char.isdigit())
    if start and len(digits) < 8:
        where = f"TQ1^{group.number}^7" if text(group.tq1, 7) else f"ORC^{group.number}^7^1^4"
        raise Hl7Error("AE", 102, f"the start {start!r} is not a date/time (YYYYMMDD[HHMM[SS]])", where)
    priority = text(group.tq1, 9) or text(orc, 7, 6)
    referring = person_name(message, field(pv1, 8), xcn=True) if pv1 is not None else None
    if not referring and obr is not None:
        referring = person_name(message, field(obr, 16), xcn=True) or ""
    service = [text(obr, 4, number) for number in (1, 2, 3)]
    common = {
        "PatientName": str(patient.demographics.get("PatientName") or ""),
        "PatientBirthDate": str(patient.demographics.get("PatientBirthDate") or ""),
        "PatientSex": str(patient.demographics.get("PatientSex") or ""),
        "RequestedProcedureDescription": service[1] or service[0],
        "RequestedProcedureCode": "^".join(service).rstrip("^"),
        "RequestedProcedurePriority": _PRIORITY.get(priority.upper()[:1], ""),
        "ReferringPhysicianName": referring or "",
        "ScheduledProcedureStepDescription": service[1] or service[0],
        "ScheduledProcedureStepStartDate": digits[:8],
        "ScheduledProcedureStepStartTime": digits[8:14],
        "placer_order": text(orc, 2) or text(obr, 2),
        "filler_order": text(orc, 3) or text(obr, 3),
    }
    if omi:
        steps = [({"accession": text(ipc, 1), "RequestedProcedureID": text(ipc, 2),
                        "StudyInstanceUID": text(ipc, 3), "step": text(ipc, 4), "Modality": text(ipc, 5),
                        "ScheduledStationName": text(ipc, 7), "ScheduledProcedureStepLocation": text(ipc, 8),
                        "ScheduledStationAETitle": text(ipc, 9)}, f"IPC^{index}")
                 for index, ipc in enumerate(group.ipcs, start=1)]
    else:
        steps = [({"accession": text(obr, 18) or text(orc, 2), "RequestedProcedureID": text(obr, 19),
                        "StudyInstanceUID": text(group.zds, 1), "step": text(obr, 20) or text(obr, 19),
                        "Modality": text(obr, 24), "ScheduledStationAETitle": text(obr, 21)},
                  f"OBR^{group.number}")]
    orders = []
    for step, where in steps:
        accession = step.pop("accession")
        accession_field = f"{where}^1" if omi else f"{where}^18"
        if not accession:
            raise Hl7Error("AE", 101, f"the accession number ({'IPC-1' if omi else 'OBR-18'}) of order "
                                      f"{group.number} is empty", accession_field)
        if len(accession) > 16:
            raise Hl7Error("AE", 102, f"accession number {accession!r} is longer than 16 characters (SH)",
                           accession_field)
        step_id = step.pop("step") or accession
        values = {**common, **step, "Modality": step["Modality"].upper(),
                  "RequestedProcedureID": step["RequestedProcedureID"] or accession}
        orders.append(Order(control, accession, step_id[:16], patient.PatientID, patient.IssuerOfPatientID,
                            values, encounter=text(pv1, 19)[:64]))
    return orders
