"""Server-rendered pages: one Jinja2 environment (autoescaping on), one layout (``base.html``: the navigation bar,
the account, the break-glass badge), and :func:`page` to answer a request with a template.

Every page is a template under ``web/templates``; no HTML is built from strings. A page is handed only what it
shows; links are offered only to what the signed-in user may open (:func:`navigation`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mosaic.governance.policy import Permission, Principal

ENVIRONMENT = Environment(loader=PackageLoader("mosaic.web", "templates"), autoescape=select_autoescape(default=True),
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class Link:
    label: str
    href: str
    current: bool = False


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


def page(request: Request, principal: Principal, template: str, *, status_code: int = 200,
         title: str = "Mosaic", **context: Any) -> HTMLResponse:
    """``template`` rendered in the layout for ``principal`` (its navigation, name and CSRF token)."""
    html = ENVIRONMENT.get_template(template).render(
        title=title, principal=principal, user=principal.name if principal.authenticated else "",
        csrf_token=principal.csrf_token, nav=navigation(principal, request.url.path), **context)
    return HTMLResponse(html, status_code=status_code)
