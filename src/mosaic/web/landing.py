"""The landing page at ``/``: recent studies, each with a link that opens it in the viewer. A browser signed in
as someone who may not query (an auditor) is sent to the first page it may open instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Permission
from mosaic.http.auth import principal_of, require, wants_page
from mosaic.services.browse import StudySummary
from mosaic.web.pages import VIEWER, dicom_date, navigation, page, person_name, viewer_link

if TYPE_CHECKING:
    from mosaic.governance.policy import AccessPolicy
    from mosaic.services.browse import BrowseService


@dataclass(frozen=True)
class StudyRow:
    """A recent study as the page shows it."""

    name: str
    PatientID: str
    date: str
    StudyDescription: str
    modalities: str
    AccessionNumber: str
    NumberOfStudyRelatedSeries: int
    NumberOfStudyRelatedInstances: int
    href: str

    @classmethod
    def of(cls, study: StudySummary) -> StudyRow:
        return cls(person_name(study.PatientName), study.PatientID, dicom_date(study.StudyDate),
                   study.StudyDescription, ", ".join(study.ModalitiesInStudy), study.AccessionNumber,
                   study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances,
                   viewer_link(study.StudyInstanceUID))


def create_landing_router(browse: BrowseService, policy: AccessPolicy) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    def landing(request: Request, limit: int = Query(50, ge=1, le=500)) -> Response:
        """Recent studies the user may see, each linked to the viewer."""
        principal = principal_of(request)
        if Permission.QUERY not in principal.permissions and wants_page(request):
            elsewhere = [link for link in navigation(principal, "/") if link.href != "/"]
            if elsewhere:
                return RedirectResponse(elsewhere[0].href, status_code=303)
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        studies = browse.recent_studies(limit, scope=policy.scope(principal))
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", detail={
            "path": "/", "studies": [study.StudyInstanceUID for study in studies][:100]})
        return page(request, principal, "landing.html", title="Recent studies",
                    studies=[StudyRow.of(study) for study in studies], viewer=VIEWER,
                    may_view=Permission.READ in principal.permissions)

    return router
