"""The change feed: the outbox's events read in order (``GET /api/changes?since=N``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from mosaic.index.database import Database
from mosaic.index.schema import Event


@dataclass(frozen=True)
class ChangePage:
    changes: list[dict[str, Any]]
    last: int
    """The ``seq`` of the last change returned (pass it as ``since`` for the next page)."""
    done: bool
    """True when no change newer than ``last`` exists yet."""


class ChangeFeed:
    def __init__(self, database: Database) -> None:
        self.database = database

    def page(self, since: int = 0, limit: int = 100) -> ChangePage:
        with self.database.session() as session:
            rows = session.scalars(select(Event).where(Event.seq > since).order_by(Event.seq).limit(limit + 1)).all()
            newest = session.scalar(select(func.max(Event.seq))) or 0
        more = len(rows) > limit
        rows = rows[:limit]
        changes = [{
            "seq": row.seq, "type": row.type, "date": row.created_at.isoformat(),
            "PatientID": row.PatientID, "IssuerOfPatientID": row.IssuerOfPatientID,
            "StudyInstanceUID": row.StudyInstanceUID, "SeriesInstanceUID": row.SeriesInstanceUID,
            "SOPInstanceUID": row.SOPInstanceUID, "payload": json.loads(row.payload or "{}"),
        } for row in rows]
        last = rows[-1].seq if rows else max(since, 0)
        return ChangePage(changes=changes, last=last, done=not more and last >= newest)
