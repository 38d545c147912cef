"""QIDO-RS (PS3.18 10.6): query parameters → the index's Query, matches → DICOM JSON.

Matching is the same engine as C-FIND (mosaic.index.query); only the parameter syntax differs:
keys by keyword or tag (``PatientName=DOE*``, ``00100020=123``), ``includefield`` (names, tags,
comma lists, ``all``), ``fuzzymatching``, ``limit`` and ``offset``; UID and code string values may be lists
separated by backslashes or commas, or the key repeated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from mosaic.core.errors import QueryError
from mosaic.index.matching import check_matching_key
from mosaic.index.query import MatchKey, Query

MAX_LIMIT = 10_000
MAX_OFFSET = 2**31 - 1
DEFAULT_LIMIT = 1_000

STUDY_DEFAULTS = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "StudyDescription", "IssuerOfPatientID",
)
SERIES_DEFAULTS = (
    "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "SeriesDate", "SeriesTime", "BodyPartExamined",
)
INSTANCE_DEFAULTS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC", "InstanceNumber", "Rows",
    "Columns", "BitsAllocated", "NumberOfFrames",
)
_CONTROL = frozenset({"includefield", "fuzzymatching", "limit", "offset", "orderby"})
_LISTABLE = frozenset({"UI", "CS"})
"""VRs whose QIDO values may be lists separated by commas (no UID or code string contains one)."""
_IGNORED = frozenset({"SpecificCharacterSet", "TimezoneOffsetFromUTC", "InstanceAvailability"})


@dataclass(frozen=True)
class QidoRequest:
    query: Query
    include_all: bool


def attribute_keyword(name: str) -> str:
    """A QIDO attribute ID (keyword or 8-digit tag) as a keyword; QueryError when unknown."""
    name = name.strip()
    if len(name) == 8 and all(char in "0123456789abcdefABCDEF" for char in name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QueryError(f"attribute {name} is not a known DICOM tag")
        return str(keyword)
    if "." in name:
        raise QueryError(f"sequence matching ({name}) is not supported")
    if tag_for_keyword(name) is None:
        raise QueryError(f"{name!r} is not a DICOM attribute keyword or tag")
    return name


def parse_qido(level: str, parameters: Iterable[tuple[str, str]], fixed: dict[str, str]) -> QidoRequest:
    """Build the Query for a QIDO-RS request at ``level`` (STUDY, SERIES, IMAGE).

    ``fixed`` holds the UIDs from the URL path (``/studies/{StudyInstanceUID}/series``).
    """
    keys: dict[str, MatchKey] = {}
    include: list[str] = []
    include_all = False
    fuzzy = False
    limit = DEFAULT_LIMIT
    offset = 0
    for name, value in parameters:
        if name == "includefield":
            for item in value.split(","):
                if item.strip().lower() == "all":
                    include_all = True
                elif item.strip():
                    include.append(attribute_keyword(item))
            continue
        if name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, not {value!r}")
            fuzzy = value.lower() == "true"
            continue
        if name in ("limit", "offset"):
            try:
                number = int(value) if len(value.strip()) <= 12 else -1
            except ValueError as exc:
                raise QueryError(f"{name} must be a whole number, not {value[:40]!r}") from exc
            if not 0 <= number <= MAX_OFFSET:
                raise QueryError(f"{name} must be a whole number from 0 to {MAX_OFFSET}, not {value[:40]!r}")
            if name == "limit":
                limit = min(number, MAX_LIMIT)
            else:
                offset = number
            continue
        if name in _CONTROL:
            continue
        keyword = attribute_keyword(name)
        tag = tag_for_keyword(keyword)
        vr = str(dictionary_VR(tag)) if tag is not None else "LO"
        if vr == "SQ":
            raise QueryError(f"{keyword} is a sequence: sequence matching is not supported")
        value = value.strip()
        if vr in _LISTABLE:
            # PS3.18 8.3.4.1: a list of UIDs (or codes) may be comma-separated, and a client may repeat the key
            # (dicomweb-client does for a Python list): both are the backslash list of PS3.4 C.2.2.2.2
            value = "\\".join(item.strip() for item in value.replace(",", "\\").split("\\"))
            if keyword in keys and keys[keyword].value != value:
                value = "\\".join(dict.fromkeys([*keys[keyword].value.split("\\"), *value.split("\\")]))
        elif keyword in keys and keys[keyword].value != value:
            raise QueryError(f"{keyword} is given twice with different values; one value per attribute "
                             "(a list only for UIDs and code strings)")
        check_matching_key(keyword, vr, value)  # checked at every level, a key of a lower one too
        keys[keyword] = MatchKey(keyword, value, vr)
    for keyword, value in fixed.items():
        keys[keyword] = MatchKey(keyword, value, "UI")
    returned = list(dict.fromkeys([*_defaults(level, fixed), *include, *keys]))
    returned = [keyword for keyword in returned if keyword not in _IGNORED]
    query = Query(level=level, keys=list(keys.values()), return_keywords=returned, fuzzy=fuzzy, limit=limit,
                  offset=offset)
    return QidoRequest(query=query, include_all=include_all)


def _defaults(level: str, fixed: dict[str, str]) -> tuple[str, ...]:
    if level == "STUDY":
        return STUDY_DEFAULTS
    if level == "SERIES":
        # /series without a study in the path also answers with the study's attributes
        return SERIES_DEFAULTS if "StudyInstanceUID" in fixed else SERIES_DEFAULTS + STUDY_DEFAULTS
    if "SeriesInstanceUID" in fixed:
        return INSTANCE_DEFAULTS
    return INSTANCE_DEFAULTS + SERIES_DEFAULTS + STUDY_DEFAULTS
