"""FHIR search parameters as the archive's queries (the same :class:`~mosaic.index.query.Query` C-FIND and
QIDO-RS use, so matching, scopes and counts are the same everywhere).

Supported: ``Patient`` — ``identifier`` (``[system|]value``), ``name`` (any part, case and accents ignored),
``family``, ``birthdate`` (``eq``/``ge``/``le``/``gt``/``lt``, partial dates); ``ImagingStudy`` — ``patient`` /
``subject`` (``Patient/<id>``), ``identifier`` (``urn:oid:<StudyInstanceUID>`` or an accession number),
``started`` (as ``birthdate``), ``modality`` (``[system|]code``); both: ``_lastUpdated`` (an instant or a
partial date with ``eq``/``ge``/``le``/``gt``/``lt``: when the index row last changed), ``_count``, ``_offset``,
``_format`` (JSON only), ``_include=ImagingStudy:endpoint``. Any other parameter is refused (400), never ignored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mosaic.fhir.resources import issuer_of_system
from mosaic.index.query import MatchKey, Query

DEFAULT_COUNT = 50
MAX_COUNT = 500
COMMON = frozenset({"_count", "_offset", "_format", "_include"})
PARAMETERS = {
    "Patient": frozenset({"identifier", "name", "family", "birthdate", "_id", "_lastUpdated"}),
    "ImagingStudy": frozenset({"patient", "subject", "identifier", "started", "modality", "_id", "_lastUpdated"}),
}


class SearchError(ValueError):
    """A search the archive cannot run as asked: the message says which parameter and why (400)."""


@dataclass
class Search:
    query: Query
    patient_pk: str | None = None
    """``patient=Patient/<id>``: resolved to the patient's identity by the route."""
    include_endpoint: bool = False
    count: int = DEFAULT_COUNT
    offset: int = 0
    page_parameters: list[tuple[str, str]] = field(default_factory=list)
    """The search's own parameters, for the Bundle's self and next links."""


def _key(keys: dict[str, MatchKey], keyword: str, value: str, vr: str) -> None:
    if keyword in keys:
        raise SearchError(f"{keyword} is given twice")
    keys[keyword] = MatchKey(keyword, value, vr)


def _day(text: str) -> tuple[dt.date, dt.date]:
    """The first and last day a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD) covers."""
    try:
        if len(text) == 4:
            year = int(text)
            return dt.date(year, 1, 1), dt.date(year, 12, 31)
        if len(text) == 7:
            first = dt.date(int(text[:4]), int(text[5:7]), 1)
            following = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
            return first, following - dt.timedelta(days=1)
        day = dt.date.fromisoformat(text[:10])
        return day, day
    except ValueError as exc:
        raise SearchError(f"{text!r} is not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)") from exc


def _instants(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The first instant a FHIR date or dateTime covers and the first after it (a dateTime names one second,
    or what its precision covers; a date the whole day, in UTC)."""
    if len(text) <= 10:
        first, last = _day(text)
        start = dt.datetime.combine(first, dt.time(), dt.UTC)
        return start, dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SearchError(f"{text!r} is not a FHIR date or dateTime (e.g. 2026-12-07T10:00:00Z)") from exc
    if moment.tzinfo is None:
        raise SearchError(f"{text!r}: a dateTime with a time needs its UTC offset (Z or +hh:mm)")
    moment = moment.astimezone(dt.UTC)
    seconds = len(text.split("T", 1)[1]) >= 8
    step = dt.timedelta(microseconds=1) if "." in text else dt.timedelta(seconds=1 if seconds else 60)
    return moment, moment + step


def instant_range(values: Iterable[str], name: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """[low, high) in UTC from FHIR date/dateTime parameters with their prefixes (``eq`` when none)."""
    low: dt.datetime | None = None
    high: dt.datetime | None = None
    for raw in values:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", raw)
        first, after = _instants(text)
        if prefix in ("eq", "ge", "gt"):
            start = after if prefix == "gt" else first
            low = start if low is None else max(low, start)
        if prefix in ("eq", "le", "lt"):
            end = first if prefix == "lt" else after
            high = end if high is None else min(high, end)
    if low is not None and high is not None and low >= high:
        raise SearchError(f"{name}: the instants given leave nothing to match")
    return low, high


def date_range(values: Iterable[str], name: str) -> str:
    """A DICOM date range (``YYYYMMDD-YYYYMMDD``, open ends allowed) from FHIR date parameters."""
    low: dt.date | None = None
    high: dt.date | None = None
    for raw in values:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", raw)
        first, last = _day(text)
        if prefix in ("eq", "ge", "gt"):
            start = last + dt.timedelta(days=1) if prefix == "gt" else first
            low = start if low is None else max(low, start)
        if prefix in ("eq", "le", "lt"):
            end = first - dt.timedelta(days=1) if prefix == "lt" else last
            high = end if high is None else min(high, end)
    if low is not None and high is not None and low > high:
        raise SearchError(f"{name}: the dates given leave no day to match")
    if low is not None and low == high:
        return low.strftime("%Y%m%d")
    return f"{low.strftime('%Y%m%d') if low else ''}-{high.strftime('%Y%m%d') if high else ''}"


def _system_value(text: str) -> tuple[str | None, str]:
    if "|" in text:
        system, _, value = text.partition("|")
        return system, value
    return None, text


def parse_search(resource: str, parameters: list[tuple[str, str]]) -> Search:
    allowed = PARAMETERS[resource] | COMMON
    grouped: dict[str, list[str]] = {}
    for name, value in parameters:
        base = name.split(":")[0]
        if base not in allowed:
            raise SearchError(f"{resource} search parameter {name!r} is not supported (supported: "
                              f"{', '.join(sorted(allowed))})")
        if name != base and not (base in ("name", "family") and name.endswith(":contains")):
            raise SearchError(f"modifier {name!r} is not supported")
        grouped.setdefault(base, []).append(value)
    search = Search(Query("PATIENT" if resource == "Patient" else "STUDY", []),
                    page_parameters=[(name, value) for name, value in parameters
                                     if name not in ("_count", "_offset")])
    search.count = _integer(grouped.get("_count"), "_count", DEFAULT_COUNT, 0, MAX_COUNT)
    search.offset = _integer(grouped.get("_offset"), "_offset", 0, 0, 10**9)
    for include in grouped.get("_include", []):
        if resource != "ImagingStudy" or include != "ImagingStudy:endpoint":
            raise SearchError(f"_include={include!r} is not supported (ImagingStudy:endpoint is)")
        search.include_endpoint = True
    for fmt in grouped.get("_format", []):
        if fmt not in ("json", "application/fhir+json", "application/json"):
            raise SearchError(f"_format={fmt!r}: Mosaic answers FHIR in JSON only")
    if "_lastUpdated" in grouped:
        search.query.updated = instant_range(grouped["_lastUpdated"], "_lastUpdated")
    keys: dict[str, MatchKey] = {}
    handlers: dict[str, Callable[[list[str]], None]] = {}
    if resource == "Patient":
        def identifier(values: list[str]) -> None:
            system, value = _system_value(values[0])
            _key(keys, "PatientID", value, "LO")
            if system:
                _key(keys, "IssuerOfPatientID", issuer_of_system(system), "LO")

        def person_name(values: list[str]) -> None:
            search.query.fuzzy = True
            _key(keys, "PatientName", f"*{values[0].strip()}*", "PN")

        def family(values: list[str]) -> None:
            search.query.fuzzy = True
            _key(keys, "PatientName", f"{values[0].strip()}*", "PN")

        def birthdate(values: list[str]) -> None:
            _key(keys, "PatientBirthDate", date_range(values, "birthdate"), "DA")

        def patient_id(values: list[str]) -> None:
            search.patient_pk = values[0]

        handlers = {"identifier": identifier, "name": person_name, "family": family, "birthdate": birthdate,
                    "_id": patient_id}
    else:
        def patient(values: list[str]) -> None:
            search.patient_pk = values[0].removeprefix("Patient/")

        def study_identifier(values: list[str]) -> None:
            system, value = _system_value(values[0])
            if value.startswith("urn:oid:") or system == "urn:dicom:uid":
                _key(keys, "StudyInstanceUID", value.removeprefix("urn:oid:"), "UI")
            else:
                _key(keys, "AccessionNumber", value, "SH")

        def started(values: list[str]) -> None:
            _key(keys, "StudyDate", date_range(values, "started"), "DA")

        def modality(values: list[str]) -> None:
            _system, code = _system_value(values[0])
            _key(keys, "ModalitiesInStudy", code, "CS")

        def study_id(values: list[str]) -> None:
            _key(keys, "StudyInstanceUID", values[0], "UI")

        handlers = {"patient": patient, "subject": patient, "identifier": study_identifier, "started": started,
                    "modality": modality, "_id": study_id}
    for parameter, values in grouped.items():
        if parameter in handlers:
            if parameter not in ("birthdate", "started") and len(values) > 1:
                raise SearchError(f"{parameter} is given more than once (give one value, or a comma list)")
            handlers[parameter](values)
    search.query.keys = list(keys.values())
    search.query.limit = search.count
    search.query.offset = search.offset
    return search


def _integer(values: list[str] | None, name: str, default: int, low: int, high: int) -> int:
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError as exc:
        raise SearchError(f"{name}={values[-1]!r} is not a number") from exc
    return max(low, min(number, high))
