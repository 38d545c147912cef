"""Query service: C-FIND (and later QIDO-RS) over the index, responses built from indexed values."""

from __future__ import annotations

import time
from collections.abc import Iterator

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from mosaic.index.database import Database
from mosaic.index.query import (
    LEVELS,
    Match,
    Query,
    QueryEngine,
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

    def find(self, query: Query, *, door: str) -> list[Match]:
        started = time.perf_counter()
        with self.database.session() as session:
            matches = QueryEngine(session).find(query)
        QUERY_SECONDS.labels(door, query.level).observe(time.perf_counter() - started)
        return matches

    def count(self, query: Query) -> int:
        with self.database.session() as session:
            return QueryEngine(session).count(query)

    def c_find(self, identifier: Dataset, *, root: str) -> Iterator[Dataset]:
        """Responses to a C-FIND identifier, one dataset per match (raises QueryError when malformed)."""
        query = query_from_identifier(identifier, root=root)
        for match in self.find(query, door="dimse"):
            yield self.response(match, query, root=root)

    def response(self, match: Match, query: Query, *, root: str) -> Dataset:
        response = Dataset()
        response.QueryRetrieveLevel = query.level
        keywords = list(query.return_keywords)
        top = 0 if root == "PATIENT" else 1
        for level in LEVELS[top : LEVELS.index(query.level) + 1]:
            if unique_key(level) not in keywords:
                keywords.append(unique_key(level))
        for keyword in keywords:
            _set(response, match, keyword)
        response.RetrieveAETitle = self.ae_title
        if query.level != "PATIENT":
            response.InstanceAvailability = "ONLINE"
        if _needs_unicode(response):
            response.SpecificCharacterSet = "ISO_IR 192"
        return response


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
