""""Study available": a stable study is announced once, as ORU^R01 over MLLP and as FHIR Subscription notifications.

Real sockets on both sides: a small MLLP receiver (python-hl7 parses what arrives) that answers AE or AA as the
test asks, and a small HTTP server that takes the rest-hook notifications (parsed with fhir.resources' R4B
Bundle). The stable time is short (0.5 s); nothing asserts how long anything took.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from alembic import command
from alembic.config import Config
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription
from sqlalchemy import create_engine, inspect, select

from mosaic.app import Mosaic
from mosaic.config import (
    DicomSettings,
    FhirSettings,
    Hl7Receiver,
    Hl7Settings,
    HttpSettings,
    Settings,
    WorkflowSettings,
)
from mosaic.core.events import EventType
from mosaic.core.times import as_utc
from mosaic.fhir.notifications import PAYLOAD_CONTENT, TOPIC
from mosaic.hl7.mllp import Framing, frame, read_frames
from mosaic.index.database import MIGRATIONS
from mosaic.index.schema import Event, Study
from mosaic.services.availability import StudyAvailability
from mosaic.services.origin import IngestOrigin
from tests.factory import make_bytes
from tests.helpers import free_port, wait_until

LOCALHOST = "127.0.0.1"
PREFIX = "1.2.826.0.1.3680043.10.1234.61"


class FakeReceiver:
    """An MLLP server that records every message (parsed by python-hl7) and answers with the next of ``codes``
    (then AA)."""

    def __init__(self, port: int = 0, codes: list[str] | None = None) -> None:
        self.messages: list[hl7.Message] = []
        self.codes = list(codes or [])
        self.lock = threading.Lock()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(10)
                for payload in read_frames(self.request, max_bytes=1 << 20, framing=Framing()):
                    message = hl7.parse(payload.decode("utf-8"))
                    with receiver.lock:
                        receiver.messages.append(message)
                        code = receiver.codes.pop(0) if receiver.codes else "AA"
                    ack = (f"MSH|^~\\&|EHR|GENHOSP|MOSAIC||20261208120000||ACK^R01^ACK|A{len(receiver.messages)}|P|"
                           f"2.5.1\rMSA|{code}|{message['MSH.F10']}\r")
                    self.request.sendall(frame(ack.encode()))

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((LOCALHOST, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[hl7.Message]:
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeEhr:
    """An HTTP server taking rest-hook notifications: the JSON bodies by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        ehr = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with ehr.lock:
                    ehr.bodies.setdefault(self.path, []).append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.bodies.get(path, []))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def settings(tmp_path: Path, receiver_port: int, **workflow: float) -> Settings:
    return Settings(
        data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
        workflow=WorkflowSettings(**({"study_stable_seconds": 0.5, "sweep_seconds": 0.1} | workflow)),
        fhir=FhirSettings(retry_seconds=0.1, max_retry_seconds=0.2, subscription_endpoints=[f"http://{LOCALHOST}:"]),
        hl7=Hl7Settings(port=0, receivers=[Hl7Receiver(
            name="ehr", host=LOCALHOST, port=receiver_port, application="EHR", facility="GENHOSP", timeout=5,
            retry_seconds=0.1, max_retry_seconds=0.2)]))


def store(node: Mosaic, study: str, number: int = 1, *, facility: str = "north") -> None:
    node.ingest.store(make_bytes(patient_id="MRN7", issuer="GENHOSP", patient_name="Müller^Hans", study_uid=study,
                                 series_uid=f"{study}.1", sop_uid=f"{study}.1.{number}", instance_number=number,
                                 accession="ACC7"), IngestOrigin(door="test", facility=facility))


def announcements(node: Mosaic) -> list[Event]:
    with node.database.session() as session:
        return list(session.scalars(select(Event).where(Event.type == EventType.STUDY_AVAILABLE.value)
                                    .order_by(Event.seq)).all())


def cursor(node: Mosaic, name: str) -> int:
    from mosaic.index.schema import AuditCursor

    with node.database.session() as session:
        return int(session.scalar(select(AuditCursor.seq).where(AuditCursor.name == name)) or 0)


@pytest.fixture
def receiver() -> Iterator[FakeReceiver]:
    fake = FakeReceiver(codes=["AE"])
    yield fake
    fake.stop()


# --- the sweeper ------------------------------------------------------------------------------------------------

def study_changed_at(node: Mosaic, study: str) -> Any:
    with node.database.session() as session:
        return as_utc(session.scalar(select(Study.updated_at).where(Study.StudyInstanceUID == study)))


def test_a_study_still_receiving_images_is_announced_only_once_stable_and_again_after_a_later_change(
        tmp_path: Path) -> None:
    node = Mosaic(settings(tmp_path, free_port(), study_stable_seconds=60))  # not started: the test sweeps
    sweeper = node.availability
    study = f"{PREFIX}.1"
    stable = timedelta(seconds=60)
    try:
        store(node, study, 1)
        first = study_changed_at(node, study)
        assert sweeper.sweep(now=first + stable / 2) == 0
        store(node, study, 2)  # another image: the stable period starts again
        second = study_changed_at(node, study)
        assert second > first
        assert sweeper.sweep(now=first + stable + (second - first) / 2) == 0  # stable since the first, not the last
        assert sweeper.sweep(now=second + stable) == 1
        assert sweeper.sweep(now=second + stable * 2) == 0  # announced once
        [event] = announcements(node)
        payload = json.loads(event.payload)
        assert (event.StudyInstanceUID, event.PatientID, event.IssuerOfPatientID) == (study, "MRN7", "GENHOSP")
        assert payload["AccessionNumber"] == "ACC7"
        assert payload["NumberOfStudyRelatedSeries"] == 1 and payload["NumberOfStudyRelatedInstances"] == 2
        assert payload["ModalitiesInStudy"] == ["CT"]

        store(node, study, 3)  # a late image un-announces the study: a later stable period is a new event
        third = study_changed_at(node, study)
        assert sweeper.sweep(now=third + stable / 2) == 0
        assert sweeper.sweep(now=third + stable) == 1
        assert [json.loads(e.payload)["NumberOfStudyRelatedInstances"] for e in announcements(node)] == [2, 3]
    finally:
        node.stop()


def test_a_report_is_not_images_available(tmp_path: Path) -> None:
    """A report (SR) added to an announced study does not announce its images again; a study that holds only a
    report (stored for an order before any image) is not announced until an image arrives."""
    node = Mosaic(settings(tmp_path, free_port(), study_stable_seconds=60))  # not started: the test sweeps
    sweeper, stable = node.availability, timedelta(seconds=60)

    def report(study: str) -> None:
        node.ingest.store(make_bytes(patient_id="MRN7", issuer="GENHOSP", study_uid=study, series_uid=f"{study}.9",
                                     sop_uid=f"{study}.9.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11",
                                     modality="SR", accession="ACC7"), IngestOrigin(door="test", facility="north"))
    try:
        store(node, f"{PREFIX}.21", 1)
        assert sweeper.sweep(now=study_changed_at(node, f"{PREFIX}.21") + stable) == 1
        report(f"{PREFIX}.21")
        assert sweeper.sweep(now=study_changed_at(node, f"{PREFIX}.21") + stable) == 0
        report(f"{PREFIX}.22")
        assert sweeper.sweep(now=study_changed_at(node, f"{PREFIX}.22") + stable) == 0
        store(node, f"{PREFIX}.22", 1)  # its first image
        assert sweeper.sweep(now=study_changed_at(node, f"{PREFIX}.22") + stable) == 1
        assert [event.StudyInstanceUID for event in announcements(node)] == [f"{PREFIX}.21", f"{PREFIX}.22"]
    finally:
        node.stop()


def test_sweepers_of_two_nodes_announce_a_study_once(tmp_path: Path) -> None:
    node = Mosaic(settings(tmp_path, free_port(), study_stable_seconds=60))
    study = f"{PREFIX}.2"
    try:
        store(node, study)
        now = study_changed_at(node, study) + timedelta(seconds=61)
        sweepers = [StudyAvailability(node.database, node.settings.workflow) for _ in range(4)]
        counts: list[int] = []
        threads = [threading.Thread(target=lambda s=s: counts.append(s.sweep(now=now))) for s in sweepers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(counts) == 1
        assert len(announcements(node)) == 1
    finally:
        node.stop()


def test_on_postgresql_an_announcement_waits_for_the_one_before_it_to_commit(tmp_path: Path,
                                                                            fresh_postgres_url: str) -> None:
    """Announcements commit in seq order (each announcing transaction locks one row), so a consumer's cursor
    cannot pass an announcement that is still being written by another node's sweeper."""
    from mosaic.config import IndexSettings
    from mosaic.services.availability import ANNOUNCE_LOCK

    config = settings(tmp_path, free_port(), study_stable_seconds=60)
    config.index = IndexSettings(url=fresh_postgres_url)
    node = Mosaic(config)  # not started: the test sweeps
    study = f"{PREFIX}.23"
    try:
        store(node, study)
        now = study_changed_at(node, study) + timedelta(seconds=61)
        sweeper = StudyAvailability(node.database, node.settings.workflow)
        counts: list[int] = []
        with node.database.session(write=True) as other:  # another node's sweeper, mid-announcement
            from mosaic.index.schema import AuditCursor
            assert other.execute(select(AuditCursor.name).where(AuditCursor.name == ANNOUNCE_LOCK)
                                 .with_for_update()).first() is not None
            thread = threading.Thread(target=lambda: counts.append(sweeper.sweep(now=now)))
            thread.start()
            time.sleep(0.5)
            assert announcements(node) == [] and counts == []  # it waits for the lock, nothing committed
        thread.join(timeout=30)
        assert counts == [1] and [event.StudyInstanceUID for event in announcements(node)] == [study]
    finally:
        node.stop()


# --- ORU^R01 over MLLP ------------------------------------------------------------------------------------------

def test_a_stable_study_is_sent_as_one_oru_and_the_refused_attempt_is_resent_with_the_same_control_id(
        tmp_path: Path, receiver: FakeReceiver) -> None:
    node = Mosaic(settings(tmp_path, receiver.port))
    node.start()
    study = f"{PREFIX}.3"
    try:
        store(node, study)
        wait_until(lambda: len(receiver.received()) >= 2, what="the ORU^R01 sent again after AE")
        wait_until(lambda: cursor(node, "hl7:ehr") == announcements(node)[0].seq, what="the cursor moved")
        time.sleep(0.5)  # nothing more follows
        refused, accepted = receiver.received()
        assert len(receiver.received()) == 2
        assert str(refused["MSH.F10"]) == str(accepted["MSH.F10"])  # the receiver can drop a copy by MSH-10
        assert str(accepted.segment("MSH")[9]) == "ORU^R01^ORU_R01"
        assert (str(accepted["MSH.F5"]), str(accepted["MSH.F6"]), str(accepted["MSH.F12"])) == \
            ("EHR", "GENHOSP", "2.5.1")
        assert str(accepted["PID.F3.R1.C1"]) == "MRN7" and str(accepted["PID.F3.R1.C4"]) == "GENHOSP"
        assert str(accepted["PID.F5.R1.C1"]) == "Müller" and str(accepted["PID.F5.R1.C2"]) == "Hans"
        assert str(accepted["ORC.F1"]) == "SC" and str(accepted["ORC.F5"]) == "CM"
        assert str(accepted["OBR.F18"]) == "ACC7"
        obx = accepted.segment("OBX")
        assert str(obx[2]) == "ST" and str(obx[3][0][0]) == "113014" and str(obx[5]) == study
    finally:
        node.stop()


def test_a_message_the_receiver_keeps_refusing_is_set_aside_and_the_next_goes_out(tmp_path: Path) -> None:
    refusing = FakeReceiver(codes=["AE", "AE"])
    config = settings(tmp_path, refusing.port)
    config.hl7.receivers[0].max_refusals = 2
    node = Mosaic(config)
    node.start()
    try:
        store(node, f"{PREFIX}.31")
        wait_until(lambda: len(refusing.received()) >= 2, what="two refusals")
        store(node, f"{PREFIX}.32")
        wait_until(lambda: len(refusing.received()) >= 3, what="the next announcement")
        sent = [str(message.segment("OBX")[5]) for message in refusing.received()]
        assert sent == [f"{PREFIX}.31", f"{PREFIX}.31", f"{PREFIX}.32"]
        wait_until(lambda: cursor(node, "hl7:ehr") == announcements(node)[-1].seq, what="the cursor past both")
    finally:
        node.stop()
        refusing.stop()


def test_receivers_are_named_once_and_one_that_wants_no_event_is_sent_none(tmp_path: Path) -> None:
    from pydantic import ValidationError

    def receiver(name: str, **more: Any) -> Hl7Receiver:
        return Hl7Receiver(name=name, host=LOCALHOST, port=free_port(), application="EHR", **more)

    with pytest.raises(ValidationError, match="more than once"):
        Hl7Settings(receivers=[receiver("ehr"), receiver("ehr")])
    quiet = FakeReceiver()
    config = settings(tmp_path, quiet.port)
    config.hl7.receivers[0].events = []
    node = Mosaic(config)
    node.start()
    try:
        store(node, f"{PREFIX}.33")
        wait_until(lambda: announcements(node), what="the announcement")
        time.sleep(0.5)
        assert quiet.received() == []
    finally:
        node.stop()
        quiet.stop()


def test_an_announcement_made_before_a_stop_is_sent_once_after_the_restart(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: the first node cannot deliver
    node = Mosaic(settings(tmp_path, port))
    node.start()
    study = f"{PREFIX}.4"
    try:
        store(node, study)
        wait_until(lambda: len(announcements(node)) == 1, what="the announcement")
    finally:
        node.stop()
    fake = FakeReceiver(port)
    node = Mosaic(settings(tmp_path, port))
    node.start()
    try:
        wait_until(lambda: len(fake.received()) >= 1, what="the ORU^R01 after the restart")
        wait_until(lambda: cursor(node, "hl7:ehr") == announcements(node)[0].seq, what="the cursor moved")
        time.sleep(0.5)
        [message] = fake.received()
        assert str(message.segment("OBX")[5]) == study
        assert len(announcements(node)) == 1  # the restart did not announce the study again
    finally:
        node.stop()
        fake.stop()


def test_a_receiver_added_later_is_not_sent_the_past(tmp_path: Path, receiver: FakeReceiver) -> None:
    node = Mosaic(settings(tmp_path, receiver.port, study_stable_seconds=60))
    try:
        store(node, f"{PREFIX}.5")
        node.availability.sweep(now=study_changed_at(node, f"{PREFIX}.5") + timedelta(seconds=61))
        assert len(announcements(node)) == 1
        node.start()
        wait_until(lambda: cursor(node, "hl7:ehr") == announcements(node)[0].seq, what="the new cursor")
        time.sleep(0.3)
        assert receiver.received() == []
    finally:
        node.stop()


# --- FHIR Subscriptions ---------------------------------------------------------------------------------------

@pytest.fixture
def ehr() -> Iterator[FakeEhr]:
    fake = FakeEhr()
    yield fake
    fake.stop()


def subscription(endpoint: str, content: str = "full-resource") -> dict[str, Any]:
    return {"resourceType": "Subscription", "status": "requested", "reason": "images available for the EHR",
            "criteria": TOPIC,
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]}}}


def post(node: Mosaic, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"http://{LOCALHOST}:{node.http_port}/fhir/Subscription", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})


def test_subscribers_are_notified_of_the_studies_their_scope_holds(tmp_path: Path, ehr: FakeEhr,
                                                                    receiver: FakeReceiver) -> None:
    node = Mosaic(settings(tmp_path, receiver.port))
    node.start()
    try:
        node.identity.add_user("ehr.north", roles=["integration"], facilities=["north"])
        node.identity.add_user("ehr.south", roles=["integration"], facilities=["south"])
        north, south = node.identity.issue_token("ehr.north"), node.identity.issue_token("ehr.south")
        created = post(node, north, subscription(f"http://{LOCALHOST}:{ehr.port}/north"))
        assert created.status_code == 201, created.text
        accepted = Subscription.model_validate(created.json())
        assert accepted.status == "active" and accepted.id
        assert created.headers["location"].endswith(f"/fhir/Subscription/{accepted.id}")
        assert post(node, south, subscription(f"http://{LOCALHOST}:{ehr.port}/south", "id-only")).status_code == 201

        store(node, f"{PREFIX}.6", facility="north")
        store(node, f"{PREFIX}.7", facility="south")
        wait_until(lambda: ehr.at("/north") and ehr.at("/south"), what="the notifications")
        wait_until(lambda: cursor(node, f"fhir:{accepted.id}") == announcements(node)[-1].seq,
                   what="the north subscription's cursor past both announcements")
        [north_note] = ehr.at("/north")
        [south_note] = ehr.at("/south")  # after the north study's announcement: that one was not sent to it

        bundle = Bundle.model_validate(north_note)
        assert bundle.type == "history"
        assert bundle.entry is not None
        status = Parameters.model_validate(bundle.entry[0].resource.model_dump())
        values = {p.name: p for p in status.parameter or []}
        assert values["topic"].valueCanonical == TOPIC
        assert values["type"].valueCode == "event-notification"
        assert values["subscription"].valueReference.reference.endswith(f"/Subscription/{accepted.id}")
        assert values["events-since-subscription-start"].valueString == "1"
        event = {part.name: part for part in values["notification-event"].part or []}
        assert event["event-number"].valueString == "1"
        assert event["focus"].valueReference.reference.endswith(f"/ImagingStudy/{PREFIX}.6")
        study = ImagingStudy.model_validate(bundle.entry[1].resource.model_dump())
        assert study.id == f"{PREFIX}.6"

        only_ids = Bundle.model_validate(south_note)
        assert only_ids.entry is not None and only_ids.entry[1].resource is None
        assert only_ids.entry[1].fullUrl.endswith(f"/ImagingStudy/{PREFIX}.7")

        headers = {"Authorization": f"Bearer {north}"}
        base = f"http://{LOCALHOST}:{node.http_port}/fhir/Subscription"
        found = Bundle.model_validate(httpx.get(base, headers=headers, timeout=30).json())
        assert [entry.resource.id for entry in found.entry or []] == [accepted.id]
        assert httpx.get(f"{base}/{accepted.id}", headers={"Authorization": f"Bearer {south}"},
                         timeout=30).status_code == 404  # another account's subscription is not shown
        assert httpx.delete(f"{base}/{accepted.id}", headers=headers, timeout=30).status_code == 204
        assert httpx.get(f"{base}/{accepted.id}", headers=headers, timeout=30).status_code == 404
    finally:
        node.stop()


@pytest.mark.parametrize(("change", "says"), [
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://ehr.example.org/in", "payload": "application/fhir+json"}},
     "not an http or https URL"),
    ({"criteria": "ImagingStudy?status=available"}, "not a topic"),
    ({"channel": {"type": "websocket", "endpoint": "http://ehr.example.org/"}}, "rest-hook only"),
])
def test_a_subscription_mosaic_cannot_serve_is_refused(tmp_path: Path, receiver: FakeReceiver,
                                                       change: dict[str, Any], says: str) -> None:
    node = Mosaic(settings(tmp_path, receiver.port))
    node.start()
    try:
        node.identity.add_user("ehr", roles=["integration"])
        answer = post(node, node.identity.issue_token("ehr"), subscription("http://ehr.example.org/") | change)
        assert answer.status_code == 400
        outcome = OperationOutcome.model_validate(answer.json())
        assert says in (outcome.issue[0].diagnostics or "")
        node.identity.add_user("statistics", roles=["researcher"])  # may export, not read
        refused = post(node, node.identity.issue_token("statistics"), subscription("http://ehr.example.org/"))
        assert refused.status_code == 403
        assert node.subscriptions.find() == []
    finally:
        node.stop()


# --- the migration ----------------------------------------------------------------------------------------------

def test_migration_0013_goes_down_and_up_and_counts_stored_studies_as_announced(tmp_path: Path) -> None:
    node = Mosaic(settings(tmp_path, free_port()))
    store(node, f"{PREFIX}.8")
    url = node.database.url
    node.stop()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "0012")
    engine = create_engine(url)
    with engine.connect() as connection:
        assert "available_at" not in {column["name"] for column in inspect(connection).get_columns("study")}
        assert "fhir_subscription" not in inspect(connection).get_table_names()
    engine.dispose()
    node = Mosaic(settings(tmp_path, free_port(), study_stable_seconds=60))
    try:
        assert node.availability.sweep(now=study_changed_at(node, f"{PREFIX}.8") + timedelta(days=1)) == 0
    finally:
        node.stop()


def test_the_capability_statement_offers_subscriptions(tmp_path: Path, receiver: FakeReceiver) -> None:
    node = Mosaic(settings(tmp_path, receiver.port))
    node.start()
    try:
        token = node.identity.issue_token("admin")
        statement = httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir/metadata", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}).json()
        kinds = {resource["type"]: resource for resource in statement["rest"][0]["resource"]}
        assert {i["code"] for i in kinds["Subscription"]["interaction"]} == {"create", "read", "search-type",
                                                                              "delete"}
    finally:
        node.stop()

