"""The landing page at ``/``: recent studies, each with a link that opens it in the viewer."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Permission
from mosaic.http.auth import require
from mosaic.services.browse import StudySummary

if TYPE_CHECKING:
    from mosaic.governance.policy import AccessPolicy
    from mosaic.services.browse import BrowseService

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;background:#0b1a2a;color:#e6edf3}
h1{font-weight:600}a{color:#6cb6ff}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45rem .7rem;border-bottom:1px solid #24364a}th{color:#9fb3c8;font-weight:500}
tr:hover td{background:#12263b}.muted{color:#9fb3c8}.error{color:#ff7b72}tr.flag td{background:#3d1d1d}
form.card{max-width:22rem;display:flex;flex-direction:column;gap:.8rem}form.filters{display:flex;flex-wrap:wrap;
gap:.6rem;align-items:end}label{display:flex;flex-direction:column;gap:.2rem;color:#9fb3c8}
input{padding:.4rem;background:#12263b;color:#e6edf3;border:1px solid #24364a}
button{padding:.45rem .9rem;background:#1f6feb;color:#fff;border:0;cursor:pointer}.uid{font-size:.8em}
.scroll{overflow-x:auto}@media (max-width:40rem){body{margin:1rem}th,td{padding:.4rem .45rem}}
"""


def _account(user: str, csrf_token: str) -> str:
    if not user:
        return ""
    token = f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">' if csrf_token else ""
    return (f' · signed in as <b>{escape(user)}</b> <form method="post" action="/logout" style="display:inline">'
            f'{token}<button type="submit">Sign out</button></form>')


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def render_landing(studies: list[StudySummary], *, viewer_prefix: str = "/viewer", user: str = "",
                   csrf_token: str = "") -> str:
    rows = []
    for study in studies:
        link = f"{viewer_prefix}/viewer?StudyInstanceUIDs={escape(study.StudyInstanceUID)}"
        rows.append(
            "<tr>"
            f"<td>{escape(study.PatientName.split('=')[0].replace('^', ' ').strip()) or '<i>unnamed</i>'}</td>"
            f"<td>{escape(study.PatientID)}</td><td>{escape(_date(study.StudyDate))}</td>"
            f"<td>{escape(study.StudyDescription)}</td><td>{escape(', '.join(study.ModalitiesInStudy))}</td>"
            f"<td>{escape(study.AccessionNumber)}</td>"
            f"<td>{study.NumberOfStudyRelatedSeries} / {study.NumberOfStudyRelatedInstances}</td>"
            f'<td><a href="{link}">Open in viewer</a></td>'
            "</tr>"
        )
    empty = '<tr><td colspan="8" class="muted">No studies yet: send some with C-STORE or STOW-RS.</td></tr>'
    body = "\n".join(rows) or empty
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mosaic</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>Mosaic</h1>
<p class="muted">Recent studies. <a href="{viewer_prefix}/">Open the study list in the viewer</a> ·
<a href="/dicom-web/studies">DICOMweb</a> · <a href="/break-glass">emergency access</a> ·
<a href="/audit">audit trail</a> · <a href="/healthz">health</a>
{_account(user, csrf_token)}</p>
<div class="scroll"><table><thead><tr><th>Patient</th><th>Patient ID</th><th>Study date</th><th>Description</th>
<th>Modalities</th>
<th>Accession</th><th>Series / instances</th><th></th></tr></thead>
<tbody>
{body}
</tbody></table></div></body></html>
"""


def create_landing_router(browse: BrowseService, policy: AccessPolicy) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    def landing(request: Request, limit: int = Query(50, ge=1, le=500)) -> HTMLResponse:
        """Recent studies the user may see, each linked to the viewer."""
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        studies = browse.recent_studies(limit, scope=policy.scope(principal))
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", detail={
            "path": "/", "studies": [study.StudyInstanceUID for study in studies][:100]})
        return HTMLResponse(render_landing(studies, user=principal.name, csrf_token=principal.csrf_token))

    return router
