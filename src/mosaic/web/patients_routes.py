"""A patient's identity record for administrators: current demographics and every change (HL7 ADT), oldest
first. Reading it is audited as a read of that patient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Permission
from mosaic.http.auth import require

if TYPE_CHECKING:
    from mosaic.services.patients import PatientService


def create_patients_router(patients: PatientService) -> APIRouter:
    router = APIRouter(prefix="/api/patients")

    @router.get("/history")
    def history(request: Request) -> dict[str, Any]:
        """``?PatientID=…&IssuerOfPatientID=…``: the patient's demographics now and each recorded change."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.READ)
        PatientID = request.query_params.get("PatientID", "").strip()
        IssuerOfPatientID = request.query_params.get("IssuerOfPatientID", "").strip()
        if not PatientID:
            raise HTTPException(400, "give the patient as ?PatientID=…(&IssuerOfPatientID=…)")
        request.state.audit = AuditEntry.of(principal, AuditAction.READ, "", PatientID=PatientID,
                                            IssuerOfPatientID=IssuerOfPatientID,
                                            detail={"path": request.url.path, "what": "patient history"})
        record = patients.record(PatientID, IssuerOfPatientID)
        if record is None:
            issuer = f" (issuer {IssuerOfPatientID})" if IssuerOfPatientID else ""
            raise HTTPException(404, f"patient {PatientID}{issuer} is not in the archive")
        return {"PatientID": record.PatientID, "IssuerOfPatientID": record.IssuerOfPatientID,
                "demographics": record.demographics, "history": record.history}

    return router
