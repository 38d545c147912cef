"""Storage Commitment Push Model (PS3.4 Annex J): a pynetdicom SCU asks with N-ACTION and receives the
result as an N-EVENT-REPORT on the same association."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import select

from mosaic.app import Mosaic
from mosaic.config import DicomPeer
from mosaic.index.schema import StorageCommitment
from tests.dimse_support import LOCALHOST, MOSAIC_AE, peer_args, run_tool, start_node
from tests.factory import PREFIX, make_instance, to_bytes
from tests.helpers import free_port

pytestmark = pytest.mark.dcmtk

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REPORT_TIMEOUT = 10


@pytest.fixture
def node(tmp_path: Path, dcmtk: dict[str, str]) -> Iterator[Mosaic]:
    mosaic = start_node(tmp_path / "mosaic")
    yield mosaic
    mosaic.stop()


def store(node: Mosaic, folder: Path, count: int, env: dict[str, str]) -> list[str]:
    """Store ``count`` CT instances with storescu; their SOP Instance UIDs."""
    paths, uids = [], []
    for number in range(count):
        dataset = make_instance(patient_id="COMMIT", instance_number=number + 1)
        path = folder / f"{number}.dcm"
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
        uids.append(str(dataset.SOPInstanceUID))
    result = run_tool("storescu", *peer_args(node), *paths, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return uids


def reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def request_commitment(node: Mosaic, references: list[Dataset]) -> tuple[str, int, int, Dataset]:
    """N-ACTION on one association, waiting there for the N-EVENT-REPORT.

    Returns (Transaction UID, N-ACTION status, event type, event information).
    """
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_event_report(event: Event) -> tuple[int, None]:
        reports.put((int(event.event_type or 0), event.event_information))
        return 0x0000, None

    ae = AE(ae_title="COMMITTER")
    ae.add_requested_context(StorageCommitmentPushModel)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE,
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_event_report)])
    assert association.is_established
    action = Dataset()
    action.TransactionUID = generate_uid(prefix=PREFIX)
    action.ReferencedSOPSequence = references
    try:
        status, _reply = association.send_n_action(action, 1, StorageCommitmentPushModel,
                                                   STORAGE_COMMITMENT_INSTANCE)
        assert status, "no N-ACTION response"
        event_type, information = reports.get(timeout=REPORT_TIMEOUT)
    finally:
        association.release()
    return str(action.TransactionUID), int(status.Status), event_type, information


def wait_for_state(node: Mosaic, transaction: str) -> str:
    """The recorded state of a commitment request once it has left PENDING (the SCP records it after the
    N-EVENT-REPORT response arrives, which may be after the requestor has seen the report)."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while True:
        with node.database.session() as session:
            row = session.scalars(select(StorageCommitment)
                                  .where(StorageCommitment.TransactionUID == transaction)).one()
        if row.state != "PENDING" or time.monotonic() > deadline:
            assert row.requestor_ae_title == "COMMITTER"
            return row.state
        time.sleep(0.02)


def referenced(sequence: list[Dataset]) -> list[tuple[str, str]]:
    return sorted((str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)) for item in sequence)


def test_stored_instances_are_reported_committed(node: Mosaic, tmp_path: Path, dcmtk: dict[str, str]) -> None:
    uids = store(node, tmp_path, 3, dcmtk)
    transaction, status, event_type, report = request_commitment(
        node, [reference(CTImageStorage, uid) for uid in uids])
    assert status == 0x0000
    assert event_type == 1  # Storage Commitment Request Successful
    assert report.TransactionUID == transaction
    assert referenced(report.ReferencedSOPSequence) == sorted((CTImageStorage, uid) for uid in uids)
    assert "FailedSOPSequence" not in report
    assert wait_for_state(node, transaction) == "COMMITTED"


def test_unknown_instance_is_reported_failed_with_no_such_object_instance(node: Mosaic, tmp_path: Path,
                                                                          dcmtk: dict[str, str]) -> None:
    [stored] = store(node, tmp_path, 1, dcmtk)
    unknown = generate_uid(prefix=PREFIX)
    _transaction, status, event_type, report = request_commitment(
        node, [reference(CTImageStorage, stored), reference(CTImageStorage, unknown)])
    assert status == 0x0000
    assert event_type == 2  # Storage Commitment Request Complete - Failures Exist
    assert referenced(report.ReferencedSOPSequence) == [(CTImageStorage, stored)]
    [failed] = report.FailedSOPSequence
    assert (failed.ReferencedSOPClassUID, failed.ReferencedSOPInstanceUID) == (CTImageStorage, unknown)
    assert failed.FailureReason == NO_SUCH_OBJECT_INSTANCE


def test_instance_stored_under_another_sop_class_is_a_class_instance_conflict(node: Mosaic, tmp_path: Path,
                                                                              dcmtk: dict[str, str]) -> None:
    [stored] = store(node, tmp_path, 1, dcmtk)
    _transaction, _status, event_type, report = request_commitment(node, [reference(MRImageStorage, stored)])
    assert event_type == 2
    [failed] = report.FailedSOPSequence
    assert failed.FailureReason == CLASS_INSTANCE_CONFLICT
    assert len(report.get("ReferencedSOPSequence", [])) == 0


def test_result_goes_to_a_new_association_when_the_requestor_has_released(tmp_path: Path,
                                                                         dcmtk: dict[str, str]) -> None:
    """PS3.4 J.3.3: the SCP opens an association to the requestor (a known peer), proposing the SCP role."""
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    listener_roles: list[tuple[bool, bool]] = []

    def on_event_report(event: Event) -> tuple[int, None]:
        context = next(cx for cx in event.assoc.accepted_contexts
                       if cx.abstract_syntax == StorageCommitmentPushModel)
        listener_roles.append((context.as_scu, context.as_scp))
        reports.put((int(event.event_type or 0), event.event_information))
        return 0x0000, None

    listener = AE(ae_title="COMMITTER")
    # the requestor of that association (Mosaic) must take the SCP role of Storage Commitment
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    server = listener.start_server((LOCALHOST, port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_event_report)])
    assert server is not None
    node = start_node(tmp_path / "mosaic", peers=[DicomPeer(ae_title="COMMITTER", host=LOCALHOST,  # type: ignore[call-arg]
                                                            port=port)])
    try:
        [stored] = store(node, tmp_path, 1, dcmtk)
        ae = AE(ae_title="COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
        assert association.is_established
        action = Dataset()
        action.TransactionUID = generate_uid(prefix=PREFIX)
        action.ReferencedSOPSequence = [reference(CTImageStorage, stored)]
        status, _reply = association.send_n_action(action, 1, StorageCommitmentPushModel,
                                                   STORAGE_COMMITMENT_INSTANCE)
        association.release()  # at once: the result cannot come on this association
        assert status and status.Status == 0x0000
        event_type, report = reports.get(timeout=REPORT_TIMEOUT)
        assert event_type == 1
        assert listener_roles == [(True, False)]  # Mosaic proposed, and got, the SCP role
        assert report.TransactionUID == action.TransactionUID
        assert referenced(report.ReferencedSOPSequence) == [(CTImageStorage, stored)]
        assert wait_for_state(node, str(action.TransactionUID)) == "COMMITTED"
    finally:
        node.stop()
        server.shutdown()


def test_a_peer_that_may_not_store_may_not_request_commitment(tmp_path: Path) -> None:
    node = start_node(tmp_path / "mosaic", peers=[DicomPeer(ae_title="COMMITTER", host=LOCALHOST,  # type: ignore[call-arg]
                                                            port=1, may_store=False)])
    try:
        ae = AE(ae_title="COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
        assert association.is_established
        action = Dataset()
        action.TransactionUID = generate_uid(prefix=PREFIX)
        action.ReferencedSOPSequence = [reference(CTImageStorage, "1.2.3.4")]
        status, _reply = association.send_n_action(action, 1, StorageCommitmentPushModel,
                                                   STORAGE_COMMITMENT_INSTANCE)
        association.release()
        assert status.Status == 0x0124
        with node.database.session() as session:
            assert session.query(StorageCommitment).count() == 0
    finally:
        node.stop()


def test_a_peer_calling_from_the_wrong_address_may_not_request_commitment(tmp_path: Path) -> None:
    node = start_node(tmp_path / "mosaic", allow_unknown_calling_aes=False, peers=[DicomPeer(  # type: ignore[call-arg]
        ae_title="COMMITTER", host=LOCALHOST, port=1, addresses=["10.20.30.40"])])
    try:
        ae = AE(ae_title="COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
        assert association.is_rejected  # the policy judges the address at association, as on the streaming path
        with node.database.session() as session:
            assert session.query(StorageCommitment).count() == 0
    finally:
        node.stop()


def test_a_scoped_peer_is_told_another_sites_instance_is_not_stored(tmp_path: Path) -> None:
    node = start_node(tmp_path / "mosaic", peers=[DicomPeer(  # type: ignore[call-arg]
        ae_title="COMMITTER", host=LOCALHOST, port=1, facility="SITE-A", scope_facilities=["SITE-A"])])
    try:
        ours = make_instance(patient_id="OURS", InstitutionName="SITE-A")
        theirs = make_instance(patient_id="THEIRS", InstitutionName="SITE-B")
        for dataset, facility in ((ours, "SITE-A"), (theirs, "SITE-B")):
            node.ingest.store(to_bytes(dataset), door="import", facility=facility)
        _transaction, status, event_type, report = request_commitment(node, [
            reference(CTImageStorage, str(ours.SOPInstanceUID)), reference(CTImageStorage, str(theirs.SOPInstanceUID))])
    finally:
        node.stop()
    assert status == 0x0000 and event_type == 2
    assert referenced(report.ReferencedSOPSequence) == [(CTImageStorage, str(ours.SOPInstanceUID))]
    failed = report.FailedSOPSequence
    assert [(str(item.ReferencedSOPInstanceUID), int(item.FailureReason)) for item in failed] == [
        (str(theirs.SOPInstanceUID), NO_SUCH_OBJECT_INSTANCE)]  # exactly what a missing instance gets
