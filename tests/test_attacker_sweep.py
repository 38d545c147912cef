"""An attacker's sweep over every HTTP route the application serves (read from the application itself, so a
route added later is swept too): without credentials, and as a clinician of another site. Nothing of the other
site's patient may come back, nothing may change, and no route may answer 500.

The same sweep over the DICOM port is in tests/test_dimse_bounds.py (PDU bounds, floods) and
tests/test_shared_patients.py / tests/test_dimse_permissions.py (scoped C-FIND/C-MOVE/C-GET)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from mosaic.http.auth import is_public
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST

DERM_STUDY = "1.2.826.0.1.3680043.10.1234.71"
DERM_SERIES = "1.2.826.0.1.3680043.10.1234.72"
DERM_SOP = "1.2.826.0.1.3680043.10.1234.73"
SECRETS = ("SWEEP-DERM-1", "Skinner", "ACC-DERM-77")
"""What SITE-A's patient is: its ID, its family name, its accession number."""
PSY_STUDY = "1.2.826.0.1.3680043.10.1234.81"

PARAMETERS = {"study": DERM_STUDY, "series": DERM_SERIES, "sop": DERM_SOP, "frame_list": "1",
              "tag": "7FE00010", "export_id": "1", "job_id": "1", "hold_id": "1", "username": "psy"}
QUERY = f"studyUID={DERM_STUDY}&seriesUID={DERM_SERIES}&objectUID={DERM_SOP}&requestType=WADO" \
        "&PatientID=SWEEP-DERM-1&StudyInstanceUID=" + DERM_STUDY
BODIES: dict[str, Any] = {
    "/api/exports": {"studies": [DERM_STUDY], "project": "sweep",
                     "destination": {"kind": "zip", "target": "sweep.zip"}},
    "/api/holds": {"StudyInstanceUID": DERM_STUDY, "reason": "an attacker's hold"},
    "/api/users": {"username": "mallory", "password": "mallory-password-1", "roles": ["administrator"]},
    "/api/users/{username}": {"roles": ["administrator"], "facilities": [], "departments": []},
    "/api/break-glass": {"study": DERM_STUDY},  # no reason: refused
}


def served_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route: the OpenAPI paths and the plain Starlette routes and mounts."""
    routes = [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
              for method in operations]
    for route in app.routes:
        if isinstance(route, Mount):
            routes.append(("GET", route.path + "/index.html"))
        elif isinstance(route, Route) and not isinstance(route, APIRoute):
            routes += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return sorted(set(routes))


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda match: PARAMETERS.get(match[1], "x"), path) + "?" + QUERY


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("sweep"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0),
                             security=SecuritySettings(initial_admin_password="administrator password 1",
                                                       credential_cache_seconds=0)))
    mosaic.start(dicom=False)
    mosaic.ingest.store(to_bytes(make_instance(patient_id="SWEEP-DERM-1", patient_name="Skinner^Sam",
                                               accession="ACC-DERM-77", study_uid=DERM_STUDY,
                                               series_uid=DERM_SERIES, sop_uid=DERM_SOP)),
                        door="import", facility="SITE-A", department="DERMATOLOGY")
    mosaic.ingest.store(to_bytes(make_instance(patient_id="SWEEP-PSY-1", patient_name="Mind^Max", accession="B-1",
                                               study_uid=PSY_STUDY)),
                        door="import", facility="SITE-B", department="PSYCHIATRY")
    mosaic.identity.add_user("psy", roles=["clinician"], password="psy-password-1", facilities=["SITE-B"])
    yield mosaic
    mosaic.stop()


def sweep(node: Mosaic, **client: Any) -> list[tuple[str, str, httpx.Response]]:
    answers = []
    with httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", timeout=120, **client) as http:
        for method, template in served_routes(node.http_app()):
            body = BODIES.get(template)
            answers.append((method, template, http.request(method, concrete(template),
                                                          json=body if method in ("POST", "PATCH") else None)))
    return answers


def test_the_sweep_reaches_every_kind_of_route(node: Mosaic) -> None:
    """The sweep is only worth something if it covers the doors: DICOMweb, WADO-URI, the API, pages, viewer."""
    templates = {template for _method, template in served_routes(node.http_app())}
    for expected in ("/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}",
                     "/wado", "/api/exports", "/api/studies/{study}", "/api/users/{username}", "/audit", "/"):
        assert expected in templates
    assert any(template.startswith("/viewer") for template in templates)
    assert len(templates) >= 40


def test_no_route_answers_a_stranger(node: Mosaic) -> None:
    for method, template, answer in sweep(node):
        where = f"{method} {template}"
        if is_public(template) or template.startswith("/viewer/index.html"):
            assert answer.status_code < 500, where
        else:
            assert answer.status_code == 401, f"{where}: {answer.status_code} {answer.text[:200]}"
        assert not any(secret in answer.text for secret in SECRETS), where


def test_another_sites_clinician_learns_nothing_and_changes_nothing(node: Mosaic) -> None:
    wrong = []
    for method, template, answer in sweep(node, auth=("psy", "psy-password-1"),
                                          headers={"Accept": "application/json"}):
        where = f"{method} {template}: {answer.status_code} {answer.text[:300]}"
        if answer.status_code >= 500 or any(secret in answer.text for secret in SECRETS):
            wrong.append(where)
        elif ("{study}" in template or template in ("/wado", "/dicom-web/wado")
              or (method != "GET" and template not in ("/login", "/logout"))) and answer.status_code < 400:
            wrong.append(where)  # nothing of SITE-A served, nothing written
    assert wrong == []
    with httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", timeout=120,
                      auth=("admin", "administrator password 1")) as admin:
        assert admin.get(f"/dicom-web/studies/{DERM_STUDY}/metadata").status_code == 200  # not deleted
        assert [user["username"] for user in admin.get("/api/users").json()["users"]
                if "administrator" in user["roles"]] == ["admin"]  # no one promoted, no one added
        assert admin.get("/api/holds").json()["holds"] == []


OPEN_TO_ANY_USER = frozenset({
    ("GET", "/api/me"), ("POST", "/api/break-glass"), ("POST", "/logout"),
    ("GET", "/api/jobs"), ("GET", "/api/jobs/{job_id}"), ("POST", "/api/jobs/{job_id}/cancel"),
    ("GET", "/api/exports/{export_id}"),  # one's own jobs and exports only: 404 for anyone else's
    ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"), ("GET", "/openapi.json"),
    ("GET", "/fhir/metadata"),  # the FHIR server's CapabilityStatement: what it does, no patient data
})
"""Routes a signed-in user with no role may use: about themselves, their own jobs, the API's description.
Every other route must refuse such a user, so a route added without a permission check fails here."""


def test_every_other_route_refuses_a_user_without_a_role(node: Mosaic) -> None:
    node.identity.add_user("nobody", roles=[], password="nobody-password-1")
    wrong = []
    for method, template, answer in sweep(node, auth=("nobody", "nobody-password-1"),
                                          headers={"Accept": "application/json"}):
        where = f"{method} {template}: {answer.status_code} {answer.text[:200]}"
        public = is_public(template) or template.startswith(("/viewer", "/static"))  # no data behind them
        leaked = any(secret in answer.text for secret in SECRETS) or answer.status_code >= 500
        unguarded = not public and (method, template) not in OPEN_TO_ANY_USER and answer.status_code != 403
        # the list is kept true: a route on it that now refuses everyone leaves it
        stale = (method, template) in OPEN_TO_ANY_USER and answer.status_code not in (200, 303, 400, 404)
        if leaked or unguarded or stale:
            wrong.append(where)
    assert wrong == []
