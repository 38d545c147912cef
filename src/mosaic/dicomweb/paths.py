"""Where the DICOMweb door answers: its root under the site, as the client sees it."""

from __future__ import annotations

from starlette.requests import Request

from mosaic.http.origin import client_origin

PREFIX = "/dicom-web"


def base_url(request: Request) -> str:
    """The DICOMweb root as the client sees it (so BulkDataURIs point at the origin the viewer used); see
    :func:`mosaic.http.origin.client_origin` for which Host is believed."""
    return client_origin(request) + PREFIX
