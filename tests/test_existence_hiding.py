"""A study outside the caller's scope must not be told apart from one that is not stored: not by the answer (status,
headers, body) and not by the time it takes. Time is measured as work, not seconds: the SQL statements the
request runs (a refusal that skips the lookups an unknown study goes through answers measurably faster).

Each case asks for a study stored at another site and for UIDs of the same length that were never stored; with
the UIDs swapped, the two answers must be equal byte for byte (only Date may differ), and so must the
statements, parameters included."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST

ROOT = "1.2.826.0.1.3680043.10.1234.77."
OWN_STUDY = f"{ROOT}1"
_numbers = itertools.count(2)

ROUTES = [
    "/dicom-web/studies/{study}",
    "/dicom-web/studies/{study}/series/{series}",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}",
    "/dicom-web/studies/{study}/metadata",
    "/dicom-web/studies/{study}/series/{series}/metadata",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered",
    "/dicom-web/studies/{study}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010",
    "/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}",
    "/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=image/jpeg",
    "/dicom-web/studies/{study}/series",
    "/dicom-web/studies/{study}/instances",
    "/dicom-web/studies/{study}/series/{series}/instances",
]
_REQUEST_THREADS = ("AnyIO worker thread", "http")
"""The threads a request's work runs on (Starlette's worker threads, the server's event loop). Every other thread
(audit writer, jobs, sweepers, outbox consumers, FHIR notifications) runs on its own schedule and is not counted:
an allowlist, so a new background thread cannot make the comparison flaky."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    # caches on and long (the default is 10 s): a cached decision must not shortcut one of the two cases
    security = SecuritySettings(credential_cache_seconds=3600)  # type: ignore[call-arg]
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("hiding"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0), security=security))
    mosaic.start(dicom=False)
    mosaic.ingest.store(to_bytes(make_instance(patient_id="A-1", study_uid=OWN_STUDY)), door="import",
                        facility="SITE-A")
    mosaic.identity.add_user("site.a", roles=["clinician"], password="site-a-password", facilities=["SITE-A"])
    yield mosaic
    mosaic.stop()


class Statements:
    """The SQL statements (text and parameters) run on request threads while it is active."""

    def __init__(self, node: Mosaic) -> None:
        self.engine = node.database.engine
        self.seen: list[tuple[str, str]] = []
        self.active = False

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._record)
        self.active = True
        return self

    def __exit__(self, *_exc: object) -> None:
        self.active = False
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, _connection: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                _executemany: bool) -> None:
        if self.active and threading.current_thread().name.startswith(_REQUEST_THREADS):
            self.seen.append((" ".join(statement.split()), repr(parameters)))


def ask(node: Mosaic, path: str, headers: dict[str, str]) -> tuple[httpx.Response, list[tuple[str, str]]]:
    """The answer to ``path`` (asked once before, so every cache is as warm as it gets) and its statements."""
    address = f"http://{LOCALHOST}:{node.http_port}{path}"
    httpx.get(address, headers=headers, timeout=60)
    node.audit.flush()
    with Statements(node) as statements:
        answer = httpx.get(address, headers=headers, timeout=60)
    node.audit.flush()
    return answer, statements.seen


def shown(answer: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return answer.status_code, [(name, value) for name, value in answer.headers.items() if name != "date"], \
        answer.content


def swapped(text: str, hidden: str, unknown: str) -> str:
    return text.replace(unknown, hidden)


@pytest.mark.parametrize("route", ROUTES)
def test_out_of_scope_and_unknown_studies_are_one_answer_after_the_same_work(node: Mosaic, route: str) -> None:
    number = next(_numbers)
    hidden, unknown = f"{ROOT}1{number:03d}", f"{ROOT}2{number:03d}"  # the same length
    node.ingest.store(to_bytes(make_instance(patient_id=f"B-{number}", study_uid=hidden, series_uid=f"{hidden}.1",
                                             sop_uid=f"{hidden}.1.1")), door="import", facility="SITE-B")
    headers = {"Authorization": f"Bearer {node.identity.issue_token('site.a', name='test')}"}
    refused, refused_work = ask(node, route.format(study=hidden, series=f"{hidden}.1", sop=f"{hidden}.1.1"), headers)
    missing, missing_work = ask(node, route.format(study=unknown, series=f"{unknown}.1", sop=f"{unknown}.1.1"),
                                headers)
    status, headers_seen, body = shown(missing)
    assert shown(refused) == (status, [(name, swapped(value, hidden, unknown)) for name, value in headers_seen],
                              swapped(body.decode("latin-1"), hidden, unknown).encode("latin-1"))
    assert refused.status_code in (404, 200), refused.text
    if refused.status_code == 200:  # QIDO under the study: nothing found either way
        assert refused.json() == []
    assert refused_work == [(statement, swapped(parameters, hidden, unknown)) for statement, parameters in
                            missing_work]
    assert refused_work, "no statement seen: the listener is not on the engine the requests use"


def test_the_callers_own_study_is_still_served(node: Mosaic) -> None:
    headers = {"Authorization": f"Bearer {node.identity.issue_token('site.a', name='test')}"}
    answer = httpx.get(f"http://{LOCALHOST}:{node.http_port}/dicom-web/studies/{OWN_STUDY}/metadata",
                       headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.json()[0]["0020000D"]["Value"] == [OWN_STUDY]
