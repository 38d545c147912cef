"""The OHIF zero-footprint viewer, served by Mosaic under ``/viewer/`` and pointed at Mosaic's own DICOMweb.

``scripts/install-viewer.sh`` (run by ``make install``) puts the ``@ohif/app`` build into ``build/viewer/`` with the
site root rewritten to the prefix (see :mod:`mosaic.viewer.build`). :func:`mount_viewer` serves it:

- static files under the prefix, with ``index.html`` for any other path under it (the SPA's client-side routes
  such as ``/viewer/viewer?StudyInstanceUIDs=…``); a missing file *asset* (``.js``, ``.css``, ``.wasm`` …) is a
  real 404, so a broken build shows up as a ``ChunkLoadError`` and not as HTML parsed as JavaScript;
- ``app-config.js`` generated per request (never the one from the package): one DICOMweb data source on the same
  origin as the page, at ``dicomweb_root``;
- ``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp`` (plus
  ``Cross-Origin-Resource-Policy: same-origin``) on every response, so the page is cross-origin isolated and
  cornerstone can use ``SharedArrayBuffer``;
- ``Cache-Control: public, max-age=31536000, immutable`` on content-hashed files, ``no-cache`` (revalidate with
  ETag / Last-Modified) on everything else, including ``index.html`` and ``app-config.js``;
- a 503 page that says how to install the viewer while ``viewer_dir`` is missing or was built for another
  prefix. The directory is looked at on every request, so installing it needs no restart.
"""

from __future__ import annotations

import html
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from mosaic.viewer.build import METADATA_NAME, normalise_prefix

__all__ = ["OHIF_VERSION", "isolation_headers", "mount_viewer", "render_app_config"]

#: The ``@ohif/app`` version that ``scripts/install-viewer.sh`` installs.
OHIF_VERSION = "3.13.2"

INSTALL_HINT = "make install   (or: scripts/install-viewer.sh; needs node and npm)"

_ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"

#: ``app.bundle.0f6159c501addfe9.js``, ``8097.bundle.8ae6404ba94890a0.js``, ``0ddf166f7a343eda.wasm``, ``….woff2``
_HASHED = re.compile(r"(?:^|\.)[0-9a-f]{16,}\.(?:js|mjs|css|wasm|woff2?|ttf|png|svg|gif|jpe?g)$")

#: A missing path whose last segment ends like this is a missing file, not a client-side route.
_ASSET_SUFFIXES = frozenset({
    ".js", ".mjs", ".css", ".map", ".wasm", ".json", ".jsonc", ".webapp", ".xml", ".png", ".ico", ".svg",
    ".gif", ".jpg", ".jpeg", ".woff", ".woff2", ".ttf", ".txt", ".html",
})


def isolation_headers() -> dict[str, str]:
    """COOP/COEP/CORP (and nosniff): the headers that make the viewer page cross-origin isolated."""
    return dict(_ISOLATION_HEADERS)


def render_app_config(*, dicomweb_root: str = "/dicom-web", prefix: str = "/viewer") -> str:
    """The ``app-config.js`` OHIF loads before its bundle (``window.config``).

    ``dicomweb_root`` is a path on the page's own origin (``/dicom-web``): the data source's QIDO, WADO-RS and
    WADO-URI roots become ``window.location.origin + dicomweb_root`` in the browser, so the viewer works under
    whatever host name and port it was reached by, and BulkDataURIs resolve against that origin. An absolute
    ``http(s)://`` URL is used as it is (then that server must send CORS and CORP headers).
    """
    root = dicomweb_root.rstrip("/")
    if not root.startswith(("/", "http://", "https://")):
        raise ValueError(f"dicomweb_root must be an absolute path or an http(s) URL, not {dicomweb_root!r}")
    config: dict[str, Any] = {
        "name": "mosaic",
        "routerBasename": normalise_prefix(prefix).rstrip("/"),
        "extensions": [],
        "modes": [],
        # Global customizations: no first-visit tour (it covers the viewport).
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "investigationalUseDialog": {"option": "never"},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "experimentalStudyBrowserSort": False,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "allowMultiSelectExport": False,
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "mosaic",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "mosaic",
                "configuration": {
                    "friendlyName": "Mosaic",
                    "name": "mosaic",
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "wadoUriRoot": root,
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    "dicomUploadEnabled": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }
    return (
        "/* Generated by Mosaic (mosaic.viewer.render_app_config): OHIF configuration for this server. */\n"
        "(function () {\n"
        f"  var config = {json.dumps(config, indent=2)};\n"
        "  var source = config.dataSources[0].configuration;\n"
        "  if (source.qidoRoot.charAt(0) === '/') {\n"
        "    var origin = window.location.origin;\n"
        "    source.qidoRoot = origin + source.qidoRoot;\n"
        "    source.wadoRoot = origin + source.wadoRoot;\n"
        "    source.wadoUriRoot = origin + source.wadoUriRoot;\n"
        "  }\n"
        "  // The way back to Mosaic's pages: the header's logo is a link to the site root (OHIF whiteLabeling).\n"
        "  config.whiteLabeling = {\n"
        "    createLogoComponentFn: function (React) {\n"
        "      return React.createElement('a', {\n"
        "        href: '/', target: '_self', title: 'Back to Mosaic', 'aria-label': 'Back to Mosaic',\n"
        "        'data-mosaic-home': 'true',\n"
        "        onClick: function (event) { event.stopPropagation(); },\n"
        "        style: {color: '#e6edf3', fontWeight: 700, fontSize: '16px', textDecoration: 'none',\n"
        "                whiteSpace: 'nowrap', padding: '2px 6px'}\n"
        "      }, '\u2190 Mosaic');\n"
        "    }\n"
        "  };\n"
        "  window.config = config;\n"
        "})();\n"
    )


def _unavailable_page(problem: str, viewer_dir: Path) -> HTMLResponse:
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mosaic viewer not installed</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
code,pre{{background:#f2f2f2;padding:.1rem .3rem}}pre{{padding:.6rem}}</style></head>
<body><h1>The OHIF viewer is not available</h1>
<p>{html.escape(problem)}</p>
<p>Install it on the server (it is fetched from the npm registry as <code>@ohif/app@{OHIF_VERSION}</code>,
unpacked into <code>build/ohif/</code> and prepared into <code>{html.escape(str(viewer_dir))}</code>):</p>
<pre>{html.escape(INSTALL_HINT)}</pre>
<p>No restart is needed: reload this page once the install has finished.
The DICOMweb API is not affected.</p></body></html>
"""
    headers = isolation_headers()
    headers["Cache-Control"] = "no-store"
    return HTMLResponse(body, status_code=503, headers=headers)


class ViewerFiles(StaticFiles):
    """Static files of the rewritten OHIF build, with the SPA fallback, generated config and headers."""

    def __init__(self, viewer_dir: Path, *, prefix: str, app_config: str) -> None:
        super().__init__(directory=viewer_dir, check_dir=False)
        self.viewer_dir = viewer_dir
        self.prefix = normalise_prefix(prefix)
        self.app_config = app_config.encode()
        self._checked: tuple[float, str | None] | None = None

    async def check_config(self) -> None:
        """The directory may appear later (installed while running): checked per request instead."""

    def install_problem(self) -> str | None:
        """Why the viewer cannot be served right now, or None."""
        metadata = self.viewer_dir / METADATA_NAME
        try:
            mtime = metadata.stat().st_mtime
        except OSError:
            if not (self.viewer_dir / "index.html").is_file():
                return f"The viewer is not installed: {self.viewer_dir} has no index.html."
            return f"{self.viewer_dir} has no {METADATA_NAME}: it was not prepared by scripts/install-viewer.sh."
        if self._checked is not None and self._checked[0] == mtime:
            return self._checked[1]
        try:
            built_for = json.loads(metadata.read_text(encoding="utf-8")).get("prefix")
        except (OSError, ValueError, AttributeError):
            built_for = None
        problem: str | None = None
        if built_for != self.prefix:
            problem = (f"{self.viewer_dir} was prepared for the prefix {built_for!r} but is served at "
                       f"{self.prefix!r}: rebuild it with VIEWER_PREFIX={self.prefix} scripts/install-viewer.sh.")
        elif not (self.viewer_dir / "index.html").is_file():
            problem = f"The viewer is not installed: {self.viewer_dir} has no index.html."
        self._checked = (mtime, problem)
        return problem

    async def get_response(self, path: str, scope: Scope) -> Response:
        problem = self.install_problem()
        if problem is not None:
            return _unavailable_page(problem, self.viewer_dir)
        relpath = "" if path == "." else path.replace(os.sep, "/")
        if relpath == "app-config.js":
            if scope["method"] not in ("GET", "HEAD"):
                raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
            return self._with_headers(
                Response(self.app_config, media_type="text/javascript; charset=utf-8"), _REVALIDATE)
        if relpath == METADATA_NAME or relpath.endswith("/" + METADATA_NAME) or relpath == ".install-stamp":
            return self._not_found()
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            if Path(relpath).suffix.lower() in _ASSET_SUFFIXES:
                return self._not_found()
            return self._index(scope)
        name = relpath.rsplit("/", 1)[-1]
        cache = _IMMUTABLE if _HASHED.search(name) else _REVALIDATE
        return self._with_headers(response, cache)

    def _index(self, scope: Scope) -> Response:
        index = self.viewer_dir / "index.html"
        try:
            stat_result = os.stat(index)
        except OSError:
            return _unavailable_page(f"The viewer is not installed: {self.viewer_dir} has no index.html.",
                                     self.viewer_dir)
        if not stat.S_ISREG(stat_result.st_mode):
            return self._not_found()
        return self._with_headers(self.file_response(index, stat_result, scope), _REVALIDATE)

    def _not_found(self) -> Response:
        return self._with_headers(PlainTextResponse("Not Found", status_code=404), _REVALIDATE)

    @staticmethod
    def _with_headers(response: Response, cache_control: str) -> Response:
        for name, value in _ISOLATION_HEADERS.items():
            response.headers[name] = value
        response.headers["Cache-Control"] = cache_control
        return response


def mount_viewer(app: FastAPI, viewer_dir: Path, *, dicomweb_root: str = "/dicom-web",
                 prefix: str = "/viewer") -> None:
    """Serve the OHIF viewer prepared in ``viewer_dir`` under ``prefix``, talking to ``dicomweb_root``.

    ``viewer_dir`` is normally ``build/viewer`` (``scripts/install-viewer.sh``) and must have been prepared for
    the same prefix (``VIEWER_PREFIX``); until it is there every page under the prefix is a 503 explaining how to
    install it. ``GET {prefix}`` redirects to ``{prefix}/``.
    """
    base = normalise_prefix(prefix).rstrip("/")
    files = ViewerFiles(Path(viewer_dir), prefix=base,
                        app_config=render_app_config(dicomweb_root=dicomweb_root, prefix=base))

    async def redirect_to_slash(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse(f"{base}/" + (f"?{query}" if query else ""), status_code=307)

    app.add_route(base, redirect_to_slash, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(base, files, name="viewer")
