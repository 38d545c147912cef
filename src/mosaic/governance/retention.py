"""Retention rules: which studies the configured rules let go, and why — pure functions of a study's facts,
the rules, today's date and the active legal holds (no index, no clock, no state).

The first rule of ``retention.rules`` that matches a study (facility, department, any modality; ``*`` wildcards;
the patient's age on the study date) decides. A study is due when today is on or after its study date plus
``keep_years_after_study`` AND on or after the day the patient reaches ``keep_until_patient_age`` (whichever are
set). A date the decision needs that is missing or unparseable keeps the study, and says so. A due study under a
legal hold (:mod:`mosaic.governance.holds`) is held instead (:func:`decide`).

The run that applies these rules (dry run, mark, purge), its schedule, its job, routes and commands are the
:mod:`mosaic.retention` package.
"""

from __future__ import annotations

import enum
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from mosaic.config import RetentionRule
from mosaic.governance.holds import ActiveHolds


class Verdict(enum.StrEnum):
    DUE = "due"
    """The rule's time has passed: a run marks the study and purges it once the grace period is over."""
    KEPT = "kept"
    HELD = "held"
    """Due, but a legal hold covers the study or its patient."""
    TIER = "tier"
    """Due under a rule whose action is tier: not available yet, nothing is done."""


# --- dates ------------------------------------------------------------------------------------


def parse_da(value: str) -> date | None:
    """A DICOM DA value (``YYYYMMDD``, or the old ``YYYY.MM.DD``) as a date; None when absent or not a date."""
    text = (value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def add_years(start: date, years: float) -> date:
    """``start`` plus ``years`` (a 29 February anniversary falls on 1 March; fractions as days of 365.2425)."""
    whole = math.floor(years)
    try:
        moved = start.replace(year=start.year + whole)
    except ValueError:
        moved = date(start.year + whole, 3, 1)
    return moved + timedelta(days=round((years - whole) * 365.2425))


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFacts:
    """What the rules look at, read from the index."""

    pk: int
    StudyInstanceUID: str
    PatientID: str
    IssuerOfPatientID: str
    StudyDate: str
    PatientBirthDate: str
    facility: str
    department: str
    modalities: tuple[str, ...]
    marked_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    rule: str
    """The rule that decided ("" when none matches)."""
    verdict: Verdict
    reason: str


def _covers(patterns: Sequence[str], values: Sequence[str]) -> bool:
    folded = [pattern.casefold() for pattern in patterns]
    if "*" in folded:
        return True
    return any(fnmatch.fnmatchcase(value.casefold(), pattern) for value in values for pattern in folded)


def _described(value: str, name: str) -> str:
    return f"{name} {value.strip()!r} is not a date" if value.strip() else f"{name} is missing"


def evaluate(rules: Sequence[RetentionRule], facts: StudyFacts, today: date) -> Decision:
    """The first matching rule's verdict on one study, with the reason in words (holds are not looked at)."""
    study_date, birth = parse_da(facts.StudyDate), parse_da(facts.PatientBirthDate)
    for rule in rules:
        if not (_covers(rule.facilities, [facts.facility]) and _covers(rule.departments, [facts.department])
                and _covers(rule.modalities, list(facts.modalities))):
            continue
        if rule.min_age_at_study is not None or rule.max_age_at_study is not None:
            # the rule depends on the age: when it cannot be known, keep (never let a minor fall to an adult rule)
            if study_date is None or birth is None:
                missing = _described(facts.StudyDate, "StudyDate") if study_date is None else \
                    _described(facts.PatientBirthDate, "PatientBirthDate")
                return Decision(rule.name, Verdict.KEPT, f"age at the study unknown: {missing}")
            if rule.min_age_at_study is not None and study_date < add_years(birth, rule.min_age_at_study):
                continue
            if rule.max_age_at_study is not None and study_date >= add_years(birth, rule.max_age_at_study):
                continue
        return _due_under(rule, study_date, birth, facts, today)
    return Decision("", Verdict.KEPT, "no retention rule matches")


def _due_under(rule: RetentionRule, study_date: date | None, birth: date | None, facts: StudyFacts,
               today: date) -> Decision:
    limits: list[tuple[date, str, str]] = []  # (keep until, kept reason, due reason)
    if rule.keep_years_after_study is not None:
        if study_date is None:
            return Decision(rule.name, Verdict.KEPT, _described(facts.StudyDate, "StudyDate"))
        until = add_years(study_date, rule.keep_years_after_study)
        years = f"{rule.keep_years_after_study:g} years after the study of {study_date.isoformat()}"
        limits.append((until, f"until {until.isoformat()} ({years})", f"{years} ended {until.isoformat()}"))
    if rule.keep_until_patient_age is not None:
        if birth is None:
            return Decision(rule.name, Verdict.KEPT, _described(facts.PatientBirthDate, "PatientBirthDate"))
        until = add_years(birth, rule.keep_until_patient_age)
        age = f"{rule.keep_until_patient_age:g}"
        limits.append((until, f"minor until {until.isoformat()} (turns {age})",
                       f"patient turned {age} on {until.isoformat()}"))
    if limits:
        latest = max(limits, key=lambda limit: limit[0])
        if today < latest[0]:
            return Decision(rule.name, Verdict.KEPT, latest[1])
        why = "; ".join(limit[2] for limit in limits)
    else:
        why = "the rule keeps nothing"
    if rule.action == "tier":
        return Decision(rule.name, Verdict.TIER, f"tier: not available yet ({why})")
    return Decision(rule.name, Verdict.DUE, why)


def decide(rules: Sequence[RetentionRule], facts: StudyFacts, today: date, holds: ActiveHolds) -> Decision:
    """:func:`evaluate`, then a due (or tier) study that a legal hold covers is held, the hold named as the reason."""
    decision = evaluate(rules, facts, today)
    if decision.verdict in (Verdict.DUE, Verdict.TIER):
        hold = holds.hold_on(facts.StudyInstanceUID, facts.PatientID, facts.IssuerOfPatientID)
        if hold is not None:
            return Decision(decision.rule, Verdict.HELD, hold.describe())
    return decision
