"""``/api/changes``: the index's change feed, in order, for integrations that follow the archive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query, Request

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Permission
from mosaic.http.auth import require

if TYPE_CHECKING:
    from mosaic.governance.policy import AccessPolicy
    from mosaic.services.changes import ChangeFeed


def create_changes_router(changes: ChangeFeed, policy: AccessPolicy) -> APIRouter:
    router = APIRouter()

    @router.get("/api/changes")
    def list_changes(request: Request, since: int = Query(0, ge=0, le=2**63 - 1),
                     limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """Index changes in order: pass the returned ``last`` as ``since`` to get the next page."""
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        if not policy.scope(principal).unrestricted:
            raise HTTPException(403, f"{principal.name} may see only some facilities or departments; the change "
                                     "feed covers them all")
        page = changes.page(since, limit)
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "",
                                            detail={"path": "/api/changes", "since": since, "count": len(page.changes)})
        return {"changes": page.changes, "last": page.last, "done": page.done}

    return router
