"""Orders and the Modality Worklist: scheduled procedure steps as HL7 orders state them, and the worklist query.

An order (HL7 ORM^O01) creates or changes its scheduled procedure step (keyed by accession number and step ID),
or cancels / discontinues it (then it leaves the worklist). The worklist query follows PS3.4 K.6.1.2: single
value and wildcard matching (patient names without regard to case), date and time ranges on the step's start,
the station AE title and modality in the Scheduled Procedure Step Sequence; only steps of the caller's facilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import ColumnElement, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mosaic.core.errors import QueryError
from mosaic.core.status import ProcedureStepStatus
from mosaic.index.attributes import column_widths
from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import EncounterStudy, Patient, PerformedStep, ScheduledStep, Study
from mosaic.services.patients import apply_in

ACTIVE = "SCHEDULED"
_WIDTHS = column_widths(ScheduledStep)
_TOP = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
        "RequestedProcedureID", "RequestedProcedureDescription", "RequestedProcedurePriority", "StudyInstanceUID",
        "ReferringPhysicianName")
_STEP = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
         "ScheduledProcedureStepID", "ScheduledProcedureStepDescription", "ScheduledProcedureStepStatus",
         "ScheduledStationName", "ScheduledProcedureStepLocation")
_RANGE = re.compile(r"^(\d{0,8})-(\d{0,8})$")


class PerformedStepError(Exception):
    """An MPPS request refused: its DIMSE status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_PERFORMED = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")


class ForeignOrder(Exception):
    """An order names the accession number and step of another facility's order: its sender may not change it
    (the key is the archive's, one step per accession and step ID)."""


@dataclass
class Order:
    """One scheduled procedure step as an order message gives it (empty strings: not given)."""

    control: str
    """NW new, XO changed, SC status changed, CA cancelled, DC discontinued (HL7 Table 0119)."""
    AccessionNumber: str
    ScheduledProcedureStepID: str
    PatientID: str
    IssuerOfPatientID: str
    values: dict[str, str]
    encounter: str = ""
    """The visit (HL7 PV1-19): an order for an encounter whose orderless captures made a study takes that study."""


class WorklistService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def apply(self, orders: Order | list[Order], *, facility: str, source: str, reference: str = "",
              demographics: dict[str, str | None] | None = None) -> str:
        """Create, change or end each step of ``orders`` (one order message), and (new or changed orders) create
        or update the patient from ``demographics``, all in one transaction; returns what happened (created,
        updated, canceled, discontinued; one per step, comma-separated). ``facility`` is the sender's: it may
        change only its own facility's steps (empty: it speaks for every facility). Raises LookupError when a step
        to end is not on the worklist (or another facility's), :class:`ForeignOrder` when a new or changed step's
        key is another facility's; nothing is applied then."""
        steps = orders if isinstance(orders, list) else [orders]

        def work(session: Session) -> str:
            now = datetime.now(UTC)
            chosen = steps
            if demographics is not None and any(order.control not in ("CA", "DC") for order in steps):
                order = steps[0]
                change = apply_in(session, order.PatientID, order.IssuerOfPatientID, demographics, source=source,
                                  reference=reference)
                # an order under a merged-away identity schedules its step under the surviving one
                chosen = [replace(each, PatientID=change.PatientID, IssuerOfPatientID=change.IssuerOfPatientID)
                          for each in steps]
            return ",".join(_apply_step(session, order, facility, source, now) for order in chosen)

        return self.database.write(work)

    def find(self, identifier: Dataset, *, scope: Scope, audit: dict[str, Any] | None = None) -> list[Dataset]:
        """Responses to a Modality Worklist C-FIND identifier (raises QueryError when it is malformed); ``audit``
        is told how many steps matched and whose (accession numbers and patients, the first 100 of each)."""
        item = _step_item(identifier)
        conditions: list[ColumnElement[bool]] = [ScheduledStep.ScheduledProcedureStepStatus == ACTIVE]
        for keyword in _TOP:
            if keyword in ("PatientName", "ReferringPhysicianName"):
                value = _text(identifier, keyword)
                if value:
                    column = ScheduledStep.PatientNameUpper if keyword == "PatientName" else \
                        ScheduledStep.ReferringPhysicianName
                    conditions.append(_wildcard(column, value.upper() if keyword == "PatientName" else value))
                continue
            if keyword in ("PatientID", "AccessionNumber", "RequestedProcedureID", "StudyInstanceUID",
                           "IssuerOfPatientID"):
                value = _text(identifier, keyword)
                if value:
                    conditions.append(_wildcard(getattr(ScheduledStep, keyword), value))
        if item is not None:
            for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepID"):
                value = _text(item, keyword)
                if value:
                    conditions.append(_wildcard(getattr(ScheduledStep, keyword), value))
            for keyword in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"):
                value = _text(item, keyword)
                if value:
                    conditions.append(_range(getattr(ScheduledStep, keyword), value, keyword))
        conditions.append(scope.scheduled_step_condition())
        statement = select(ScheduledStep).where(and_(*conditions)).order_by(
            ScheduledStep.ScheduledProcedureStepStartDate, ScheduledStep.ScheduledProcedureStepStartTime,
            ScheduledStep.pk)
        with self.database.session() as session:
            steps = session.scalars(statement).all()
            if audit is not None:
                audit["matches"] = len(steps)
                audit["accessions"] = sorted({step.AccessionNumber for step in steps})[:100]
                audit["patients"] = sorted({f"{step.PatientID}^^^{step.IssuerOfPatientID}"
                                            if step.IssuerOfPatientID else step.PatientID for step in steps})[:100]
            return [_response(identifier, item, step) for step in steps]


    def orders(self, *, scope: Scope, patient: tuple[str, str] | None = None, accession: str | None = None,
               step_pk: int | None = None, limit: int = 50, offset: int = 0) -> tuple[list[ScheduledStep], int]:
        """The scheduled steps (any status) of the caller's facilities, newest first, and how many match (FHIR
        ServiceRequest)."""
        conditions: list[ColumnElement[bool]] = []
        if patient is not None:
            conditions += [ScheduledStep.PatientID == patient[0], ScheduledStep.IssuerOfPatientID == patient[1]]
        if accession is not None:
            conditions.append(ScheduledStep.AccessionNumber == accession)
        if step_pk is not None:
            conditions.append(ScheduledStep.pk == step_pk)
        conditions.append(scope.scheduled_step_condition())
        where = and_(*conditions) if conditions else None
        with self.database.session() as session:
            statement = select(ScheduledStep)
            counting = select(func.count()).select_from(ScheduledStep)
            if where is not None:
                statement, counting = statement.where(where), counting.where(where)
            rows = list(session.scalars(statement.order_by(ScheduledStep.pk.desc()).offset(offset).limit(limit)))
            for row in rows:
                session.expunge(row)
            return rows, int(session.scalar(counting) or 0)

    # --- Modality Performed Procedure Step (PS3.4 F.7) ------------------------------------------------

    def create_performed(self, sop_instance_uid: str, attributes: Dataset, *, performed_by: str,
                         scope: Scope) -> None:
        """N-CREATE: a step the modality started (IN PROGRESS); its scheduled step (by accession number and
        step ID in the Scheduled Step Attributes Sequence, among the steps of the caller's ``scope``) becomes
        STARTED and leaves the worklist. A step it names outside its scope is not touched (the MPPS is kept
        unscheduled, as for a step the worklist does not know)."""
        status = _text(attributes, "PerformedProcedureStepStatus")
        if status != "IN PROGRESS":
            raise PerformedStepError(ProcedureStepStatus.INVALID_ATTRIBUTE_VALUE,
                                     f"an MPPS is created IN PROGRESS, not {status or 'without a status'!r}")
        kept = _bounded(attributes.to_json(), sop_instance_uid)

        def work(session: Session) -> None:
            if session.scalar(select(PerformedStep.pk).where(PerformedStep.SOPInstanceUID == sop_instance_uid)):
                raise PerformedStepError(ProcedureStepStatus.DUPLICATE_SOP_INSTANCE,
                                         f"MPPS {sop_instance_uid} exists already")
            now = datetime.now(UTC)
            scheduled = None
            for item in attributes.get("ScheduledStepAttributesSequence", []) or []:
                scheduled = session.scalar(select(ScheduledStep).where(
                    scope.scheduled_step_condition(),
                    ScheduledStep.AccessionNumber == _text(item, "AccessionNumber"),
                    ScheduledStep.ScheduledProcedureStepID == _text(item, "ScheduledProcedureStepID")))
                if scheduled is not None:
                    break
            if scheduled is not None:
                scheduled.ScheduledProcedureStepStatus = "STARTED"
                scheduled.updated_at = now
            session.add(PerformedStep(SOPInstanceUID=sop_instance_uid, PerformedProcedureStepStatus=status,
                                      scheduled_step_pk=scheduled.pk if scheduled is not None else None,
                                      performed_by=performed_by[:64], attributes_json=kept,
                                      created_at=now, updated_at=now))

        self.database.write(work)

    def set_performed(self, sop_instance_uid: str, modifications: Dataset, *, performed_by: str) -> str:
        """N-SET: more of what was done, or its end (COMPLETED, DISCONTINUED), only while IN PROGRESS and only by
        the caller that created it (to anyone else it is not known); returns the step's status after it."""
        wanted = _text(modifications, "PerformedProcedureStepStatus")
        if wanted and wanted not in _PERFORMED:
            raise PerformedStepError(ProcedureStepStatus.INVALID_ATTRIBUTE_VALUE,
                                     f"Performed Procedure Step Status {wanted!r} is not one of "
                                     f"{', '.join(_PERFORMED)}")

        def work(session: Session) -> str:
            step = session.scalar(select(PerformedStep).where(PerformedStep.SOPInstanceUID == sop_instance_uid))
            if step is None or step.performed_by != performed_by[:64]:
                raise PerformedStepError(ProcedureStepStatus.NO_SUCH_OBJECT_INSTANCE,
                                         f"MPPS {sop_instance_uid} is not known")
            if step.PerformedProcedureStepStatus != "IN PROGRESS":
                raise PerformedStepError(ProcedureStepStatus.PROCESSING_FAILURE,
                                         f"already {step.PerformedProcedureStepStatus}, not IN PROGRESS: no more "
                                         f"changes (MPPS {sop_instance_uid})")  # the reason first: 64 characters
            now = datetime.now(UTC)
            attributes = Dataset.from_json(step.attributes_json)
            for element in modifications:
                attributes[element.tag] = element
            step.attributes_json = _bounded(attributes.to_json(), sop_instance_uid)
            if wanted:
                step.PerformedProcedureStepStatus = wanted
            step.updated_at = now
            if step.scheduled_step_pk is not None and wanted in ("COMPLETED", "DISCONTINUED"):
                scheduled = session.get(ScheduledStep, step.scheduled_step_pk)
                if scheduled is not None:
                    scheduled.ScheduledProcedureStepStatus = wanted
                    scheduled.updated_at = now
            return step.PerformedProcedureStepStatus

        return self.database.write(work)


MAX_PERFORMED_ATTRIBUTES = 1 << 20
"""How much an MPPS may hold (its attributes as DICOM JSON): a modality's step is a few kilobytes, and a caller
sending N-SET after N-SET must not grow a row without end."""


def _bounded(attributes_json: str, sop_instance_uid: str) -> str:
    if len(attributes_json) > MAX_PERFORMED_ATTRIBUTES:
        raise PerformedStepError(ProcedureStepStatus.PROCESSING_FAILURE,
                                 f"more than {MAX_PERFORMED_ATTRIBUTES >> 10} KiB of attributes (MPPS "
                                 f"{sop_instance_uid})")
    return attributes_json


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    return str(value).strip()



def _apply_step(session: Session, order: Order, facility: str, source: str, now: datetime) -> str:
    """One step of an order, in prepared Core statements (an order feed applies hundreds a second)."""
    connection = session.connection()  # Core statements: no ORM unit of work per call
    found = connection.execute(_FIND_STEP, {"accession": order.AccessionNumber,
                                         "step": order.ScheduledProcedureStepID}).first()
    foreign = found is not None and bool(facility) and found.facility != facility[:64]
    if order.control in ("CA", "DC"):
        if found is None or foreign:  # another facility's step is not on this sender's worklist
            raise LookupError(f"order {order.AccessionNumber} step {order.ScheduledProcedureStepID} is not "
                              "on the worklist")
        status = "CANCELED" if order.control == "CA" else "DISCONTINUED"
        connection.execute(_UPDATE_STEP, {"_pk": found.pk, "ScheduledProcedureStepStatus": status, "updated_at": now})
        return status.lower()
    values: dict[str, object] = {
        keyword: value[:_WIDTHS[keyword]] for keyword, value in order.values.items()
        if keyword in _WIDTHS and not (keyword == "StudyInstanceUID" and not value)}
    values.update(PatientID=order.PatientID, IssuerOfPatientID=order.IssuerOfPatientID,
                  PatientNameUpper=str(values.get("PatientName", "")).upper(),
                  ScheduledProcedureStepStatus=ACTIVE, source=source[:128], updated_at=now)
    if foreign:
        raise ForeignOrder(f"order {order.AccessionNumber} step {order.ScheduledProcedureStepID} is another "
                           "facility's order")
    if found is not None:
        connection.execute(_UPDATE_STEP, {**values, "_pk": found.pk})
        return "updated"
    if not values.get("StudyInstanceUID"):
        # images that came before their order (orderless, with its accession) are its study; else the study the
        # encounter's orderless captures made (IHE Encounter-Based Imaging Workflow reconciliation)
        # only the sender's facility's studies (one that speaks for every facility: any)
        where = {"facility": facility[:64], "any": not facility}
        stored = connection.execute(_STORED_STUDY, {"accession": order.AccessionNumber, "id": order.PatientID,
                                                 "issuer": order.IssuerOfPatientID, **where}).scalar()
        if stored is None and order.encounter:
            stored = connection.execute(_ENCOUNTER_STUDY, {"id": order.PatientID, "issuer": order.IssuerOfPatientID,
                                                        "encounter": order.encounter, **where}).scalar()
        values["StudyInstanceUID"] = stored or generate_uid()
    connection.execute(_INSERT_STEP, {**_STEP_DEFAULTS, **values, "AccessionNumber": order.AccessionNumber,
                                   "ScheduledProcedureStepID": order.ScheduledProcedureStepID,
                                   "facility": facility[:64], "created_at": now})
    return "created"


_STEP_TABLE = cast(Table, ScheduledStep.__table__)
_FIND_STEP = select(_STEP_TABLE.c.pk, _STEP_TABLE.c.facility).where(
    _STEP_TABLE.c.AccessionNumber == bindparam("accession"),
    _STEP_TABLE.c.ScheduledProcedureStepID == bindparam("step"))
_UPDATE_STEP = update(_STEP_TABLE).where(_STEP_TABLE.c.pk == bindparam("_pk"))
_INSERT_STEP = insert(_STEP_TABLE)
_STEP_DEFAULTS = {column.name: getattr(column.default, "arg", None) for column in _STEP_TABLE.columns
                  if column.default is not None and not callable(getattr(column.default, "arg", None))}
"""What a new step's columns are when the order does not say (every statement inserts every column)."""
_ENCOUNTER_STUDY = select(EncounterStudy.StudyInstanceUID).where(
    EncounterStudy.PatientID == bindparam("id"), EncounterStudy.IssuerOfPatientID == bindparam("issuer"),
    EncounterStudy.encounter == bindparam("encounter"),
    or_(bindparam("any"), EncounterStudy.facility == bindparam("facility"))).limit(1)
_STORED_STUDY = select(Study.StudyInstanceUID).join(Patient, Study.patient_pk == Patient.pk).where(
    Study.AccessionNumber == bindparam("accession"), Patient.PatientID == bindparam("id"),
    Patient.IssuerOfPatientID == bindparam("issuer"),
    or_(bindparam("any"), Study.facility == bindparam("facility"))).limit(1)


def _step_item(identifier: Dataset) -> Dataset | None:
    sequence = identifier.get("ScheduledProcedureStepSequence")
    if sequence is None:
        return None
    if len(sequence) > 1:
        raise QueryError("the Scheduled Procedure Step Sequence of a worklist query has at most one item")
    return sequence[0] if len(sequence) else Dataset()



def _wildcard(column: Any, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        return column.like(escaped.replace("*", "%").replace("?", "_"), escape="!")  # type: ignore[no-any-return]
    return column == value  # type: ignore[no-any-return]


def _range(column: Any, value: str, keyword: str) -> ColumnElement[bool]:
    digits = value.replace(":", "") if keyword.endswith("Time") else value
    match = _RANGE.match(digits)
    if match is not None:
        low, high = match.groups()
        if not low and not high:
            raise QueryError(f"{keyword}: {value!r} is not a range")
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= (high if keyword.endswith("Date") else high + "\uffff"))
        return and_(*parts)
    if keyword.endswith("Date") and not (len(digits) == 8 and digits.isdigit()):
        raise QueryError(f"{keyword}: {value!r} is not a date (YYYYMMDD) or range")
    if keyword.endswith("Time") and not digits.replace(".", "").isdigit():
        raise QueryError(f"{keyword}: {value!r} is not a time (HHMMSS) or range")
    return column.like(digits + "%") if keyword.endswith("Time") else column == digits  # type: ignore[no-any-return]


def _response(identifier: Dataset, item: Dataset | None, step: ScheduledStep) -> Dataset:
    response = Dataset()
    for element in identifier:
        keyword = element.keyword
        if keyword == "ScheduledProcedureStepSequence":
            continue
        if keyword in _TOP:
            setattr(response, keyword, getattr(step, keyword) or None)
        elif keyword == "SpecificCharacterSet":
            continue
        else:
            response.add_new(element.tag, element.VR, None)  # asked for, not kept: returned empty
    if item is not None:
        answer = Dataset()
        for element in item:
            keyword = element.keyword
            if keyword in _STEP:
                setattr(answer, keyword, getattr(step, keyword) or None)
            else:
                answer.add_new(element.tag, element.VR, None)
        response.ScheduledProcedureStepSequence = Sequence([answer])
    if any(not str(getattr(step, keyword) or "").isascii() for keyword in ("PatientName", "ReferringPhysicianName")):
        response.SpecificCharacterSet = "ISO_IR 192"
    return response
