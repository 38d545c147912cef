"""The scheduled procedure step an order message (ORM^O01) describes, as the worklist keeps it.

ORC-1 order control (NW, XO, SC, CA, DC); ORC-2/3 placer and filler order numbers; ORC-7.4 (or TQ1-7, or
OBR-27.4) the start date/time, ORC-7.6 the priority (S stat, A asap, R routine); OBR-4 the universal service
(code^text^coding system) as the requested procedure; OBR-18 accession number, OBR-19 requested procedure ID,
OBR-20 scheduled procedure step ID, OBR-21 the scheduled station AE title, OBR-24 modality; PV1-8 (or OBR-16)
the referring physician; ZDS-1 (IHE) the Study Instance UID, else one is generated when the step is created.
"""

from __future__ import annotations

from mosaic.hl7.adt import PatientData, component, field, person_name
from mosaic.hl7.message import Hl7Error, Message
from mosaic.services.worklist import Order

ORDER_EVENTS = frozenset({"O01"})
_CONTROLS = frozenset({"NW", "XO", "SC", "CA", "DC"})
_PRIORITY = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "MEDIUM", "C": "HIGH", "T": "HIGH"}


def order_of(message: Message, patient: PatientData) -> Order:
    orcs, obrs = message.segments("ORC"), message.segments("OBR")
    if not orcs or not obrs:
        raise Hl7Error("AE", 100, "an order needs ORC and OBR segments", "ORC" if not orcs else "OBR")
    value = message.value
    control = value("ORC.F1").upper()
    if control not in _CONTROLS:
        raise Hl7Error("AR", 207, f"order control {control!r} is not one Mosaic applies "
                                  f"({', '.join(sorted(_CONTROLS))})", "ORC^1^1")
    accession = value("OBR.F18") or value("ORC.F2.R1.C1")
    if not accession:
        raise Hl7Error("AE", 101, "OBR-18 (accession number) is empty", "OBR^1^18")
    if len(accession) > 16:
        raise Hl7Error("AE", 102, f"OBR-18: accession number {accession!r} is longer than 16 characters (SH)",
                       "OBR^1^18")
    step_id = value("OBR.F20") or value("OBR.F19") or accession
    start = value("ORC.F7.R1.C4") or value("TQ1.F7.R1.C1") or value("OBR.F27.R1.C4")
    digits = "".join(char for char in start if char.isdigit())
    if start and len(digits) < 8:
        raise Hl7Error("AE", 102, f"the start {start!r} is not a date/time (YYYYMMDD[HHMM[SS]])", "ORC^1^7^1^4")
    pv1 = message.segments("PV1")
    referring = person_name(message, field(pv1[0], 8), xcn=True) if pv1 else None
    if not referring:
        referring = person_name(message, field(obrs[0], 16), xcn=True) or ""
    service = [message.parsed.unescape(component(field(obrs[0], 4)[0], number)) if field(obrs[0], 4) else ""
               for number in (1, 2, 3)]
    values = {
        "PatientName": str(patient.demographics.get("PatientName") or ""),
        "PatientBirthDate": str(patient.demographics.get("PatientBirthDate") or ""),
        "PatientSex": str(patient.demographics.get("PatientSex") or ""),
        "RequestedProcedureID": value("OBR.F19") or accession,
        "RequestedProcedureDescription": service[1] or service[0],
        "RequestedProcedureCode": "^".join(service).rstrip("^"),
        "RequestedProcedurePriority": _PRIORITY.get(value("ORC.F7.R1.C6").upper()[:1], ""),
        "ReferringPhysicianName": referring,
        "ScheduledProcedureStepDescription": service[1] or service[0],
        "Modality": value("OBR.F24").upper(),
        "ScheduledStationAETitle": value("OBR.F21"),
        "ScheduledProcedureStepStartDate": digits[:8],
        "ScheduledProcedureStepStartTime": digits[8:14],
        "StudyInstanceUID": value("ZDS.F1.R1.C1"),
        "placer_order": value("ORC.F2.R1.C1"),
        "filler_order": value("ORC.F3.R1.C1"),
    }
    return Order(control, accession, step_id[:16], patient.PatientID, patient.IssuerOfPatientID, values)
