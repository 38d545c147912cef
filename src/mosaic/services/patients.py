"""Patient identity and demographics as the hospital's information systems state them (HL7 ADT).

A patient is one identity, PatientID + IssuerOfPatientID. An ADT message creates the patient (before any image
arrives) or changes its demographics; each change is applied in one transaction with its history row
(:class:`~mosaic.index.schema.PatientHistory`: what it was, what it became, who said so) and its outbox event,
and the studies' own copies of the demographics (what a caller with a restricted scope sees) follow at once.
Stored files are never rewritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from mosaic.core.events import EventType
from mosaic.index.attributes import DEMOGRAPHIC_KEYS, PATIENT_KEYS, column_widths, text_columns
from mosaic.index.database import Database
from mosaic.index.schema import Base, Event, LegalHold, Patient, PatientAlias, PatientHistory, ScheduledStep, Study

_WIDTHS = column_widths(Patient)
_STUDY_WIDTHS = column_widths(Study)
DEMOGRAPHICS = ("PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex", "EthnicGroup")
"""What an ADT message may change (Patient module attributes the index keeps)."""


class UnknownPatient(LookupError):
    """The identity a merge or identifier change names as the old one is not a patient of the archive."""


class DuplicatePatient(ValueError):
    """The new identifier of an identifier change is already another patient's."""


@dataclass(frozen=True)
class PatientChange:
    """What :meth:`PatientService.apply` did: ``created`` a patient, or changed these attributes (old, new)."""

    PatientID: str
    IssuerOfPatientID: str
    created: bool
    changed: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class PatientRecord:
    PatientID: str
    IssuerOfPatientID: str
    demographics: dict[str, str]
    history: list[dict[str, Any]]


class PatientService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def apply(self, patient_id: str, issuer: str, demographics: dict[str, str | None], *, source: str,
              reference: str) -> PatientChange:
        """Create the patient ``patient_id`` + ``issuer`` or update its demographics, in one transaction.

        ``demographics``: keyword → new value; None leaves the attribute as it is (the field was not sent), ""
        clears it (HL7 ``""``)."""
        return self.database.write(lambda session: apply_in(session, patient_id, issuer, demographics,
                                                            source=source, reference=reference))

    def merge(self, survivor: tuple[str, str], old: tuple[str, str], demographics: dict[str, str | None], *,
              source: str, reference: str) -> int:
        """Merge the patient ``old`` (PatientID, issuer) into ``survivor`` (HL7 A40), in one transaction: its
        studies move to the survivor, ``old`` becomes an alias (later images and messages under it are filed
        under the survivor; a query for it finds nothing), its legal holds follow; the survivor is created from
        ``demographics`` if it is new. Returns how many studies moved; raises :class:`UnknownPatient`."""
        def work(session: Session) -> int:
            now = datetime.now(UTC)
            apply_in(session, *survivor, demographics, source=source, reference=reference)
            target = resolve(session, *survivor)
            assert target is not None  # just applied
            merged = session.scalar(select(Patient).where(Patient.PatientID == old[0],
                                                          Patient.IssuerOfPatientID == old[1]))
            if merged is None:
                alias = _alias(session, *old)
                if alias is not None and alias.patient_pk == target.pk:
                    return 0  # the same merge again: already done
                raise UnknownPatient(_named(*old))
            if merged.pk == target.pk:
                return 0
            studies = int(session.scalar(select(func.count()).select_from(Study)
                                         .where(Study.patient_pk == merged.pk)) or 0)
            session.execute(update(Study).where(Study.patient_pk == merged.pk).values(
                patient_pk=target.pk, **text_columns(_demographics(target), DEMOGRAPHIC_KEYS,
                                                      _STUDY_WIDTHS)))
            target.NumberOfPatientRelatedStudies += merged.NumberOfPatientRelatedStudies
            target.NumberOfPatientRelatedSeries += merged.NumberOfPatientRelatedSeries
            target.NumberOfPatientRelatedInstances += merged.NumberOfPatientRelatedInstances
            target.updated_at = now
            session.execute(update(PatientAlias).where(PatientAlias.patient_pk == merged.pk)
                            .values(patient_pk=target.pk))
            session.execute(update(PatientHistory).where(PatientHistory.patient_pk == merged.pk)
                            .values(patient_pk=target.pk))
            _move_holds(session, old, (target.PatientID, target.IssuerOfPatientID))
            _steps_follow(session, old, (target.PatientID, target.IssuerOfPatientID), _demographics(target))
            session.add(PatientAlias(PatientID=old[0], IssuerOfPatientID=old[1], patient_pk=target.pk,
                                     reason="merged", created_at=now))
            session.add(PatientHistory(patient_pk=target.pk, changed_at=now, action="merged", source=source[:128],
                                       reference=reference[:128],
                                       before_json=json.dumps({"PatientID": old[0], "IssuerOfPatientID": old[1],
                                                               **_demographics(merged), "studies": studies}),
                                       after_json=json.dumps({"PatientID": target.PatientID,
                                                              "IssuerOfPatientID": target.IssuerOfPatientID,
                                                              **_demographics(target)})))
            session.add(Event(type=EventType.PATIENT_MERGED.value, created_at=now, PatientID=target.PatientID,
                              IssuerOfPatientID=target.IssuerOfPatientID,
                              payload=json.dumps({"merged": {"PatientID": old[0], "IssuerOfPatientID": old[1]},
                                                  "studies": studies, "source": source})))
            session.delete(merged)
            return studies

        return self.database.write(work)

    def change_identifier(self, new: tuple[str, str], old: tuple[str, str], *, source: str, reference: str) -> None:
        """Give the patient ``old`` the identifier ``new`` (HL7 A47), keeping ``old`` as an alias; raises
        :class:`UnknownPatient` or :class:`DuplicatePatient` (``new`` is already a patient, or an alias of one)."""
        def work(session: Session) -> None:
            now = datetime.now(UTC)
            patient = session.scalar(select(Patient).where(Patient.PatientID == old[0],
                                                           Patient.IssuerOfPatientID == old[1]))
            if patient is None:
                raise UnknownPatient(_named(*old))
            if new == old:
                return
            if resolve(session, *new) is not None:
                raise DuplicatePatient(f"{_named(*new)} is already a patient of the archive")
            patient.PatientID, patient.IssuerOfPatientID = new
            patient.updated_at = now
            _move_holds(session, old, new)
            _steps_follow(session, old, new)
            session.add(PatientAlias(PatientID=old[0], IssuerOfPatientID=old[1], patient_pk=patient.pk,
                                     reason="identifier-changed", created_at=now))
            session.add(PatientHistory(patient_pk=patient.pk, changed_at=now, action="identifier-changed",
                                       source=source[:128], reference=reference[:128],
                                       before_json=json.dumps({"PatientID": old[0], "IssuerOfPatientID": old[1]}),
                                       after_json=json.dumps({"PatientID": new[0], "IssuerOfPatientID": new[1]})))
            session.add(Event(type=EventType.PATIENT_ID_CHANGED.value, created_at=now, PatientID=new[0],
                              IssuerOfPatientID=new[1],
                              payload=json.dumps({"previous": {"PatientID": old[0], "IssuerOfPatientID": old[1]},
                                                  "source": source})))

        self.database.write(work)

    def pk_of(self, patient_id: str, issuer: str) -> int | None:
        """The archive's number of a patient (FHIR's Patient id), aliases resolved."""
        with self.database.session() as session:
            patient = resolve(session, patient_id, issuer)
            return patient.pk if patient is not None else None

    def identity_of(self, pk: int) -> tuple[str, str] | None:
        """(PatientID, IssuerOfPatientID) of the patient numbered ``pk`` (FHIR's Patient id), or None. Who may
        see it is for the scoped query the caller runs next."""
        with self.database.session() as session:
            row = session.execute(select(Patient.PatientID, Patient.IssuerOfPatientID)
                                  .where(Patient.pk == pk)).first()
            return (row[0], row[1]) if row is not None else None

    def record(self, patient_id: str, issuer: str) -> PatientRecord | None:
        """The patient's current demographics and every recorded change, oldest first (for administrators); an
        alias gives the record of the patient it now belongs to."""
        with self.database.session() as session:
            patient = resolve(session, patient_id, issuer)
            if patient is None:
                return None
            rows = session.scalars(select(PatientHistory).where(PatientHistory.patient_pk == patient.pk)
                                   .order_by(PatientHistory.pk)).all()
            history = [{"changed_at": row.changed_at.isoformat(), "action": row.action, "source": row.source,
                        "reference": row.reference, "before": json.loads(row.before_json),
                        "after": json.loads(row.after_json)} for row in rows]
            return PatientRecord(patient.PatientID, patient.IssuerOfPatientID, _demographics(patient), history)


def apply_in(session: Session, patient_id: str, issuer: str, demographics: dict[str, str | None], *,
             source: str, reference: str) -> PatientChange:
    """:meth:`PatientService.apply` inside the caller's transaction (an order or a merge also updates its patient,
    whole or not at all). Core statements, not the ORM's unit of work: an ADT feed applies hundreds a second, and
    a message that changes nothing writes nothing."""
    session.flush()  # what the caller changed through the ORM first, then Core statements on its connection
    connection = session.connection()
    wanted = {keyword: value for keyword, value in demographics.items()
              if keyword in DEMOGRAPHICS and value is not None}
    now = datetime.now(UTC)
    found = connection.execute(_LOOKUP, {"id": patient_id, "issuer": issuer}).first()  # an alias: its survivor
    created = found is None
    before = {} if found is None else {keyword: str(getattr(found, keyword) or "") for keyword in DEMOGRAPHICS}
    after = {**{keyword: "" for keyword in DEMOGRAPHICS}, **before, **wanted}
    # an alias updates its survivor, under the survivor's identity
    identity: tuple[str, str] = (found.PatientID, found.IssuerOfPatientID) if found is not None \
        else (patient_id, issuer)
    changed = {keyword: (before.get(keyword, ""), after[keyword]) for keyword in DEMOGRAPHICS
               if before.get(keyword, "") != after[keyword]}
    if not created and not changed:
        return PatientChange(*identity, False, {})
    values = _columns(*identity, after)
    if found is None:
        inserted = connection.execute(_INSERT_PATIENT, {
            **values, "NumberOfPatientRelatedStudies": 0, "NumberOfPatientRelatedSeries": 0,
            "NumberOfPatientRelatedInstances": 0, "created_at": now, "updated_at": now})
        key = inserted.inserted_primary_key
        assert key is not None  # an INSERT of one row
        pk = int(key[0])
    else:
        pk = found.pk
        connection.execute(_UPDATE_PATIENT, {**values, "updated_at": now, "_pk": pk})
        connection.execute(_UPDATE_STUDIES, {**text_columns(after, DEMOGRAPHIC_KEYS, _STUDY_WIDTHS),
                                          "_pk": pk})
        _steps_follow(session, identity, identity, after)
    connection.execute(_INSERT_HISTORY, {
        "patient_pk": pk, "changed_at": now, "action": "created" if created else "updated", "source": source[:128],
        "reference": reference[:128], "before_json": json.dumps(before), "after_json": json.dumps(after)})
    connection.execute(_INSERT_EVENT, {
        "type": (EventType.PATIENT_CREATED if created else EventType.PATIENT_UPDATED).value, "created_at": now,
        "PatientID": identity[0], "IssuerOfPatientID": identity[1], "StudyInstanceUID": "", "SeriesInstanceUID": "",
        "SOPInstanceUID": "", "payload": json.dumps({"changed": sorted(changed), "source": source})})
    if found is not None:
        # the ORM copy of this patient, if the session holds one, must not overwrite what was just written
        cached = session.identity_map.get(identity_key(Patient, pk))
        if cached is not None:
            session.expire(cached)
    return PatientChange(*identity, created, {} if created else changed)


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


_PATIENT = _table(Patient)
_ALIAS = _table(PatientAlias)
_LOOKUP = select(_PATIENT.c.pk, _PATIENT.c.PatientID, _PATIENT.c.IssuerOfPatientID,
                 *(_PATIENT.c[keyword] for keyword in DEMOGRAPHICS)).where(or_(
    and_(_PATIENT.c.PatientID == bindparam("id"), _PATIENT.c.IssuerOfPatientID == bindparam("issuer")),
    _PATIENT.c.pk.in_(select(_ALIAS.c.patient_pk).where(
        _ALIAS.c.PatientID == bindparam("id"), _ALIAS.c.IssuerOfPatientID == bindparam("issuer")).scalar_subquery()
    ))).limit(1)
"""The patient of an identity, or of the alias it is (one statement)."""
# statements built once (their parameters passed when executed: SQLAlchemy then reuses the compiled form)
_INSERT_PATIENT = insert(_PATIENT)
_UPDATE_PATIENT = update(_PATIENT).where(_PATIENT.c.pk == bindparam("_pk"))
_UPDATE_STUDIES = update(_table(Study)).where(_table(Study).c.patient_pk == bindparam("_pk"))
_INSERT_HISTORY = insert(_table(PatientHistory))
_STEP = _table(ScheduledStep)
_STEP_WIDTHS = column_widths(ScheduledStep)
_INSERT_EVENT = insert(_table(Event))


def resolve(session: Session, patient_id: str, issuer: str) -> Patient | None:
    """The patient with this identity, or the one it was merged into or renamed to (an alias)."""
    patient = session.scalar(select(Patient).where(Patient.PatientID == patient_id,
                                                   Patient.IssuerOfPatientID == issuer))
    if patient is not None:
        return patient
    alias = _alias(session, patient_id, issuer)
    return session.get(Patient, alias.patient_pk) if alias is not None else None


def _alias(session: Session, patient_id: str, issuer: str) -> PatientAlias | None:
    return session.scalar(select(PatientAlias).where(PatientAlias.PatientID == patient_id,
                                                     PatientAlias.IssuerOfPatientID == issuer))


def _move_holds(session: Session, old: tuple[str, str], new: tuple[str, str]) -> None:
    """Legal holds placed on a patient identity follow it (a hold must keep blocking its studies' deletion)."""
    session.execute(update(LegalHold).where(LegalHold.PatientID == old[0], LegalHold.IssuerOfPatientID == old[1])
                    .values(PatientID=new[0], IssuerOfPatientID=new[1]))


def _steps_follow(session: Session, old: tuple[str, str], new: tuple[str, str],
                  demographics: dict[str, str] | None = None) -> None:
    """The worklist's copy of a patient follows the patient: a modality copies the worklist's identity and name
    into the images it makes, so a step must not keep an identity merged away or a name corrected since."""
    values: dict[str, str] = {"PatientID": new[0], "IssuerOfPatientID": new[1]}
    if demographics is not None:
        name = demographics.get("PatientName", "")
        values.update(PatientName=name[:_STEP_WIDTHS["PatientName"]],
                      PatientNameUpper=name.upper()[:_STEP_WIDTHS["PatientNameUpper"]],
                      PatientBirthDate=demographics.get("PatientBirthDate", "")[:_STEP_WIDTHS["PatientBirthDate"]],
                      PatientSex=demographics.get("PatientSex", "")[:_STEP_WIDTHS["PatientSex"]])
    session.connection().execute(update(_STEP).where(_STEP.c.PatientID == old[0],
                                                     _STEP.c.IssuerOfPatientID == old[1]).values(**values))


def _named(patient_id: str, issuer: str) -> str:
    return f"patient {patient_id}" + (f" (issuer {issuer})" if issuer else "")


def _demographics(patient: Patient) -> dict[str, str]:
    return {keyword: str(getattr(patient, keyword) or "") for keyword in DEMOGRAPHICS}


def _columns(patient_id: str, issuer: str, demographics: dict[str, str]) -> dict[str, Any]:
    return text_columns({**demographics, "PatientID": patient_id, "IssuerOfPatientID": issuer}, PATIENT_KEYS,
                        _WIDTHS)
