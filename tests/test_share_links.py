"""Share links over real HTTP: a clinician shares a study of their own facility; the recipient, with no account,
opens the link (and its PIN) and sees exactly that study — QIDO-RS through the link's cookie finds only it, another
study's WADO-RS, the portal, the API and FHIR are refused; wrong PINs lock the link; expired and withdrawn links are
refused; the download is an IHE PDI file-set pydicom reads back (de-identified when the link says so); refused
attempts are throttled per address; every use is audited with the link and its creator."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.fileset import FileSet
from sqlalchemy import update

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings, SharingSettings
from mosaic.governance.audit import AuditAction
from mosaic.index.schema import ShareLink
from mosaic.services.origin import IngestOrigin
from mosaic.services.shares import RefusalThrottle
from tests.factory import make_bytes
from tests.helpers import LOCALHOST

ROOT = "1.2.826.0.1.3680043.10.1234.61."
NORTH = ("north.doc", "north-doctor-password")
TECH = ("north.tech", "north-tech-password")
ADMIN = ("boss", "administrator-password")
STUDIES = {  # suffix: (patient, facility, instances)
    "1": ("P1", "north", 2),
    "2": ("P1", "north", 1),
    "3": ("P1", "south", 1),  # another facility's: north's clinician can neither see nor share it
    "4": ("P2", "north", 1),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("shares"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0), sharing=SharingSettings(pin_attempts=3)))
    for suffix, (patient, facility, count) in STUDIES.items():
        uid = ROOT + suffix
        for number in range(1, count + 1):
            mosaic.ingest.store(make_bytes(patient_id=patient, issuer="HOSP", patient_name=f"Patient^{patient}",
                                           study_uid=uid, series_uid=f"{uid}.1", sop_uid=f"{uid}.1.{number}",
                                           instance_number=number), IngestOrigin(door="test", facility=facility))
    mosaic.start(dicom=False)
    mosaic.identity.add_user(NORTH[0], roles=["clinician"], password=NORTH[1], facilities=["north"])
    mosaic.identity.add_user(TECH[0], roles=["technologist"], password=TECH[1], facilities=["north"])
    mosaic.identity.add_user(ADMIN[0], roles=["administrator"], password=ADMIN[1])
    yield mosaic
    mosaic.stop()


def url(node: Mosaic, path: str) -> str:
    return f"http://{LOCALHOST}:{node.http_port}{path}"


def share(node: Mosaic, studies: list[str], who: tuple[str, str] = NORTH, **options: object) -> httpx.Response:
    return httpx.post(url(node, "/api/shares"), auth=who, timeout=30,
                      json={"studies": studies, "recipient": "provider", "note": "second opinion", **options})


def created(node: Mosaic, studies: list[str], **options: object) -> dict[str, object]:
    answer = share(node, studies, **options)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def recipient(node: Mosaic) -> httpx.Client:
    """A browser with no account (its own cookie jar)."""
    return httpx.Client(base_url=url(node, ""), timeout=30, headers={"Accept": "text/html"})


def path_of(link: dict[str, object]) -> str:
    return "/share/" + str(link["url"]).rsplit("/share/", 1)[1]


def test_a_link_opens_exactly_its_study_and_nothing_else(node: Mosaic) -> None:
    link = created(node, [ROOT + "1"])
    assert len(path_of(link)) > len("/share/") + 32 and "pin_code" not in link
    with recipient(node) as browser:
        page = browser.get(path_of(link))
        assert page.status_code == 200, page.text
        assert "Synthetic study" in page.text and f"StudyInstanceUIDs={ROOT}1" in page.text
        assert "mosaic_share" in browser.cookies and 'href="/portal"' not in page.text  # no navigation
        found = browser.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
        assert found.status_code == 200, found.text
        assert [study["0020000D"]["Value"][0] for study in found.json()] == [ROOT + "1"]
        series = browser.get("/dicom-web/series", headers={"Accept": "application/dicom+json"})
        assert {item["0020000D"]["Value"][0] for item in series.json()} == {ROOT + "1"}
        assert browser.get(f"/dicom-web/studies/{ROOT}1/metadata").status_code == 200
        for other in ("2", "3", "4"):  # the same patient's other study, another facility's, another patient's
            assert browser.get(f"/dicom-web/studies/{ROOT}{other}/metadata").status_code == 404
            assert browser.get(f"/dicom-web/studies/{ROOT}{other}/series/{ROOT}{other}.1/instances/"
                               f"{ROOT}{other}.1.1").status_code == 404
        for refused in ("/portal", f"/portal/studies/{ROOT}1", "/api/shares", "/fhir/ImagingStudy", "/audit", "/",
                        "/api/changes", "/shares", f"/wado?requestType=WADO&studyUID={ROOT}1"):
            answer = browser.get(refused)
            assert answer.status_code == 403, (refused, answer.status_code, answer.text)
        assert browser.post("/dicom-web/studies", content=b"x").status_code == 403  # no STOW either
        assert browser.get("/viewer/").status_code not in (401, 403)  # the viewer loads (its studies via DICOMweb)


def test_a_creator_shares_only_what_they_may_see_and_of_one_patient(node: Mosaic) -> None:
    other_facility = share(node, [ROOT + "3"])
    unknown = share(node, [ROOT + "99"])
    assert other_facility.status_code == unknown.status_code == 404
    assert ROOT + "3" in other_facility.json()["error"]
    assert share(node, [ROOT + "1", ROOT + "4"]).status_code == 400  # two patients
    assert share(node, [ROOT + "1"], TECH).status_code == 403  # technologists do not share
    assert share(node, [ROOT + "1"], days=10_000).status_code == 400  # beyond sharing.max_days
    assert share(node, [ROOT + "1"], recipient="anyone").status_code == 400
    both = created(node, [ROOT + "1", ROOT + "2"])
    assert both["studies"] == [ROOT + "1", ROOT + "2"] and both["PatientID"] == "P1"


def test_a_pin_is_asked_and_wrong_pins_lock_the_link(node: Mosaic) -> None:
    link = created(node, [ROOT + "2"], pin=True)
    pin = str(link["pin_code"])
    assert re.fullmatch(r"\d{8}", pin)
    wrong = "0" * 8 if pin != "0" * 8 else "1" * 8
    with recipient(node) as browser:
        form = browser.get(path_of(link))
        assert form.status_code == 200 and 'name="pin"' in form.text and "Synthetic study" not in form.text
        assert "mosaic_share" not in browser.cookies
        assert browser.get(path_of(link) + "/download").status_code == 403  # no session without the PIN
        first = browser.post(path_of(link), data={"pin": wrong})
        assert first.status_code == 403 and "2 more tries" in first.text
        assert browser.post(path_of(link), data={"pin": wrong}).status_code == 403
        locked = browser.post(path_of(link), data={"pin": wrong})
        assert locked.status_code == 403 and "locked" in locked.text
        assert browser.post(path_of(link), data={"pin": pin}).status_code == 403  # even the right one, now
        assert browser.get(path_of(link)).status_code == 403
    again = created(node, [ROOT + "2"], pin=True)
    with recipient(node) as browser:
        opened = browser.post(path_of(again), data={"pin": str(again["pin_code"])})
        assert opened.status_code == 303 and "mosaic_share" in browser.cookies
        page = browser.get(path_of(again))
        assert page.status_code == 200 and "Synthetic study" in page.text


def test_withdrawn_and_expired_links_are_refused(node: Mosaic) -> None:
    link = created(node, [ROOT + "1"])
    with recipient(node) as browser:
        assert browser.get(path_of(link)).status_code == 200
        assert browser.get(f"/dicom-web/studies/{ROOT}1/metadata").status_code == 200
        # someone else's link: not theirs to withdraw (nor to see)
        assert httpx.delete(url(node, f"/api/shares/{link['id']}"), auth=TECH, timeout=30).status_code == 403
        withdrawn = httpx.delete(url(node, f"/api/shares/{link['id']}"), auth=NORTH, timeout=30)
        assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "revoked"
        gone = browser.get(path_of(link))
        assert gone.status_code == 410 and "withdrawn" in gone.text
        assert browser.get(f"/dicom-web/studies/{ROOT}1/metadata",
                           headers={"Accept": "application/json"}).status_code == 401  # the session ended too
    expiring = created(node, [ROOT + "1"])
    with node.database.session(write=True) as session:  # its time has come (no clock waited for)
        session.execute(update(ShareLink).where(ShareLink.pk == expiring["id"])
                        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with recipient(node) as browser:
        expired = browser.get(path_of(expiring))
        assert expired.status_code == 410 and "expired" in expired.text
    assert recipient(node).get("/share/" + "x" * 43).status_code == 404


def _file_set(archive: bytes, folder: Path) -> FileSet:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        names = opened.namelist()
        assert "DICOMDIR" in names and "README.TXT" in names
        assert all(name in ("DICOMDIR", "README.TXT") or re.fullmatch(r"DICOM(/[A-Z0-9]{8})+", name)
                   for name in names), names
        opened.extractall(folder)
    return FileSet(folder / "DICOMDIR")


def test_the_download_is_a_pdi_file_set_of_the_shared_instances(node: Mosaic, tmp_path: Path) -> None:
    link = created(node, [ROOT + "1"])
    with recipient(node) as browser:
        browser.get(path_of(link))
        answer = browser.get(path_of(link) + "/download")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    file_set = _file_set(answer.content, tmp_path)
    instances = [instance.load() for instance in file_set]
    assert sorted(str(ds.SOPInstanceUID) for ds in instances) == [f"{ROOT}1.1.1", f"{ROOT}1.1.2"]
    assert {str(ds.PatientName) for ds in instances} == {"Patient^P1"}


def test_a_de_identified_link_downloads_de_identified_copies_and_shows_nothing(node: Mosaic, tmp_path: Path) -> None:
    link = created(node, [ROOT + "1"], deidentified=True, pin=True)
    with recipient(node) as browser:
        assert browser.post(path_of(link), data={"pin": str(link["pin_code"])}).status_code == 303
        page = browser.get(path_of(link))
        assert page.status_code == 200 and "de-identified" in page.text
        assert "Patient P1" not in page.text and "StudyInstanceUIDs" not in page.text
        assert browser.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"}).status_code == 403
        assert browser.get(f"/dicom-web/studies/{ROOT}1/metadata").status_code == 403
        answer = browser.get(path_of(link) + "/download")
        assert answer.status_code == 200
    instances = [instance.load() for instance in _file_set(answer.content, tmp_path)]
    assert len(instances) == 2
    for dataset in instances:
        assert "P1" not in str(dataset.PatientName) and dataset.PatientID != "P1"
        assert dataset.PatientIdentityRemoved == "YES"
        assert not str(dataset.SOPInstanceUID).startswith(ROOT)
    assert isinstance(instances[0], pydicom.Dataset)


def test_refused_attempts_are_throttled_per_address(node: Mosaic) -> None:
    moment = [1000.0]
    kept = node.shares.throttle
    node.shares.throttle = RefusalThrottle(3, clock=lambda: moment[0])
    try:
        with recipient(node) as browser:
            for attempt in range(3):
                assert browser.get(f"/share/{'y' * 40}{attempt}").status_code == 404
            waiting = browser.get("/share/" + "z" * 43)
            assert waiting.status_code == 429 and int(waiting.headers["retry-after"]) >= 1
            link = created(node, [ROOT + "1"])
            assert browser.get(path_of(link)).status_code == 429  # even a good link waits
            moment[0] += 61
            assert browser.get(path_of(link)).status_code == 200
    finally:
        node.shares.throttle = kept


def test_the_creator_and_administrators_list_links_and_every_use_is_audited(node: Mosaic) -> None:
    link = created(node, [ROOT + "1"])
    with recipient(node) as browser:
        browser.get(path_of(link))
        browser.get(path_of(link) + "/download")
        browser.get("/portal")
    mine = httpx.get(url(node, "/api/shares"), auth=NORTH, timeout=30).json()["shares"]
    assert link["id"] in [item["id"] for item in mine] and {item["created_by"] for item in mine} == {NORTH[0]}
    everyone = httpx.get(url(node, "/api/shares"), auth=ADMIN, timeout=30).json()["shares"]
    assert link["id"] in [item["id"] for item in everyone]
    page = httpx.get(url(node, "/shares"), auth=NORTH, timeout=30, headers={"Accept": "text/html"})
    assert page.status_code == 200 and f"/shares/{link['id']}/revoke" in page.text
    assert httpx.delete(url(node, f"/api/shares/{link['id']}"), auth=ADMIN, timeout=30).status_code == 200
    assert node.audit.flush()
    actor = f"share:{link['id']}:{NORTH[0]}"
    records, _total = node.audit.search(user=actor, limit=100)
    what = {(record.action, record.outcome, _what(record.detail)) for record in records}
    assert (AuditAction.READ, "success", "share opened") in what
    assert (AuditAction.EXPORT, "success", "share download") in what
    created_records, _ = node.audit.search(user=NORTH[0], action=AuditAction.EXPORT, limit=100)
    assert any(f'"share": {link["id"]}' in record.detail for record in created_records)
    revoked, _ = node.audit.search(user=ADMIN[0], action=AuditAction.POLICY_CHANGE, limit=100)
    assert any(f'"share": {link["id"]}' in record.detail for record in revoked)
    refused, _ = node.audit.search(user="share", action=AuditAction.LOGIN, limit=100)
    assert refused and all(record.outcome == "denied" for record in refused)
    assert all("/share/…" in record.detail for record in refused)  # the token is never written down


def test_the_form_page_creates_a_link(node: Mosaic) -> None:
    answer = httpx.post(url(node, "/shares"), auth=NORTH, timeout=30, headers={"Accept": "text/html"},
                        data={"studies": f"{ROOT}2", "recipient": "patient", "days": "3", "pin": "1"})
    assert answer.status_code == 201, answer.text
    assert re.search(r"/share/[A-Za-z0-9_-]{40,}", answer.text) and re.search(r"<b class=\"pin\">\d{8}</b>",
                                                                                answer.text)
    refused = httpx.post(url(node, "/shares"), auth=NORTH, timeout=30, headers={"Accept": "text/html"},
                         data={"studies": f"{ROOT}3", "recipient": "patient"})
    assert refused.status_code == 404 and "not one you may share" in refused.text


def _what(detail_json: str) -> str:
    import json

    return str(json.loads(detail_json).get("what", ""))


def test_a_break_glass_opening_is_not_a_right_to_share(node: Mosaic) -> None:
    """North's clinician may look at south's study for a few hours in an emergency; a 30-day outside link to it
    would outlive the emergency and escape the break-glass review: refused, like a study they cannot see."""
    opened = httpx.post(url(node, "/api/break-glass"), auth=NORTH, timeout=30,
                        json={"StudyInstanceUID": ROOT + "3", "reason": "patient collapsed in clinic"})
    assert opened.status_code in (200, 201), opened.text
    assert httpx.get(url(node, f"/dicom-web/studies/{ROOT}3/metadata"), auth=NORTH, timeout=30).status_code == 200
    refused = share(node, [ROOT + "3"], days=30)
    assert refused.status_code == 404, refused.text


def test_a_link_ends_with_its_creator_s_rights(node: Mosaic) -> None:
    """Disabling the account that shared a link (or taking the facility away) ends its links at once."""
    node.identity.add_user("leaving.doc", roles=["clinician"], password="leaving-doctor-password",
                           facilities=["north"])
    link = created_by(node, ("leaving.doc", "leaving-doctor-password"), [ROOT + "2"])
    with recipient(node) as browser:
        assert browser.get(path_of(link)).status_code == 200
        assert browser.get(f"/dicom-web/studies/{ROOT}2/metadata").status_code == 200
        node.identity.update_user("leaving.doc", active=False)
        node.shares._sessions.clear()  # this node's session cache (another node's lasts credential_cache_seconds)
        ended = browser.get(f"/dicom-web/studies/{ROOT}2/metadata", follow_redirects=False)
        assert ended.status_code in (303, 401, 403, 404) and ROOT + "2" not in ended.text  # to sign-in, no data
    with recipient(node) as browser:
        again = browser.get(path_of(link))
        assert again.status_code == 410 and "may no longer share" in again.text


def created_by(node: Mosaic, who: tuple[str, str], studies: list[str]) -> dict[str, object]:
    answer = share(node, studies, who)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())
