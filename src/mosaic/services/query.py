"""Query service: C-FIND and QIDO-RS over the index, responses built from indexed values (their encoding for the
wire is the door's: :mod:`mosaic.dimse.query`, :mod:`mosaic.dicomweb`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from mosaic.core.identifier import tag_and_vr
from mosaic.index.database import Database
from mosaic.index.query import (
    LEVELS,
    Match,
    Query,
    QueryEngine,
    Scope,
    metadata_element,
    query_from_identifier,
    response_value,
    unique_key,
)
from mosaic.services.metrics import QUERY_SECONDS


class QueryService:
    def __init__(self, database: Database, ae_title: str) -> None:
        self.database = database
        self.ae_title = ae_title

    def find(self, query: Query, *, door: str, scope: Scope) -> list[Match]:
        """The matches of ``query`` among the studies in ``scope`` (the caller's, from the access policy)."""
        query.scope = scope
        started = time.perf_counter()
        with self.database.session() as session:
            matches = QueryEngine(session).find(query)
        QUERY_SECONDS.labels(door, query.level).observe(time.perf_counter() - started)
        return matches

    def count(self, query: Query, *, scope: Scope) -> int:
        query.scope = scope
        with self.database.session() as session:
            return QueryEngine(session).count(query)

    def c_find_matches(self, identifier: Dataset, *, root: str, scope: Scope,
                       audit: dict[str, Any] | None = None) -> tuple[Query, list[Match]]:
        """The query a C-FIND identifier asks (raises QueryError when malformed) and its matches, only studies in
        ``scope``; ``audit`` (a dict) is given what matched."""
        query = query_from_identifier(identifier, root=root)
        matches = self.find(query, door="dimse", scope=scope)
        if audit is not None:
            audit["matches"] = len(matches)
            audit["studies"] = sorted(_studies_drawn_on(matches))[:100]
            if query.level == "PATIENT":
                audit["patients"] = sorted({_patient_key(match) for match in matches})[:100]
        return query, matches

    def c_find(self, identifier: Dataset, *, root: str, scope: Scope,
               audit: dict[str, Any] | None = None) -> Iterator[Dataset]:
        """Responses to a C-FIND identifier, one dataset per match (raises QueryError when malformed); only
        studies in ``scope`` match; ``audit`` (a dict) is given what matched."""
        query, matches = self.c_find_matches(identifier, root=root, scope=scope, audit=audit)
        for match in matches:
            yield self.response(match, query, root=root)

    def indexed_values(self, match: Match, query: Query, *,
                       root: str) -> list[tuple[str, int, str, Any, dict[str, Any] | None]]:
        """(keyword, tag, VR, indexed value or None, stored metadata element or None) of each returned key,
        for encoders that do not need a pydicom Dataset (QIDO-RS JSON)."""
        values: list[tuple[str, int, str, Any, dict[str, Any] | None]] = []
        if query.level != "PATIENT":
            values.append(("InstanceAvailability", 0x00080056, "CS", "ONLINE", None))
        for keyword in self._keywords(query, root):
            tag, vr = tag_and_vr(keyword)
            value = response_value(match, keyword)
            values.append((keyword, tag, vr, value, metadata_element(match, keyword) if value is None else None))
        return values

    @staticmethod
    def _keywords(query: Query, root: str) -> list[str]:
        keywords = [keyword for keyword in query.return_keywords if tag_for_keyword(keyword) is not None]
        top = 0 if root == "PATIENT" else 1
        for level in LEVELS[top : LEVELS.index(query.level) + 1]:
            if unique_key(level) not in keywords:
                keywords.append(unique_key(level))
        return keywords

    def response(self, match: Match, query: Query, *, root: str) -> Dataset:
        response = Dataset()
        response.QueryRetrieveLevel = query.level
        for keyword in self._keywords(query, root):
            _set(response, match, keyword)
        response.RetrieveAETitle = self.ae_title
        if query.level != "PATIENT":
            response.InstanceAvailability = "ONLINE"
        if _needs_unicode(response):
            response.SpecificCharacterSet = "ISO_IR 192"
        return response


def _studies_drawn_on(matches: list[Match]) -> set[str]:
    """The studies whose values an answer carries: each match's own, or the study describing a patient that a
    scoped caller found (PATIENT level)."""
    studies: set[str] = set()
    for match in matches:
        if "STUDY" in match.rows:
            studies.add(match.rows["STUDY"].StudyInstanceUID)
        elif getattr(match.rows["PATIENT"], "described_by", ""):
            studies.add(match.rows["PATIENT"].described_by)
    return studies


def _patient_key(match: Match) -> str:
    patient = match.rows["PATIENT"]
    return f"{patient.PatientID}^^^{patient.IssuerOfPatientID}" if patient.IssuerOfPatientID else patient.PatientID


def _set(response: Dataset, match: Match, keyword: str) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    value = response_value(match, keyword)
    if value is not None:
        response.add_new(tag, dictionary_VR(tag), value if value != "" else None)
        return
    element = metadata_element(match, keyword)
    if element is not None:
        try:
            response.update(Dataset.from_json({f"{tag:08X}": element}))
            return
        except Exception:
            pass
    response.add_new(tag, dictionary_VR(tag), None)


def _needs_unicode(dataset: Dataset) -> bool:
    for element in dataset:
        if (element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value is not None
                and not str(element.value).isascii()):
            return True
    return False
