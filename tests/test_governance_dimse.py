"""The DICOM door under the same policy and audit as HTTP: unknown AEs refused by default, peers held to
their address, facility/department scope on C-FIND, C-MOVE and C-GET, and every operation audited.
Peers are dcmtk's tools (storescu, findscu, movescu into a storescp, getscu)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, HttpSettings, Settings
from tests.auth_support import auth_headers
from tests.dimse_support import LOCALHOST, MOSAIC_AE, StoreSCP, counts, received_files, run_tool
from tests.factory import make_instance, to_bytes

pytestmark = pytest.mark.dcmtk

DERM_STUDY = "1.2.826.0.1.3680043.10.1234.501"
PSY_STUDY = "1.2.826.0.1.3680043.10.1234.502"


def peer(ae_title: str, **values: object) -> DicomPeer:
    return DicomPeer(ae_title=ae_title, host=LOCALHOST, port=104, **values)  # type: ignore[arg-type]


@dataclass
class Site:
    node: Mosaic
    destination: StoreSCP
    work: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str]) -> Iterator[Site]:
    """Default DICOM settings (unknown AEs refused); two modalities that label what they store with their
    facility and department, a dermatology workstation scoped to site A, and one peer bound to an address."""
    work = tmp_path_factory.mktemp("dimse-governance")
    destination = StoreSCP(work / "moved", dcmtk, ae_title="DERM_WS").start()
    peers = [
        peer("DERM_CAM", facility="SITE-A", department="DERMATOLOGY"),
        peer("PSY_CAM", facility="SITE-B", department="PSYCHIATRY"),
        DicomPeer(ae_title="DERM_WS", host=LOCALHOST, port=destination.port,  # type: ignore[call-arg]
                  scope_facilities=["SITE-A"], scope_departments=["DERMATOLOGY"]),
        peer("FARAWAY", addresses=["10.99.99.99"]),
        peer("WORKSTATION"),  # a reading room workstation: people sign in on it (user identity negotiation)
    ]
    node = Mosaic(Settings(data_dir=work / "mosaic", http=HttpSettings(port=0),
                           dicom=DicomSettings(ae_title=MOSAIC_AE, port=0, peers=peers)))  # type: ignore[call-arg]
    node.start()
    node.identity.add_user("derm.doc", roles=["clinician"], password="derm-doc-password", facilities=["SITE-A"],
                           departments=["DERMATOLOGY"])
    for ae_title, patient, study in (("DERM_CAM", "DERM-9", DERM_STUDY), ("PSY_CAM", "PSY-9", PSY_STUDY)):
        path = work / f"{patient}.dcm"
        path.write_bytes(to_bytes(make_instance(patient_id=patient, study_uid=study)))
        result = run_tool("storescu", "-aet", ae_title, "-aec", MOSAIC_AE, LOCALHOST, str(node.dicom_port), path,
                          env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
    yield Site(node, destination, work)
    node.stop()
    destination.stop()


def calling(site: Site, ae_title: str) -> list[str]:
    return ["-aet", ae_title, "-aec", MOSAIC_AE, LOCALHOST, str(site.node.dicom_port)]


def find_studies(site: Site, ae_title: str, folder: Path, dcmtk: dict[str, str], **keys: str) -> list[str]:
    import pydicom

    folder.mkdir()
    args = ["-S", "-X", "-od", folder, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}"]
    result = run_tool("findscu", *args, *calling(site, ae_title), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(str(pydicom.dcmread(path).StudyInstanceUID) for path in folder.glob("rsp*.dcm"))


def audit(site: Site, **filters: str) -> list[object]:
    site.node.audit.flush()
    return site.node.audit.search(limit=1000, **filters)[0]  # type: ignore[arg-type]


def test_stored_studies_carry_the_peers_facility_and_department(site: Site) -> None:
    from mosaic.index.schema import Study

    with site.node.database.session() as session:
        labels = {row.StudyInstanceUID: (row.facility, row.department) for row in session.query(Study)}
    assert labels == {DERM_STUDY: ("SITE-A", "DERMATOLOGY"), PSY_STUDY: ("SITE-B", "PSYCHIATRY")}
    stores = audit(site, action="store", user="DERM_CAM")
    assert len(stores) == 1
    record = stores[0]
    assert (record.interface, record.address, record.outcome, record.PatientID, record.StudyInstanceUID) == (
        "dimse", LOCALHOST, "success", "DERM-9", DERM_STUDY)


@pytest.mark.parametrize("tool", ["storescu", "findscu", "movescu", "getscu"])
def test_an_unknown_ae_gets_nothing_by_default(site: Site, tool: str, dcmtk: dict[str, str]) -> None:
    before = counts(site.node)
    intruder = site.work / f"intruder-{tool}.dcm"
    intruder.write_bytes(to_bytes(make_instance(patient_id="INTRUDER")))
    folder = site.work / f"stolen-{tool}"
    folder.mkdir()
    args: list[str | Path] = {
        "storescu": [],
        "findscu": ["-S", "-X", "-od", folder, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID"],
        "movescu": ["-S", "-aem", "DERM_WS", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={PSY_STUDY}"],
        "getscu": ["-S", "-od", folder, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={PSY_STUDY}"],
    }[tool]
    files = [intruder] if tool == "storescu" else []  # storescu takes its files after the peer's address
    result = run_tool(tool, *args, *calling(site, "STRANGER"), *files, env=dcmtk)
    assert "Association Rejected" in result.stdout + result.stderr, result.stdout + result.stderr
    assert counts(site.node) == before
    assert list(folder.iterdir()) == []
    assert PSY_STUDY not in received_files(site.destination.folder)


def test_a_known_ae_calling_from_the_wrong_address_is_refused(site: Site, dcmtk: dict[str, str]) -> None:
    folder = site.work / "faraway"
    folder.mkdir()
    result = run_tool("findscu", "-S", "-X", "-od", folder, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID",
                      *calling(site, "FARAWAY"), env=dcmtk)
    assert result.returncode != 0 or not list(folder.glob("rsp*.dcm"))
    assert list(folder.glob("rsp*.dcm")) == []


def test_cfind_answers_only_the_peers_scope(site: Site, tmp_path: Path, dcmtk: dict[str, str]) -> None:
    assert find_studies(site, "DERM_CAM", tmp_path / "all", dcmtk) == sorted([DERM_STUDY, PSY_STUDY])
    assert find_studies(site, "DERM_WS", tmp_path / "derm", dcmtk) == [DERM_STUDY]
    # asking for the other site's patient by name finds nothing, not "not allowed"
    assert find_studies(site, "DERM_WS", tmp_path / "psy", dcmtk, PatientID="PSY-9") == []
    queries = audit(site, action="query", user="DERM_WS")
    assert queries and all(record.interface == "dimse" for record in queries)
    assert any(record.PatientID == "PSY-9" and '"matches": 0' in record.detail for record in queries)


def test_cmove_and_cget_send_only_studies_in_scope(site: Site, dcmtk: dict[str, str]) -> None:
    for study in (DERM_STUDY, PSY_STUDY):
        result = run_tool("movescu", "-S", "-aem", "DERM_WS", "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={study}", *calling(site, "DERM_WS"), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
    moved = received_files(site.destination.folder)
    assert len(moved) == 1
    import pydicom

    assert str(pydicom.dcmread(next(iter(moved.values()))).StudyInstanceUID) == DERM_STUDY
    got = site.work / "got"
    got.mkdir()
    result = run_tool("getscu", "-S", "-od", got, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={PSY_STUDY}", *calling(site, "DERM_WS"), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert received_files(got) == {}
    reads = audit(site, action="read", user="DERM_WS")
    assert [record.StudyInstanceUID for record in reads] == [DERM_STUDY]
    assert "DERM_WS" in reads[0].detail and '"C-MOVE"' in reads[0].detail


def test_refusals_are_audited(site: Site, dcmtk: dict[str, str]) -> None:
    intruder = site.work / "intruder-audit.dcm"
    intruder.write_bytes(to_bytes(make_instance(patient_id="INTRUDER")))
    run_tool("movescu", "-S", "-aem", "DERM_WS", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={PSY_STUDY}", *calling(site, "STRANGER"), env=dcmtk)
    denied = [record for record in audit(site, user="STRANGER") if record.outcome == "denied"]
    assert denied and all(record.actor_kind == "ae" for record in denied)


def test_an_auditor_sees_both_doors_in_one_trail(site: Site) -> None:
    headers = auth_headers(site.node)
    found = httpx.get(f"http://{LOCALHOST}:{site.node.http_port}/api/audit", headers=headers,
                      params={"study": DERM_STUDY}).json()["records"]
    assert {"dimse"} <= {record["interface"] for record in found}


def test_patient_level_counts_only_what_the_peer_may_see(site: Site, tmp_path: Path,
                                                         dcmtk: dict[str, str]) -> None:
    import pydicom

    labels = (("DERM_CAM", "SITE-A", "DERMATOLOGY", "1.2.826.0.1.3680043.10.1234.511"),
              ("PSY_CAM", "SITE-B", "PSYCHIATRY", "1.2.826.0.1.3680043.10.1234.512"))
    for ae_title, facility, department, study in labels:
        site.node.ingest.store(to_bytes(make_instance(patient_id="SHARED-1", study_uid=study)), door="import",
                               source_ae_title=ae_title, facility=facility, department=department)
    answers = {}
    for ae_title in ("DERM_CAM", "DERM_WS"):
        folder = tmp_path / ae_title
        folder.mkdir()
        result = run_tool("findscu", "-P", "-X", "-od", folder, "-k", "QueryRetrieveLevel=PATIENT",
                          "-k", "PatientID=SHARED-1", "-k", "NumberOfPatientRelatedStudies",
                          "-k", "NumberOfPatientRelatedInstances", *calling(site, ae_title), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        [response] = [pydicom.dcmread(path) for path in folder.glob("rsp*.dcm")]
        answers[ae_title] = (int(response.NumberOfPatientRelatedStudies),
                             int(response.NumberOfPatientRelatedInstances))
    assert answers == {"DERM_CAM": (2, 2), "DERM_WS": (1, 1)}


def find_as(site: Site, ae_title: str, user: tuple[str, str] | None) -> list[str] | None:
    """Study-level C-FIND with pynetdicom, signed in as ``user`` (name, passcode) when given; None when the
    association is rejected."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import UserIdentityNegotiation
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    negotiation = []
    if user is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type = 2
        item.primary_field = user[0].encode()
        item.secondary_field = user[1].encode()
        negotiation.append(item)
    association = ae.associate(LOCALHOST, site.node.dicom_port, ae_title=MOSAIC_AE, ext_neg=negotiation)
    if not association.is_established:
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found: list[str] = []
    try:
        for status, identifier in association.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(str(identifier.StudyInstanceUID))
    finally:
        association.release()
    return sorted(found)


def test_a_person_signed_in_on_a_workstation_sees_their_own_scope(site: Site) -> None:
    everything = find_as(site, "WORKSTATION", None)
    assert everything is not None and {DERM_STUDY, PSY_STUDY} <= set(everything)
    signed_in = find_as(site, "WORKSTATION", ("derm.doc", "derm-doc-password"))
    assert signed_in is not None and DERM_STUDY in signed_in and PSY_STUDY not in signed_in
    from mosaic.index.schema import Study

    with site.node.database.session() as session:
        site_a = {row.StudyInstanceUID for row in session.query(Study) if row.facility == "SITE-A"}
    assert set(signed_in) == site_a
    assert find_as(site, "WORKSTATION", ("derm.doc", "wrong-password")) is None  # rejected
    logins = audit(site, action="login", user="derm.doc")
    assert {record.outcome for record in logins} == {"success", "denied"}
    assert all(record.interface == "dimse" and "WORKSTATION" in record.detail for record in logins)
    queries = audit(site, action="query", user="derm.doc")
    assert queries and queries[0].actor_kind == "user"


def test_a_scoped_peer_cannot_store_into_another_sites_study(site: Site, dcmtk: dict[str, str]) -> None:
    intruder = site.work / "into-psy.dcm"
    intruder.write_bytes(to_bytes(make_instance(patient_id="PSY-9", study_uid=PSY_STUDY)))
    before = counts(site.node)
    result = run_tool("storescu", "-d", *calling(site, "DERM_WS"), intruder, env=dcmtk)
    assert "0x0124" in (result.stdout + result.stderr).lower(), result.stdout + result.stderr  # refused, by status
    assert counts(site.node) == before
