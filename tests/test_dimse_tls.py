"""DICOM over TLS (IHE ATNA secure node) with dcmtk's own TLS: a peer bound to its certificate is served only on
the TLS listener with that certificate; callers without a certificate, with one of another CA, an expired one or
one of another name are refused and audited; C-MOVE reaches a TLS destination over TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomTlsSettings
from tests.dimse_support import (
    LOCALHOST,
    MOSAIC_AE,
    StoreSCP,
    counts,
    peer_args,
    run_tool,
    start_node,
)
from tests.factory import make_instance, to_bytes
from tests.helpers import wait_until
from tests.tls_support import certificate_authority, issued_certificate

pytestmark = pytest.mark.dcmtk


@dataclass
class Pki:
    ca: Path
    mosaic: tuple[Path, Path]
    modality: tuple[Path, Path]
    workstation: tuple[Path, Path]
    research: tuple[Path, Path]
    expired: tuple[Path, Path]
    impostor: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    hospital = certificate_authority(folder, "hospital-ca")
    (folder / "impostor").mkdir()
    other = certificate_authority(folder / "impostor", "impostor-ca")
    return Pki(ca=hospital[0], mosaic=issued_certificate(folder, hospital, "mosaic.example"),
               modality=issued_certificate(folder, hospital, "modality.example"),
               workstation=issued_certificate(folder, hospital, "workstation.example"),
               research=issued_certificate(folder, hospital, "research.example"),
               expired=issued_certificate(folder, hospital, "old-modality.example", expired=True),
               impostor=issued_certificate(folder / "impostor", other, "modality.example"))


def tls_options(pki: Pki, identity: tuple[Path, Path] | None) -> list[str]:
    """dcmtk: ``+tls KEY CERT`` (or anonymous TLS) and the hospital CA as trusted."""
    start = ["+tls", str(identity[1]), str(identity[0])] if identity else ["+tla"]
    return [*start, "+cf", str(pki.ca)]


@pytest.fixture
def destination(tmp_path: Path, pki: Pki, dcmtk: dict[str, str]) -> Iterator[StoreSCP]:
    """A research PACS that only speaks TLS and wants Mosaic's certificate."""
    scp = StoreSCP(tmp_path / "research", dcmtk, ae_title="RESEARCH",
                   options=tls_options(pki, pki.research)).start()
    yield scp
    scp.stop()


@pytest.fixture
def node(tmp_path: Path, pki: Pki, destination: StoreSCP) -> Iterator[Mosaic]:
    mosaic = start_node(tmp_path / "mosaic", allow_unknown_calling_aes=False, peers=[
        DicomPeer(ae_title="MODALITY", host=LOCALHOST, port=1,  # type: ignore[call-arg]
                  certificate_names=["modality.example"]),
        DicomPeer(ae_title="OLDMODALITY", host=LOCALHOST, port=1,  # type: ignore[call-arg]
                  certificate_names=["old-modality.example"]),
        DicomPeer(ae_title="VIEWER", host=LOCALHOST, port=1),  # type: ignore[call-arg]
        DicomPeer(ae_title="RESEARCH", host=LOCALHOST, port=destination.port, tls=True,  # type: ignore[call-arg]
                  may_store=False),
    ], tls=DicomTlsSettings(enabled=True, port=0, cert_file=pki.mosaic[0], key_file=pki.mosaic[1],  # type: ignore[call-arg]
                            ca_file=pki.ca))
    yield mosaic
    mosaic.stop()


def tls_args(node: Mosaic, calling_ae: str) -> list[str]:
    assert node.dicom is not None
    return ["-aec", MOSAIC_AE, "-aet", calling_ae, LOCALHOST, str(node.dicom.tls_port)]


def instance_file(folder: Path, patient_id: str) -> tuple[Path, str]:
    dataset = make_instance(patient_id=patient_id)
    path = folder / f"{patient_id}.dcm"
    path.write_bytes(to_bytes(dataset))
    return path, str(dataset.SOPInstanceUID)


def denials(node: Mosaic) -> list[tuple[str, str]]:
    node.audit.flush()
    rows = node.audit.search(action="login", limit=50)[0]
    return [(row.actor, json.loads(row.detail or "{}").get("reason", "")) for row in rows if row.outcome == "denied"]


def test_a_modality_stores_over_tls_with_its_certificate(node: Mosaic, pki: Pki, tmp_path: Path,
                                                       dcmtk: dict[str, str]) -> None:
    path, uid = instance_file(tmp_path, "TLS-1")
    result = run_tool("storescu", *tls_options(pki, pki.modality), *tls_args(node, "MODALITY"), path, env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(node)["Instance"] == 1
    node.audit.flush()
    stores = node.audit.search(action="store", limit=10)[0]
    assert [(row.actor, row.SOPInstanceUID, row.outcome) for row in stores] == [("MODALITY", uid, "success")]
    echo = run_tool("echoscu", *tls_options(pki, pki.workstation), *tls_args(node, "VIEWER"), env=dcmtk)
    assert echo.returncode == 0, echo.stdout + echo.stderr  # a peer not bound to a certificate may use TLS too


@pytest.mark.parametrize(("identity", "why"), [(None, "no certificate"), ("impostor", "another CA"),
                                               ("expired", "expired")])
def test_callers_that_cannot_authenticate_their_node_are_refused_and_audited(
        node: Mosaic, pki: Pki, tmp_path: Path, dcmtk: dict[str, str], identity: str | None, why: str) -> None:
    path, _uid = instance_file(tmp_path, "TLS-2")
    certificate = getattr(pki, identity) if identity else None
    calling = "OLDMODALITY" if identity == "expired" else "MODALITY"
    result = run_tool("storescu", *tls_options(pki, certificate), *tls_args(node, calling), path, env=dcmtk)
    assert result.returncode != 0, f"{why}: {result.stdout}{result.stderr}"
    assert counts(node)["Instance"] == 0
    # the server records the refusal right after its side of the handshake fails, which the client may outrun
    wait_until(lambda: any(actor == "(TLS)" for actor, _reason in denials(node)), timeout=30,
               what=f"audited TLS refusal ({why})")
    refused = [reason for actor, reason in denials(node) if actor == "(TLS)"]
    assert "TLS handshake failed" in refused[0], (why, denials(node))


def test_a_certificate_bound_peer_is_refused_without_tls_or_with_another_nodes_certificate(
        node: Mosaic, pki: Pki, tmp_path: Path, dcmtk: dict[str, str]) -> None:
    path, _uid = instance_file(tmp_path, "TLS-3")
    # its AE title alone, on the plain port: the association is rejected
    plain = run_tool("storescu", *peer_args(node, "MODALITY"), path, env=dcmtk)
    assert "Association Rejected" in plain.stdout + plain.stderr
    # a valid hospital certificate, but of another node: rejected at association too, nothing is stored
    other = run_tool("storescu", "-v", *tls_options(pki, pki.workstation), *tls_args(node, "MODALITY"), path, env=dcmtk)
    assert "Association Rejected" in other.stdout + other.stderr, other.stdout + other.stderr
    assert counts(node)["Instance"] == 0
    assert ("MODALITY", "association rejected: this peer must call on the TLS listener with its certificate") \
        in denials(node)
    assert ("MODALITY", "association rejected: the TLS certificate does not name this peer") in denials(node)


def test_cmove_reaches_a_tls_destination_over_tls(node: Mosaic, destination: StoreSCP, tmp_path: Path,
                                                  dcmtk: dict[str, str]) -> None:
    node.ingest.store(to_bytes(make_instance(patient_id="TLS-4")), door="import")
    result = run_tool("movescu", "-S", "-aem", "RESEARCH", "-k", "QueryRetrieveLevel=PATIENT", "-k",
                      "PatientID=TLS-4", *peer_args(node, "VIEWER"), env=dcmtk, logs=[destination.log])
    assert result.returncode == 0, result.stdout + result.stderr
    received = destination.received()
    assert len(received) == 1, destination.log.read_text(errors="replace")[-2000:]
