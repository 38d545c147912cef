"""Server-rendered pages: one Jinja2 environment (autoescaping on), one layout (``base.html``: the navigation bar,
the account, the break-glass badge), and :func:`page` to answer a request with a template.

Every page is a template under ``web/templates``; no HTML is built from strings. A page is handed only what it
shows; links are offered only to what the signed-in user may open (:func:`navigation`). Errors and refusals a
browser navigates to are :func:`error_page` (``error.html``), the same sentence the JSON answer gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mosaic.governance.policy import ANONYMOUS, BreakGlassOpening, Permission, Principal

if TYPE_CHECKING:
    from fastapi import FastAPI

ENVIRONMENT = Environment(loader=PackageLoader("mosaic.web", "templates"), autoescape=select_autoescape(default=True),
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)

VIEWER = "/viewer"
"""Where the OHIF viewer is served (``viewer_path``); its study links are ``/viewer/viewer?StudyInstanceUIDs=…``."""

Openings = Callable[[Principal], list[BreakGlassOpening]]


@dataclass(frozen=True)
class Link:
    label: str
    href: str
    current: bool = False


@dataclass(frozen=True)
class Badge:
    """An open break-glass grant, as the layout shows it: what was opened, until when, and where to view it."""

    label: str
    until: str
    until_iso: str
    href: str


def navigation(principal: Principal, path: str) -> list[Link]:
    """The navigation bar's links: only those the principal may follow."""
    links: list[tuple[str, str, Permission | None]] = [
        ("Patients", "/portal", Permission.QUERY),
        ("Recent studies", "/", Permission.QUERY),
        ("Viewer", "/viewer/", Permission.READ),
        ("Emergency access", "/break-glass", Permission.READ),
        ("Audit trail", "/audit", Permission.READ_AUDIT),
    ]
    return [Link(label, href, current=path == href or (href != "/" and path.startswith(href)))
            for label, href, permission in links
            if principal.authenticated and (permission is None or permission in principal.permissions)]


def viewer_link(study_instance_uid: str) -> str:
    return f"{VIEWER}/viewer?StudyInstanceUIDs={quote(study_instance_uid, safe='')}"


def person_name(value: str) -> str:
    """A DICOM PN for people: its alphabetic group, components separated by spaces (``Doe^Jane`` → Doe Jane)."""
    return " ".join(part for part in value.split("=")[0].split("^") if part.strip())


def given_family(value: str) -> str:
    """A DICOM PN as people say it: ``Doe^Jane^^Dr`` → Jane Doe (the alphabetic group's given and family names)."""
    parts = value.split("=")[0].split("^")
    family, given = [*parts, "", ""][:2]
    return " ".join(part for part in (given.strip(), family.strip()) if part)


def dicom_date(value: str) -> str:
    """``20240131`` → 2024-01-31 (anything else as it is)."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def install(app: FastAPI, *, break_glass_openings: Openings) -> None:
    """Hand the pages what the layout needs beyond the principal: the lookup of its open break-glass grants."""
    app.state.break_glass_openings = break_glass_openings


def _badges(request: Request, principal: Principal) -> list[Badge]:
    openings: Openings | None = getattr(request.app.state, "break_glass_openings", None)
    if openings is None or not principal.authenticated or principal.kind == "ae":
        return []
    badges = []
    for opening in openings(principal):
        local: datetime = opening.expires_at.astimezone()
        label = person_name(opening.PatientName) or opening.PatientID or opening.StudyInstanceUID
        badges.append(Badge(label=label, until=local.strftime("%H:%M"), until_iso=opening.expires_at.isoformat(),
                            href=viewer_link(opening.StudyInstanceUID)))
    return badges


def page(request: Request, principal: Principal, template: str, *, status_code: int = 200,
         title: str = "Mosaic", headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """``template`` rendered in the layout for ``principal`` (its navigation, name, CSRF token and break-glass
    badges)."""
    return _render(request, principal, template, status_code, title, headers, _badges(request, principal), context)


def _render(request: Request, principal: Principal, template: str, status_code: int, title: str,
            headers: dict[str, str] | None, badges: list[Badge], context: dict[str, Any]) -> HTMLResponse:
    html = ENVIRONMENT.get_template(template).render(
        title=title, principal=principal, user=principal.name if principal.authenticated else "",
        csrf_token=principal.csrf_token, nav=navigation(principal, request.url.path), break_glass=badges,
        **context)
    return HTMLResponse(html, status_code=status_code, headers=headers)


TITLES = {400: "The request cannot be answered", 401: "Sign-in needed", 403: "Not allowed", 404: "Not found",
          405: "Not allowed here", 409: "In conflict", 413: "Too large", 422: "The request cannot be answered",
          429: "Too many attempts", 500: "Something went wrong", 502: "A service Mosaic relies on is unreachable",
          503: "Mosaic cannot answer now"}

EXPLANATIONS = {400: "Something in the request is not as Mosaic expects; correct it and try again.",
                403: "Your account is not allowed to open this.", 404: "Nothing is here, or not for you.",
                409: "This conflicts with the archive's current state.", 413: "What was sent is too large.",
                500: "This is a fault in Mosaic, not something you did.",
                503: "Mosaic cannot answer right now; try again in a moment."}


def error_page(request: Request, status_code: int, message: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    """A refusal or error as a page: the status code kept, the sentence the JSON answer gives (never a stack
    trace), and links only to what the user may open."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        principal = ANONYMOUS
    sentence = str(message) or TITLES.get(status_code, "Error")  # as the JSON answer gives it (user names kept)
    if sentence[-1] not in ".!?":
        sentence += "."
    nav = navigation(principal, request.url.path)
    heading = TITLES.get(status_code, f"Error {status_code}")
    badges = _badges(request, principal) if status_code < 500 else []  # the index may be what failed
    return _render(request, principal, "error.html", status_code, heading, headers, badges,
                   {"status": status_code, "message": sentence, "heading": heading,
                    "explanation": EXPLANATIONS.get(status_code, ""),
                    "home": next((link for link in nav if link.href != request.url.path), None)})


ENVIRONMENT.globals.update(name=given_family, date=dicom_date)
"""Every template writes names and dates the same way: ``{{ name(patient.PatientName) }}``, ``{{ date(day) }}``."""
