"""The policy and audit check in front of every DICOMweb route (QIDO, WADO-RS, WADO-URI, STOW).

A route dependency: it decides what the request does (query, read or store), asks the access policy, and
leaves the audit entry for the HTTP middleware to record with the answer's outcome. A study outside the
caller's scope is answered exactly like an unknown one (404), unless the caller broke the glass for it: both
answers are raised here, after the same index lookup (``AccessPolicy.study_access``), byte for byte the same, on
every WADO-RS, WADO-URI and metadata route; QIDO-RS under such a study finds nothing, like under an unknown one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fastapi import HTTPException, Request

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import AccessPolicy, Permission
from mosaic.http.auth import principal_of, require
from mosaic.index.query import Scope
from mosaic.services.egress import EgressContext

READ_AUDIT_WINDOW = 60.0
"""Repeated reads of one series by one principal within this many seconds are one audit record (a viewer
fetches every frame separately)."""

_QIDO_SUFFIXES = ("/studies", "/series", "/instances")


def scope_of(request: Request) -> Scope:
    """The studies the caller of this request may see, as the guard found them; a route the guard did not pass
    is refused rather than served unscoped."""
    scope = getattr(request.state, "scope", None)
    if not isinstance(scope, Scope):
        raise RuntimeError(f"{request.url.path}: a DICOMweb route answered without passing the DICOMweb guard")
    return scope


def egress_context(request: Request) -> EgressContext:
    """Who receives what this request sends out (for the egress coercion hook)."""
    address = request.client.host if request.client else ""
    return EgressContext("dicomweb", address, principal_of(request).name)


def dicomweb_guard(policy: AccessPolicy) -> Callable[[Request], None]:
    recent: dict[tuple[str, str, str, str], float] = {}
    lock = threading.Lock()

    def seen_recently(key: tuple[str, str, str, str]) -> bool:
        now = time.monotonic()
        with lock:
            if len(recent) > 10_000:
                recent.clear()
            last = recent.get(key)
            if last is not None and now - last < READ_AUDIT_WINDOW:
                return True
            recent[key] = now
            return False

    def guard(request: Request) -> None:
        principal = principal_of(request)
        params = request.path_params
        query = request.query_params
        # normalised as the routes read them (WADO-URI strips its UIDs): the study checked is the study served
        study = (params.get("study") or query.get("studyUID") or "").strip()
        series = (params.get("series") or query.get("seriesUID") or "").strip()
        sop = (params.get("sop") or query.get("objectUID") or "").strip()
        if request.method == "POST":
            permission, action = Permission.STORE, AuditAction.STORE
        elif request.url.path.rstrip("/").endswith(_QIDO_SUFFIXES):
            permission, action = Permission.QUERY, AuditAction.QUERY
        else:
            permission, action = Permission.READ, AuditAction.READ
        require(request, permission, action=action)
        entry = AuditEntry.of(principal, action, "", StudyInstanceUID=study, SeriesInstanceUID=series,
                              SOPInstanceUID=sop, detail={"path": request.url.path})
        if action == AuditAction.QUERY:
            entry.detail["query"] = str(query)[:1000]
        if study and action != AuditAction.STORE:
            access = policy.study_access(principal, study)
            entry.PatientID, entry.IssuerOfPatientID = access.PatientID, access.IssuerOfPatientID
            entry.break_glass = access.break_glass
            if not access.allowed and action == AuditAction.QUERY:
                entry.PatientID = entry.IssuerOfPatientID = ""  # the scoped query finds nothing, as for no study
            elif action != AuditAction.QUERY and (not access.allowed or not access.exists):
                # one answer, raised here for both: an unknown study does not go on to the route, whose extra
                # lookups would take longer than a refusal and so tell an attacker which studies exist
                entry.outcome = "denied" if access.exists else "failure"
                entry.detail["reason"] = "outside the caller's scope" if access.exists else "not in the archive"
                request.state.audit = entry
                raise HTTPException(404, f"study {study} is not in the archive")
        request.state.scope = policy.scope(principal)
        if action == AuditAction.READ and not entry.break_glass and seen_recently(
                (principal.name, study, series, principal.address)):
            return
        request.state.audit = entry

    return guard
