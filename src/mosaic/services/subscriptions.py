"""FHIR Subscriptions as the index keeps them (``fhir_subscription``), and their outbox cursors.

A subscription is created with its cursor (``fhir:<pk>`` in ``audit_cursor``) at the end of the outbox, in one
transaction: it is notified of the studies announced after it was accepted, never of the archive's past.
Deleting it removes both. The event numbers of its notifications (``events-since-subscription-start``) are
given once per announcement, so a notification sent again carries its first number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mosaic.index.database import Database
from mosaic.index.schema import AuditCursor, Event, FhirSubscription


def cursor_name(pk: int) -> str:
    return f"fhir:{pk}"


@dataclass(frozen=True)
class NewSubscription:
    owner: str
    topic: str
    endpoint: str
    payload_content: str
    headers: list[str]
    resource: dict[str, object]
    """The Subscription resource as accepted (without its id, which the index gives)."""


class SubscriptionService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, new: NewSubscription) -> FhirSubscription:
        now = datetime.now(UTC)

        def work(session: Session) -> FhirSubscription:
            row = FhirSubscription(owner=new.owner, status="active", topic=new.topic, endpoint=new.endpoint,
                                   payload_content=new.payload_content, headers_json=json.dumps(new.headers),
                                   resource_json="{}", events_since_start=0, last_event_seq=0, error="",
                                   created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            row.resource_json = json.dumps({**new.resource, "id": str(row.pk), "status": "active"})
            end = int(session.scalar(select(func.max(Event.seq))) or 0)
            name = cursor_name(row.pk)
            if session.get(AuditCursor, name) is None:
                session.add(AuditCursor(name=name, seq=end, hash="", updated_at=now))
            return row

        return self.database.write(work)

    def get(self, pk: int) -> FhirSubscription | None:
        with self.database.session() as session:
            return session.get(FhirSubscription, pk)

    def find(self, owner: str | None = None) -> list[FhirSubscription]:
        """Every subscription (``owner`` None) or those of one account, oldest first."""
        with self.database.session() as session:
            query = select(FhirSubscription).order_by(FhirSubscription.pk)
            if owner is not None:
                query = query.where(FhirSubscription.owner == owner)
            return list(session.scalars(query).all())

    def active(self) -> list[int]:
        """The subscriptions to notify (active, or failing and retried)."""
        with self.database.session() as session:
            return list(session.scalars(select(FhirSubscription.pk).where(
                FhirSubscription.status.in_(("active", "error"))).order_by(FhirSubscription.pk)).all())

    def delete(self, pk: int) -> bool:
        def work(session: Session) -> bool:
            removed = session.execute(delete(FhirSubscription).where(FhirSubscription.pk == pk)
                                      .execution_options(synchronize_session=False))
            session.execute(delete(AuditCursor).where(AuditCursor.name == cursor_name(pk))
                            .execution_options(synchronize_session=False))
            return bool(getattr(removed, "rowcount", 0))

        return self.database.write(work)

    def event_number(self, pk: int, seq: int) -> int:
        """The eventNumber of announcement ``seq`` for subscription ``pk``: the next one the first time, the same
        one when it is notified again."""
        def work(session: Session) -> int:
            row = session.get(FhirSubscription, pk, with_for_update=True)
            if row is None:
                return 0
            if row.last_event_seq != seq:
                row.events_since_start += 1
                row.last_event_seq = seq
                row.updated_at = datetime.now(UTC)
            return row.events_since_start

        return self.database.write(work)

    def set_status(self, pk: int, status: str, error: str = "") -> None:
        self.database.write(lambda session: session.execute(
            update(FhirSubscription).where(FhirSubscription.pk == pk, FhirSubscription.status != status)
            .values(status=status, error=error[:500], updated_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)))
