"""The retention run: the rules of :mod:`mosaic.governance.retention` applied to every study of the index — a dry
run reports every verdict and why; :meth:`RetentionService.run` marks due studies (phase one) and purges, through
:class:`~mosaic.services.delete.DeleteService`, those whose mark is older than ``grace_days`` (phase two), never a
study under a legal hold (:mod:`mosaic.governance.holds`, placed by :class:`~mosaic.retention.holds.HoldService`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from mosaic.config import RetentionSettings
from mosaic.core.errors import MosaicError, NotFound
from mosaic.core.times import as_utc
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.holds import ActiveHolds, UnderLegalHold
from mosaic.governance.retention import Decision, StudyFacts, Verdict, decide
from mosaic.index.database import Database
from mosaic.index.schema import Patient, Study
from mosaic.retention.holds import HoldService
from mosaic.services.delete import DeleteService

log = logging.getLogger("mosaic.retention")

ACTOR = "retention"
PAGE = 1000
LISTED = 1000
"""Purged studies and errors a report names (its counts are complete; every purge is audited on its own)."""

Progress = Callable[[str, int, int], None]
"""Called with (phase description, studies done, studies in the phase)."""


class RetentionBusy(MosaicError):
    """A retention run is already going on in this process."""



# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionItem:
    """One study's verdict in a dry run: what a run would do with it and why."""

    StudyInstanceUID: str
    PatientID: str
    IssuerOfPatientID: str
    StudyDate: str
    rule: str
    verdict: Verdict
    reason: str
    marked_at: datetime | None = None
    purge_after: datetime | None = None
    """Due studies: when a run purges it (its mark, or now, plus the grace period)."""
    purge_now: bool = False
    """Due and past the grace period: a run now deletes it."""

    def as_json(self) -> dict[str, Any]:
        return {"StudyInstanceUID": self.StudyInstanceUID, "PatientID": self.PatientID,
                "IssuerOfPatientID": self.IssuerOfPatientID, "StudyDate": self.StudyDate, "rule": self.rule or None,
                "verdict": self.verdict.value, "reason": self.reason,
                "marked_at": self.marked_at.isoformat() if self.marked_at else None,
                "purge_after": self.purge_after.isoformat() if self.purge_after else None,
                "purge_now": self.purge_now}


@dataclass
class RetentionReport:
    """What one run did."""

    now: datetime
    studies: int = 0
    marked: int = 0
    """Newly marked in this run."""
    waiting: int = 0
    """Marked and still within the grace period."""
    purged: int = 0
    kept: int = 0
    held: int = 0
    tier: int = 0
    unmarked: int = 0
    """Marks cleared: a hold appeared or the rules no longer let the study go."""
    failed: int = 0
    instances: int = 0
    blobs_failed: int = 0
    purged_studies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "studies": self.studies, "marked": self.marked, "waiting": self.waiting,
                "purged": self.purged, "kept": self.kept, "held": self.held, "tier": self.tier,
                "unmarked": self.unmarked, "failed": self.failed, "instances": self.instances,
                "blobs_failed": self.blobs_failed, "purged_studies": self.purged_studies[:LISTED],
                "errors": self.errors[:LISTED]}


# --- the service ------------------------------------------------------------------------------


class RetentionService:
    """Evaluates the retention rules against every study; marks and purges what they let go."""

    def __init__(self, database: Database, settings: RetentionSettings, holds: HoldService,
                 deleter: DeleteService, audit: AuditTrail) -> None:
        self.database = database
        self.settings = settings
        self.holds = holds
        self.deleter = deleter
        self.audit = audit
        self._running = threading.Lock()

    @property
    def grace(self) -> timedelta:
        return timedelta(days=self.settings.grace_days)

    def total(self) -> int:
        with self.database.session() as session:
            return int(session.scalar(select(func.count(Study.pk))) or 0)

    def _facts(self, *, marked_only: bool = False) -> Iterator[list[StudyFacts]]:
        """Every study (or every marked one) with its patient, a page at a time in index order."""
        last = 0
        while True:
            statement = (select(Study.pk, Study.StudyInstanceUID, Patient.PatientID, Patient.IssuerOfPatientID,
                                Study.StudyDate, Patient.PatientBirthDate, Study.facility, Study.department,
                                Study.ModalitiesInStudy, Study.deletion_marked_at)
                         .join(Patient, Study.patient_pk == Patient.pk).where(Study.pk > last)
                         .order_by(Study.pk).limit(PAGE))
            if marked_only:
                statement = statement.where(Study.deletion_marked_at.is_not(None))
            with self.database.session() as session:
                rows = session.execute(statement).all()
            if not rows:
                return
            yield [StudyFacts(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                              tuple(value for value in row[8].split("\\") if value), as_utc(row[9]))
                   for row in rows]
            last = rows[-1][0]

    def _decide(self, facts: StudyFacts, today: date, holds: ActiveHolds) -> Decision:
        return decide(self.settings.rules, facts, today, holds)

    def dry_run(self, now: datetime | None = None) -> list[RetentionItem]:
        """Every study's verdict: exactly what :meth:`run` at ``now`` would mark and purge, and why the rest stay."""
        now = as_utc(now) or datetime.now(UTC)
        holds = self.holds.active()
        items: list[RetentionItem] = []
        for page in self._facts():
            for facts in page:
                decision = self._decide(facts, now.date(), holds)
                purge_after = (facts.marked_at or now) + self.grace if decision.verdict == Verdict.DUE else None
                items.append(RetentionItem(
                    facts.StudyInstanceUID, facts.PatientID, facts.IssuerOfPatientID, facts.StudyDate, decision.rule,
                    decision.verdict, decision.reason, facts.marked_at, purge_after,
                    purge_after is not None and purge_after <= now))
        return items

    def run(self, now: datetime | None = None, *, progress: Progress | None = None,
            triggered_by: str = "") -> RetentionReport:
        """Phase one marks due, unheld studies (and clears marks no longer warranted); phase two purges studies
        marked at least ``grace_days`` before ``now``, each through the legal-hold check, each audited."""
        if not self._running.acquire(blocking=False):
            raise RetentionBusy("a retention run is already in progress")
        try:
            report = RetentionReport(as_utc(now) or datetime.now(UTC))
            self._mark(report, progress, triggered_by)
            self._purge(report, progress, triggered_by)
        finally:
            self._running.release()
        log.info("retention run: %d studies, %d marked, %d purged (%d instances), %d kept, %d held, %d waiting, "
                 "%d unmarked, %d failed", report.studies, report.marked, report.purged, report.instances,
                 report.kept, report.held, report.waiting, report.unmarked, report.failed)
        return report

    def _mark(self, report: RetentionReport, progress: Progress | None, triggered_by: str) -> None:
        now, total, holds = report.now, self.total(), self.holds.active()
        for page in self._facts():
            to_mark: list[tuple[StudyFacts, Decision]] = []
            to_clear: list[tuple[StudyFacts, Decision]] = []
            for facts in page:
                report.studies += 1
                decision = self._decide(facts, now.date(), holds)
                if decision.verdict == Verdict.DUE:
                    if facts.marked_at is None:
                        to_mark.append((facts, decision))
                    continue
                report.kept += decision.verdict == Verdict.KEPT
                report.held += decision.verdict == Verdict.HELD
                report.tier += decision.verdict == Verdict.TIER
                if facts.marked_at is not None:
                    to_clear.append((facts, decision))
            if to_mark or to_clear:
                with self.database.session(write=True) as session:
                    for facts, decision in to_mark:
                        session.execute(update(Study).where(Study.pk == facts.pk, Study.deletion_marked_at.is_(None))
                                        .values(deletion_marked_at=now,
                                                deletion_reason=f"{decision.rule}: {decision.reason}"[:256])
                                        .execution_options(synchronize_session=False))
                    for facts, _decision in to_clear:
                        self._clear(session, facts.pk)
            for facts, decision in to_mark:
                report.marked += 1
                self._audit(AuditAction.MODIFY, facts, triggered_by, {"retention": "marked", "rule": decision.rule,
                                                                      "reason": decision.reason})
            for facts, decision in to_clear:
                report.unmarked += 1
                self._audit(AuditAction.MODIFY, facts, triggered_by, {"retention": "unmarked", "rule": decision.rule,
                                                                      "reason": decision.reason})
            if progress is not None:
                progress("Marking due studies", report.studies, max(total, report.studies))

    def _purge(self, report: RetentionReport, progress: Progress | None, triggered_by: str) -> None:
        now, holds = report.now, self.holds.active()
        ripe = [facts for page in self._facts(marked_only=True) for facts in page
                if facts.marked_at is not None and facts.marked_at + self.grace <= now]
        for done, facts in enumerate(ripe, start=1):
            decision = self._decide(facts, now.date(), holds)
            if decision.verdict != Verdict.DUE:  # a hold or a rule change since phase one
                self._unmark(report, facts, decision, triggered_by)
            else:
                self._purge_one(report, facts, decision, triggered_by)
            if progress is not None:
                progress("Purging marked studies", done, len(ripe))
        marked = sum(len(page) for page in self._facts(marked_only=True))
        report.waiting = marked

    def _purge_one(self, report: RetentionReport, facts: StudyFacts, decision: Decision, triggered_by: str) -> None:
        try:
            result = self.deleter.delete_study(facts.StudyInstanceUID, reason=f"retention rule {decision.rule}: "
                                               f"{decision.reason}", actor=ACTOR)
        except UnderLegalHold as exc:  # placed since the holds were read: the hold wins
            self._unmark(report, facts, Decision(decision.rule, Verdict.HELD, exc.hold.describe()), triggered_by)
            return
        except NotFound:
            return  # deleted meanwhile by someone else
        except Exception as exc:
            report.failed += 1
            report.errors.append(f"{facts.StudyInstanceUID}: {exc}")
            log.exception("retention could not purge study %s", facts.StudyInstanceUID)
            self._audit(AuditAction.DELETE, facts, triggered_by, {"rule": decision.rule, "reason": decision.reason,
                                                                  "error": str(exc)}, outcome="failure")
            return
        report.purged += 1
        report.instances += result.instances
        report.blobs_failed += len(result.blobs_failed)
        report.purged_studies.append(facts.StudyInstanceUID)
        self._audit(AuditAction.DELETE, facts, triggered_by, {
            "rule": decision.rule, "reason": decision.reason, "marked_at": facts.marked_at,
            "series": result.series, "instances": result.instances, "versions": result.versions,
            "patient_deleted": result.patient_deleted, "blobs_failed": len(result.blobs_failed)})

    def _unmark(self, report: RetentionReport, facts: StudyFacts, decision: Decision, triggered_by: str) -> None:
        with self.database.session(write=True) as session:
            self._clear(session, facts.pk)
        report.unmarked += 1
        report.held += decision.verdict == Verdict.HELD
        report.kept += decision.verdict == Verdict.KEPT
        report.tier += decision.verdict == Verdict.TIER
        self._audit(AuditAction.MODIFY, facts, triggered_by, {"retention": "unmarked", "rule": decision.rule,
                                                              "reason": decision.reason})

    @staticmethod
    def _clear(session: Any, pk: int) -> None:
        session.execute(update(Study).where(Study.pk == pk).values(deletion_marked_at=None, deletion_reason="")
                        .execution_options(synchronize_session=False))

    def _audit(self, action: str, facts: StudyFacts, triggered_by: str, detail: dict[str, Any],
               outcome: str = "success") -> None:
        if triggered_by:
            detail["triggered_by"] = triggered_by
        self.audit.record(AuditEntry(action=action, outcome=outcome, actor=ACTOR, actor_kind="system",
                                     interface="retention", PatientID=facts.PatientID,
                                     IssuerOfPatientID=facts.IssuerOfPatientID,
                                     StudyInstanceUID=facts.StudyInstanceUID, detail=detail))
