"""How the FHIR door answers: resources as ``application/fhir+json``, refusals as an OperationOutcome."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from mosaic.fhir.resources import operation_outcome

MEDIA_TYPE = "application/fhir+json"
_OUTCOME_CODES = {400: "invalid", 401: "security", 403: "forbidden", 404: "not-found", 406: "not-supported",
                  413: "too-costly", 422: "invalid"}
"""HTTP status → OperationOutcome issue code (FHIR value set issue-type)."""


class FhirError(Exception):
    """A request the FHIR door refuses: its HTTP status and what the OperationOutcome says."""

    def __init__(self, status: int, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status


def resource_answer(resource: BaseModel | dict[str, Any], status: int = 200,
                    headers: dict[str, str] | None = None) -> Response:
    text = resource.model_dump_json(exclude_none=True) if isinstance(resource, BaseModel) else json.dumps(resource)
    return Response(text, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def outcome_answer(status: int, diagnostics: str) -> Response:
    return resource_answer(operation_outcome(_OUTCOME_CODES.get(status, "exception"), diagnostics), status)
