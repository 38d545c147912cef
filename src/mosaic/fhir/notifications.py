"""FHIR Subscription notifications (R4 Subscriptions Backport IG, rest-hook): one outbox consumer per subscription.

Each active subscription has a consumer of the ``StudyAvailable`` announcements under its cursor ``fhir:<pk>``
(created with the subscription, at the end of the outbox). For each announcement it asks, with the owner's
rights as they stand now (the account, its roles and scope; break-glass openings do not count), whether the
owner may read the study: a study outside the owner's scope, or gone, is skipped and the cursor moves on, so a
subscriber learns nothing of it. Otherwise it POSTs a ``history`` Bundle to ``channel.endpoint``: first the
backport's ``SubscriptionStatus`` Parameters (subscription, topic, status, type ``event-notification``,
``events-since-subscription-start``, the ``notification-event`` with its number, time and the ImagingStudy as
focus), then, for ``full-resource``, the ImagingStudy itself (``id-only``: its URL, ``empty``: nothing). A 2xx
answer delivers it; anything else is retried with backoff (``fhir.retry_seconds``), the subscription shown as
``error`` meanwhile. At least once: a notification sent again keeps its event number.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fhir.resources.R4B.bundle import Bundle

from mosaic.config import FhirSettings
from mosaic.fhir.endpoints import EndpointRefused, checked_address, header_refusal
from mosaic.fhir.resources import imaging_study_resource
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.identity import IdentityService
from mosaic.governance.policy import AccessPolicy, Permission
from mosaic.index.query import MatchKey, Query, Scope
from mosaic.index.schema import FhirSubscription
from mosaic.jobs.outbox import OutboxConsumer
from mosaic.services.availability import StudyAvailability, StudyAvailable
from mosaic.services.query import QueryService
from mosaic.services.subscriptions import SubscriptionService, cursor_name

log = logging.getLogger("mosaic.fhir.notifications")

TOPIC = "http://mosaic.example/SubscriptionTopic/study-available"
"""The canonical URL of the one topic Mosaic offers: a study has become available (stable)."""
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
PAYLOAD_CONTENTS = ("empty", "id-only", "full-resource")


class NotificationFailed(Exception):
    """The subscriber's endpoint did not take a notification (no answer, or not 2xx)."""


def notification_bundle(subscription: FhirSubscription, announcement: StudyAvailable, event_number: int, *,
                        base: str, imaging_study: dict[str, Any] | None) -> Bundle:
    """The backport's event-notification Bundle (type ``history``) of one announcement."""
    study_url = f"{base}/ImagingStudy/{announcement.StudyInstanceUID}"
    subscription_url = f"{base}/Subscription/{subscription.pk}"
    event: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(event_number)},
        {"name": "timestamp", "valueInstant": announcement.announced_at.isoformat()},
    ]
    if subscription.payload_content != "empty":
        event.append({"name": "focus", "valueReference": {"reference": study_url}})
    status = {
        "resourceType": "Parameters", "id": str(uuid.uuid4()), "meta": {"profile": [STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": subscription_url}},
            {"name": "topic", "valueCanonical": subscription.topic},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(event_number)},
            {"name": "notification-event", "part": event},
        ],
    }
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{status['id']}", "resource": status,
        "request": {"method": "GET", "url": f"{subscription_url}/$status"}, "response": {"status": "200"},
    }]
    if subscription.payload_content != "empty":
        entry: dict[str, Any] = {"fullUrl": study_url,
                                 "request": {"method": "PUT", "url": f"ImagingStudy/{announcement.StudyInstanceUID}"},
                                 "response": {"status": "200"}}
        if subscription.payload_content == "full-resource" and imaging_study is not None:
            entry["resource"] = imaging_study
        entries.append(entry)
    return Bundle.model_validate({"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history",
                                  "timestamp": datetime.now(UTC).isoformat(), "entry": entries})


class SubscriptionNotifier:
    """Keeps one consumer running per active subscription (looked up again every ``refresh_seconds``, so
    subscriptions created on another node are served here too) and sends their notifications."""

    def __init__(self, subscriptions: SubscriptionService, availability: StudyAvailability,
                 identity: IdentityService, policy: AccessPolicy, query_service: QueryService, audit: AuditTrail,
                 settings: FhirSettings, *, base: Callable[[], str], refresh_seconds: float = 5.0) -> None:
        self.subscriptions = subscriptions
        self.availability = availability
        self.identity = identity
        self.policy = policy
        self.query_service = query_service
        self.audit = audit
        self.settings = settings
        self.base = base
        """The FHIR base URL written into notifications (``http.public_url`` + ``/fhir`` when set)."""
        self.refresh_seconds = refresh_seconds
        self._consumers: dict[int, OutboxConsumer[StudyAvailable]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="fhir-subscriptions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            consumer.stop()
            self.availability.forget(consumer)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception:
                log.exception("FHIR subscriptions could not be looked up; trying again")

    def refresh(self) -> None:
        """Start a consumer for each active subscription without one, stop those of subscriptions gone."""
        if self._stop.is_set():
            return
        wanted = set(self.subscriptions.active())
        with self._lock:
            gone = [self._consumers.pop(pk) for pk in set(self._consumers) - wanted]
            for pk in sorted(wanted - set(self._consumers)):
                consumer = self.availability.consumer(
                    cursor_name(pk), functools.partial(self.deliver, pk),
                    on_failure=functools.partial(self._failed, pk),
                    retry_seconds=self.settings.retry_seconds, max_retry_seconds=self.settings.max_retry_seconds,
                    thread_name=f"fhir-subscription-{pk}")
                self._consumers[pk] = consumer
                consumer.start()
        for consumer in gone:
            consumer.stop()
            self.availability.forget(consumer)

    def deliver(self, pk: int, announcement: StudyAvailable) -> None:
        """Notify subscription ``pk`` of one announcement, if its owner may read the study."""
        subscription = self.subscriptions.get(pk)
        if subscription is None or subscription.status not in ("active", "error"):
            return
        principal = self.identity.principal_for(subscription.owner, kind="subscription")
        if principal is None or not self.policy.permits(principal, Permission.READ):
            self.subscriptions.set_status(pk, "off", f"the account {subscription.owner!r} may no longer read")
            return
        granted = self.policy.scope(principal)
        scope = Scope(granted.facilities, granted.departments)  # its own scope: break-glass openings do not count
        matches = self.query_service.find(
            Query("STUDY", [MatchKey("StudyInstanceUID", announcement.StudyInstanceUID, "UI")], limit=1),
            door="fhir", scope=scope)
        if not matches:  # outside the owner's scope (or deleted since): nothing is said of it
            return
        match = matches[0]
        resource = imaging_study_resource(match.rows["STUDY"], match.rows["PATIENT"].pk).model_dump(
            mode="json", exclude_none=True)
        number = self.subscriptions.event_number(pk, announcement.seq)
        bundle = notification_bundle(subscription, announcement, number, base=self.base(), imaging_study=resource)
        receiver = (urlsplit(subscription.endpoint).hostname or "")[:64]
        entry = AuditEntry.of(principal.at(address=receiver, interface="fhir"), AuditAction.EXPORT, "success",
                              PatientID=announcement.PatientID, IssuerOfPatientID=announcement.IssuerOfPatientID,
                              StudyInstanceUID=announcement.StudyInstanceUID,
                              detail={"subscription": pk, "event_number": number, "event": announcement.seq,
                                      "destination": subscription.endpoint[:500],
                                      "payload": subscription.payload_content})
        try:
            self._post(subscription, bundle.model_dump_json(exclude_none=True).encode())
        except NotificationFailed as exc:
            entry.outcome = "failure"
            entry.detail["reason"] = str(exc)[:500]
            self.audit.record(entry)
            self.subscriptions.set_status(pk, "error", str(exc))
            raise
        self.audit.record(entry)
        if subscription.status != "active":
            self.subscriptions.set_status(pk, "active")

    def _post(self, subscription: FhirSubscription, body: bytes) -> None:
        try:  # checked again at each notification (the name may resolve elsewhere now), and sent to that address
            address = checked_address(subscription.endpoint, self.settings.subscription_endpoints)
        except EndpointRefused as exc:
            raise NotificationFailed(f"not sent: {exc}") from None
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        lines = [str(line) for line in json.loads(subscription.headers_json or "[]")]
        if header_refusal(lines) is None:
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip()] = value.strip()
        parts = urlsplit(subscription.endpoint)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = _pinned(parts.scheme, parts.hostname or "", parts.port, address,
                             self.settings.notification_timeout_seconds)
        try:  # http.client follows no redirect: a 3xx is the answer
            connection.request("POST", target, body=body, headers=headers)
            answer = connection.getresponse()
            status, reason = answer.status, answer.reason
            answer.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            raise NotificationFailed(f"{subscription.endpoint} did not answer: {exc}") from None
        finally:
            connection.close()
        if 300 <= status < 400:
            raise NotificationFailed(f"{subscription.endpoint} answered {status}: Mosaic does not follow "
                                     "redirects with patient data (give the final URL)")
        if not 200 <= status < 300:
            raise NotificationFailed(f"{subscription.endpoint} answered {status} {reason}".rstrip())

    def _failed(self, pk: int, exc: Exception, delay: float) -> None:
        if isinstance(exc, NotificationFailed):
            log.warning("FHIR subscription %d: %s; notifying again in %.1f s", pk, exc, delay)
        else:
            log.exception("FHIR subscription %d: notification failed; trying again in %.1f s", pk, delay,
                          exc_info=exc)


def _pinned(scheme: str, host: str, port: int | None, address: str,
            timeout: float) -> http.client.HTTPConnection:
    """A connection to ``address`` (the checked one) for ``host``: the Host header, and for https the server
    name the certificate is verified against, are the host's."""
    if scheme == "https":
        return _PinnedHTTPS(host, port, address=address, timeout=timeout, context=ssl.create_default_context())
    return _PinnedHTTP(host, port, address=address, timeout=timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, *, address: str, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
