"""Query matching per PS3.4 C.2.2.2, translated to SQL; one engine for C-FIND and QIDO-RS.

Supported matching: single value, wildcard (``*``, ``?``), range (DA, TM, DT), list of UIDs (and
backslash-separated lists for other VRs), universal (empty value) and, for keys that have no
indexed column, the same rules applied to the stored metadata of each candidate.
Person names match case-insensitively, against any component group (alphabetic, ideographic,
phonetic). Fuzzy matching (QIDO-RS ``fuzzymatching=true``) also ignores accents (``muller`` finds
``Müller``: :func:`mosaic.core.names.fold_name`, kept in the ``…Fuzzy`` columns), and a value without
wildcards matches any name component it begins (``joh`` finds ``Smith^John``). C-FIND is never fuzzy:
Mosaic does not accept the fuzzy semantic matching byte of SOP Class Extended Negotiation (PS3.4
C.2.2.2.1.1, C.5.1.1), so its matching stays as PS3.4 says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, true
from sqlalchemy.orm import Session

from mosaic.core.errors import QueryError
from mosaic.core.names import fold_name
from mosaic.index.attributes import (
    COMPUTED_KEYS,
    DEMOGRAPHIC_KEYS,
    INTEGER_KEYS,
    KEYS_OF_LEVEL,
    MODEL_OF_LEVEL,
    PERSON_NAME_KEYS,
)
from mosaic.index.matching import check_matching_key
from mosaic.index.schema import Instance, Patient, ScheduledStep, Series, Study

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_PARENT_LEVELS = {"PATIENT": (), "STUDY": ("PATIENT",), "SERIES": ("PATIENT", "STUDY"),
                  "IMAGE": ("PATIENT", "STUDY", "SERIES")}
_WRAPPED_LIST_KEYS = frozenset({"ModalitiesInStudy", "SOPClassesInStudy"})
_UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
                "IMAGE": "SOPInstanceUID"}
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
                       "InstanceAvailability", "TimezoneOffsetFromUTC"})


@dataclass
class MatchKey:
    """One key of a query: its keyword, VR and matching value ('' means universal matching)."""

    keyword: str
    value: str
    vr: str


@dataclass(frozen=True)
class Scope:
    """What a caller may see: studies of these facilities and departments (None: any), plus the studies
    named in ``studies`` (break-glass openings). Applied in SQL, so counts and pages are scoped too."""

    facilities: frozenset[str] | None = None
    departments: frozenset[str] | None = None
    studies: frozenset[str] = frozenset()

    @classmethod
    def everything(cls) -> Scope:
        """Every study: the node's own work (verification, sweeps, retention) and callers the policy leaves
        unrestricted. Written out, never assumed: a read without a scope is refused."""
        return cls()

    @property
    def unrestricted(self) -> bool:
        return self.facilities is None and self.departments is None

    def study_condition(self) -> ColumnElement[bool]:
        """A condition on :class:`Study` that holds for the studies in scope."""
        if self.unrestricted:
            return true()
        parts: list[ColumnElement[bool]] = []
        if self.facilities is not None:
            parts.append(Study.facility.in_(sorted(self.facilities)) if self.facilities else false())
        if self.departments is not None:
            parts.append(Study.department.in_(sorted(self.departments)) if self.departments else false())
        condition = and_(*parts)
        if self.studies:
            condition = or_(condition, Study.StudyInstanceUID.in_(sorted(self.studies)))
        return condition

    def scheduled_step_condition(self) -> ColumnElement[bool]:
        """A condition on :class:`ScheduledStep` that holds for the worklist steps in scope. A step carries the
        facility of the order's sender and no department (an order names none), so a caller limited to some
        departments is shown no steps; break-glass openings are of studies, not of orders."""
        if self.unrestricted:
            return true()
        if self.departments is not None or not self.facilities:
            return false()
        return ScheduledStep.facility.in_(sorted(self.facilities))

    def permits(self, facility: str, department: str, study_instance_uid: str) -> bool:
        if study_instance_uid in self.studies or self.unrestricted:
            return True
        return ((self.facilities is None or facility in self.facilities)
                and (self.departments is None or department in self.departments))


@dataclass
class Query:
    """A query at one level: matching keys plus the attributes to return."""

    level: str
    keys: list[MatchKey]
    return_keywords: list[str] = field(default_factory=list)
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    with_metadata: bool = False
    """Attach each match's (representative) stored metadata even when every key has a column."""
    updated: tuple[datetime | None, datetime | None] = (None, None)
    """Only entities whose row at the query's level last changed at or after the first and before the second
    instant (FHIR ``_lastUpdated``); None leaves that end open."""
    scope: Scope | None = None
    """Only what the caller may see: required (a query without a scope is refused; ``Scope.everything()`` for
    the node's own reads)."""


@dataclass
class Match:
    """One matching entity: its rows at its level and above, and its (representative) metadata."""

    level: str
    rows: dict[str, Any]
    metadata: dict[str, Any] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    """Values that differ from the rows for this caller (patient counts within a restricted scope)."""
    seen_in: int | None = None
    """A patient matched for a scoped caller: the primary key of the study (one it may see) that describes it."""


class PatientAsSeen:
    """A patient as a caller with a restricted scope sees it: the shared identity (PatientID + issuer) of the
    patient record, and the demographics one of the caller's own studies gave (``Study.PatientName`` …), never
    those another site's objects carried."""

    def __init__(self, patient: Patient, study: Study) -> None:
        self.pk = patient.pk
        self.PatientID = patient.PatientID
        self.IssuerOfPatientID = patient.IssuerOfPatientID
        self.described_by = study.StudyInstanceUID
        """The study whose objects gave these demographics (audited as what the answer drew on)."""
        for keyword in DEMOGRAPHIC_KEYS:
            setattr(self, keyword, getattr(study, keyword))
        for keyword in COMPUTED_KEYS["PATIENT"]:
            setattr(self, keyword, getattr(patient, keyword))  # scoped counts replace them (Match.overrides)


def _patient_module(metadata: dict[str, Any]) -> dict[str, Any]:
    """Only the patient-level attributes of an instance's metadata (group 0010 and the patient's other
    identifiers): a PATIENT level answer carries nothing of a study (PS3.4 C.6.1.1.2), so no study's description,
    accession or institution reaches it."""
    return {tag: element for tag, element in metadata.items() if tag.startswith("0010")}


def query_from_identifier(identifier: Dataset, *, root: str) -> Query:
    """A :class:`Query` from a C-FIND identifier (raises :class:`QueryError` when it is malformed)."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
    if root == "STUDY" and level == "PATIENT":
        raise QueryError("the Study Root information model has no PATIENT level")
    keys: list[MatchKey] = []
    for element in identifier:
        keyword = element.keyword or ""
        if not keyword or keyword in _NOT_KEYS or element.tag.group in (0x0000, 0x0002):
            continue
        if element.VR == "SQ":
            keys.append(MatchKey(keyword, "", "SQ"))
            continue
        value = element.value
        if value is None:
            text = ""
        elif isinstance(value, list | tuple | MultiValue):
            text = "\\".join(str(item) for item in value)
        elif isinstance(value, bytes):
            text = value.decode("latin-1")
        else:
            text = str(value)
        check_matching_key(keyword, str(element.VR), text.strip())
        keys.append(MatchKey(keyword, text.strip(), str(element.VR)))
    return Query(level=level, keys=keys, return_keywords=[key.keyword for key in keys])


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _require_scope(query: Query) -> None:
    if query.scope is None:
        raise ValueError("a query needs the caller's scope (Scope.everything() for the node's own work)")


class QueryEngine:
    """Runs a :class:`Query` against the index; a query without a scope is refused (never "everything" by
    omission)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        # SQLite's LIKE ignores case: wildcard matching there uses GLOB, case-sensitive like LIKE elsewhere
        self.glob = session.get_bind().dialect.name == "sqlite"

    def find(self, query: Query) -> list[Match]:
        _require_scope(query)
        statement, post_filters = self._statement(query)
        if not post_filters:
            statement = self._page(statement, query)
        rows = self.session.execute(statement).all()
        scoped = query.scope is not None and not query.scope.unrestricted
        matches = [self._match(query.level, row, scoped) for row in rows]
        needs_metadata = query.with_metadata or bool(post_filters) or any(
            not self._has_column(query.level, keyword) for keyword in query.return_keywords
        )
        if needs_metadata:
            self._attach_metadata(query.level, matches)
        if post_filters:
            matches = [match for match in matches if all(_matches_metadata(match, key, query.fuzzy)
                                                         for key in post_filters)]
            end = None if query.limit is None else query.offset + query.limit
            matches = matches[query.offset:end]
        if query.level == "PATIENT" and query.scope is not None and not query.scope.unrestricted:
            self._scoped_patient_counts(matches, query.scope)
        return matches

    def _scoped_patient_counts(self, matches: list[Match], scope: Scope) -> None:
        """A patient's Number of Patient Related … counts only the studies the caller may see."""
        if not matches:
            return
        rows = self.session.execute(
            select(Study.patient_pk, func.count(Study.pk), func.sum(Study.NumberOfStudyRelatedSeries),
                   func.sum(Study.NumberOfStudyRelatedInstances))
            .where(Study.patient_pk.in_([match.rows["PATIENT"].pk for match in matches]), scope.study_condition())
            .group_by(Study.patient_pk)).all()
        counts = {pk: (int(studies), int(series or 0), int(instances or 0)) for pk, studies, series, instances in rows}
        for match in matches:
            studies, series, instances = counts.get(match.rows["PATIENT"].pk, (0, 0, 0))
            match.overrides.update(NumberOfPatientRelatedStudies=studies, NumberOfPatientRelatedSeries=series,
                                   NumberOfPatientRelatedInstances=instances)

    def count(self, query: Query) -> int:
        _require_scope(query)
        statement, post_filters = self._statement(query)
        if post_filters:
            return len(self.find(Query(query.level, query.keys, [], query.fuzzy, scope=query.scope)))
        return int(self.session.scalar(select(func.count()).select_from(statement.subquery())) or 0)

    @staticmethod
    def _page(statement: Select[Any], query: Query) -> Select[Any]:
        if query.offset:
            statement = statement.offset(query.offset)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        return statement

    def _statement(self, query: Query) -> tuple[Select[Any], list[MatchKey]]:
        levels = (*_PARENT_LEVELS[query.level], query.level)
        scoped = query.scope is not None and not query.scope.unrestricted
        conditions: list[ColumnElement[bool]] = []
        post_filters: list[MatchKey] = []
        for key in query.keys:
            if not key.value or key.vr == "SQ":
                continue
            owner = self._owner_level(key.keyword, levels)
            if owner is None:
                if self._belongs_below(key.keyword, query.level):
                    continue  # a key of a lower level: not a matching key at this level (PS3.4 C.4.1.2.1)
                post_filters.append(key)
                continue
            model = MODEL_OF_LEVEL[owner]
            if scoped and owner == "PATIENT" and key.keyword in DEMOGRAPHIC_KEYS:
                model = Study  # a scoped caller matches the patient as its own studies describe them
            condition = self._condition(model, key, glob=self.glob, fuzzy=query.fuzzy)
            if condition is not None:
                conditions.append(condition)
        low, high = query.updated
        if low is not None:
            conditions.append(MODEL_OF_LEVEL[query.level].updated_at >= low)
        if high is not None:
            conditions.append(MODEL_OF_LEVEL[query.level].updated_at < high)
        if scoped and query.level == "PATIENT":
            # a patient is visible when one of their studies is, and is described by the latest such study that
            # matches: nothing of another site's studies (names, dates, descriptions) reaches the answer
            assert query.scope is not None
            representative = (select(func.max(Study.pk)).join(Patient, Study.patient_pk == Patient.pk)
                              .where(query.scope.study_condition(), *conditions).group_by(Study.patient_pk))
            patients: Any = (select(Patient, Study).join(Study, Study.patient_pk == Patient.pk)
                             .where(Study.pk.in_(representative)))
            return patients.order_by(Patient.pk), post_filters
        statement = self._joins(query.level).where(*conditions)
        if scoped:
            assert query.scope is not None
            statement = statement.where(query.scope.study_condition())
        order = MODEL_OF_LEVEL[query.level].pk
        return statement.order_by(order), post_filters

    @staticmethod
    def _joins(level: str) -> Any:
        if level == "PATIENT":
            return select(Patient)
        if level == "STUDY":
            return select(Study, Patient).join(Patient, Study.patient_pk == Patient.pk)
        if level == "SERIES":
            return (select(Series, Study, Patient).join(Study, Series.study_pk == Study.pk)
                    .join(Patient, Study.patient_pk == Patient.pk))
        return (select(Instance, Series, Study, Patient).join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk))

    @staticmethod
    def _owner_level(keyword: str, levels: Sequence[str]) -> str | None:
        for level in levels:
            if keyword in KEYS_OF_LEVEL[level] or keyword in COMPUTED_KEYS[level]:
                return level
        return None

    @staticmethod
    def _belongs_below(keyword: str, level: str) -> bool:
        below = LEVELS[LEVELS.index(level) + 1:]
        return any(keyword in KEYS_OF_LEVEL[lower] or keyword in COMPUTED_KEYS[lower] for lower in below)

    def _has_column(self, level: str, keyword: str) -> bool:
        if keyword in ("QueryRetrieveLevel",) or (keyword == "Modality" and level == "STUDY"):
            return True
        return self._owner_level(keyword, (*_PARENT_LEVELS[level], level)) is not None

    @staticmethod
    def _condition(model: type[Any], key: MatchKey, *, glob: bool = False,
                   fuzzy: bool = False) -> ColumnElement[bool] | None:
        keyword, value = key.keyword, key.value
        if keyword in _WRAPPED_LIST_KEYS:
            column = getattr(model, keyword)
            options = [item for item in value.split("\\") if item]
            # values are stored wrapped in backslashes ("\\CT\\MR\\")
            return or_(*[_wildcard(column, f"*\\{item}\\*", glob) for item in options])
        if keyword in PERSON_NAME_KEYS and fuzzy and hasattr(model, f"{keyword}Fuzzy"):
            column, folded = getattr(model, f"{keyword}Fuzzy"), fold_name(value)
            if not _has_wildcard(folded) and folded.strip():
                return _fuzzy_person_name_condition(column, folded)
            return _person_name_condition(column, folded)
        if keyword in PERSON_NAME_KEYS and hasattr(model, f"{keyword}Upper"):
            return _person_name_condition(getattr(model, f"{keyword}Upper"), value)
        column = getattr(model, keyword)
        if keyword in INTEGER_KEYS:
            try:
                numbers = [int(item) for item in value.split("\\") if item.strip()]
            except ValueError as exc:
                raise QueryError(f"{keyword} value {value!r} is not an integer") from exc
            return column.in_(numbers)
        return _text_condition(column, value, key.vr, glob=glob)

    def _match(self, level: str, row: Any, scoped: bool = False) -> Match:
        if scoped and level == "PATIENT":
            patient, study = row
            return Match(level=level, rows={"PATIENT": PatientAsSeen(patient, study)}, seen_in=study.pk)
        levels = (level, *reversed(_PARENT_LEVELS[level]))
        rows = {name: entity for name, entity in zip(levels, row, strict=False)}
        if scoped:
            rows["PATIENT"] = PatientAsSeen(rows["PATIENT"], rows["STUDY"])
        return Match(level=level, rows=rows)

    def _attach_metadata(self, level: str, matches: list[Match]) -> None:
        if not matches:
            return
        if level == "IMAGE":
            for match in matches:
                match.metadata = json.loads(match.rows["IMAGE"].metadata_json)
            return
        pks = [match.rows[level].pk for match in matches]
        if level == "SERIES":
            group = Instance.series_pk
            representative = select(func.min(Instance.pk)).where(Instance.series_pk.in_(pks)).group_by(group)
            rows = self.session.execute(
                select(Instance.series_pk, Instance.metadata_json).where(Instance.pk.in_(representative))).all()
        elif level == "STUDY":
            representative = (select(func.min(Instance.pk)).join(Series, Instance.series_pk == Series.pk)
                              .where(Series.study_pk.in_(pks)).group_by(Series.study_pk))
            rows = self.session.execute(
                select(Series.study_pk, Instance.metadata_json).join(Series, Instance.series_pk == Series.pk)
                .where(Instance.pk.in_(representative))).all()
        elif matches[0].seen_in is not None:
            # a scoped caller's patient: described only by the study it was matched in (one the caller may see)
            studies = [match.seen_in for match in matches if match.seen_in is not None]
            representative = (select(func.min(Instance.pk)).join(Series, Instance.series_pk == Series.pk)
                              .where(Series.study_pk.in_(studies)).group_by(Series.study_pk))
            rows = self.session.execute(
                select(Series.study_pk, Instance.metadata_json).join(Series, Instance.series_pk == Series.pk)
                .where(Instance.pk.in_(representative))).all()
            seen = {pk: json.loads(text) for pk, text in rows}
            for match in matches:
                match.metadata = _patient_module(seen.get(match.seen_in or 0, {}))
            return
        else:
            representative = (select(func.min(Instance.pk)).join(Series, Instance.series_pk == Series.pk)
                              .join(Study, Series.study_pk == Study.pk)
                              .where(Study.patient_pk.in_(pks)).group_by(Study.patient_pk))
            rows = self.session.execute(
                select(Study.patient_pk, Instance.metadata_json).join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk).where(Instance.pk.in_(representative))).all()
        by_pk = {pk: json.loads(text) for pk, text in rows}
        for match in matches:
            metadata = by_pk.get(match.rows[level].pk, {})
            match.metadata = _patient_module(metadata) if level == "PATIENT" else metadata


def _wildcard(column: Any, value: str, glob: bool) -> ColumnElement[bool]:
    """Case-sensitive wildcard matching of ``*`` and ``?`` (PS3.4 C.2.2.2.4) on any engine."""
    if glob:
        return column.op("GLOB")(value.replace("[", "[[]"))  # type: ignore[no-any-return]
    return column.like(_like_pattern(value), escape="\\")  # type: ignore[no-any-return]


def _text_condition(column: Any, value: str, vr: str, *, glob: bool = False) -> ColumnElement[bool] | None:
    if vr in ("DA", "TM", "DT") and "-" in value:
        low, _, high = value.partition("-")
        conditions = []
        if low:
            conditions.append(column >= low.strip())
        if high:
            conditions.append(column <= high.strip() + "~")  # '~' sorts after digits: "0727" covers 0727xx
        conditions.append(column != "")
        return and_(*conditions)
    options = value.split("\\") if "\\" in value else [value]
    clauses: list[ColumnElement[bool]] = []
    for option in options:
        if _has_wildcard(option):
            if option.strip("*") == "":
                return None  # "*" alone matches everything, including empty values
            clauses.append(_wildcard(column, option, glob))
        elif vr == "TM":
            clauses.append(column.like(_like_pattern(option) + "%", escape="\\"))
        else:
            clauses.append(column == option)
    return or_(*clauses) if len(clauses) > 1 else clauses[0]


def _fuzzy_person_name_condition(column: Any, folded: str) -> ColumnElement[bool]:
    """QIDO ``fuzzymatching=true``: any name component (family, given, … of any group) starting with the
    value, without regard to case or accents: "joh" finds "Smith^John" and "JOHNSON^Ann", "muller" finds
    "Müller^Hans". ``column`` and ``folded`` are both folded (:func:`mosaic.core.names.fold_name`)."""
    pattern = _like_pattern(folded.strip())
    return or_(*[column.like(prefix + pattern + "%", escape="\\") for prefix in ("", "%^", "% ", "%=")])


def _person_name_condition(column: Any, value: str) -> ColumnElement[bool] | None:
    """Case-insensitive, against the whole name or any one of its component groups."""
    pattern_value = value.upper()
    if pattern_value.strip("*") == "":
        return None
    pattern = _like_pattern(pattern_value)
    if "=" in pattern_value:
        return column.like(pattern, escape="\\")
    return or_(
        column.like(pattern, escape="\\"),
        column.like(pattern + "=%", escape="\\"),
        column.like("%=" + pattern, escape="\\"),
        column.like("%=" + pattern + "=%", escape="\\"),
    )


def _matches_metadata(match: Match, key: MatchKey, fuzzy: bool = False) -> bool:
    """Apply the matching rules to a key without an indexed column, on the stored metadata."""
    metadata = match.metadata or {}
    tag = tag_for_keyword(key.keyword)
    if tag is None:
        return True
    element = metadata.get(f"{tag:08X}")
    values = element.get("Value", []) if element else []
    texts: list[str] = []
    for item in values:
        if isinstance(item, dict):
            texts.extend(str(group) for group in item.values())
        else:
            texts.append(str(item))
    if not texts:
        return False
    options = key.value.split("\\")
    for option in options:
        for text in texts:
            if _text_matches(text, option, key.vr, fuzzy):
                return True
    return False


def _text_matches(text: str, option: str, vr: str, fuzzy: bool = False) -> bool:
    import fnmatch

    if vr in ("DA", "TM", "DT") and "-" in option:
        low, _, high = option.partition("-")
        return (not low or text >= low) and (not high or text <= high + "~")
    if vr == "PN" and fuzzy:
        text, option = fold_name(text), fold_name(option).strip()
        if not _has_wildcard(option):  # as in SQL: from the start or from any component on
            starts = [0, *(match.end() for match in re.finditer(r"[\^= ]", text))]
            return any(text.startswith(option, start) for start in starts)
    elif vr == "PN":
        text, option = text.upper(), option.upper()
    if _has_wildcard(option):
        return fnmatch.fnmatchcase(text, option.replace("[", "[[]"))
    return text == option


def response_value(match: Match, keyword: str) -> Any:
    """The value of ``keyword`` for a match: an indexed column, a computed attribute, or the metadata."""
    if keyword in match.overrides:
        return match.overrides[keyword]
    if keyword == "Modality" and match.level == "STUDY":
        # asked of a study (OHIF's study list does), Modality answers with every modality in the study
        return [item for item in str(match.rows["STUDY"].ModalitiesInStudy).split("\\") if item]
    levels = (match.level, *reversed(_PARENT_LEVELS[match.level]))
    for level in levels:
        row = match.rows.get(level)
        if row is None:
            continue
        if keyword in COMPUTED_KEYS[level]:
            value = getattr(row, keyword)
            if keyword in _WRAPPED_LIST_KEYS:
                return [item for item in str(value).split("\\") if item]
            return value
        if keyword in KEYS_OF_LEVEL[level] and keyword not in ("RequestedProcedureID",
                                                               "ScheduledProcedureStepID"):
            value = getattr(row, keyword)
            return "" if value is None else value
    return None


def metadata_element(match: Match, keyword: str) -> dict[str, Any] | None:
    tag = tag_for_keyword(keyword)
    if tag is None or match.metadata is None:
        return None
    element = match.metadata.get(f"{tag:08X}")
    if element is None or "BulkDataURI" in element:
        return None
    return element  # type: ignore[no-any-return]


def unique_key(level: str) -> str:
    return _UNIQUE_KEYS[level]
