"""Accounts over HTTP for administrators: the same operations as `mosaic user …`, each audited as a policy
change. Passwords and tokens are accepted or returned once, never listed."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.identity import AccountError
from mosaic.governance.policy import Permission
from mosaic.http.auth import require
from mosaic.http.bodies import json_object

if TYPE_CHECKING:
    from mosaic.governance.identity import IdentityService
    from mosaic.governance.policy import AccessPolicy


def _strings(body: dict[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise HTTPException(400, f"{key} must be a list of strings")
    return value


def create_users_router(identity: IdentityService, policy: AccessPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/users")

    def change(request: Request, detail: dict[str, Any]) -> None:
        principal = require(request, Permission.ADMINISTER, action=AuditAction.POLICY_CHANGE)
        request.state.audit = AuditEntry.of(principal, AuditAction.POLICY_CHANGE, "", detail=detail)

    @router.get("")
    def users(request: Request) -> dict[str, Any]:
        require(request, Permission.ADMINISTER)
        return {"users": [asdict(account) for account in identity.users()],
                "roles": {name: sorted(permissions) for name, permissions in sorted(policy.roles.items())}}

    @router.post("", status_code=201)
    async def add_user(request: Request) -> JSONResponse:
        """``{"username", "roles", "facilities"?, "departments"?, "password"?, "display_name"?}``."""
        body = await json_object(request)
        change(request, {"user": body.get("username"), "change": "created", "roles": body.get("roles"),
                         "facilities": body.get("facilities"), "departments": body.get("departments")})
        try:
            account = await run_in_threadpool(
                lambda: identity.add_user(str(body.get("username", "")), roles=_strings(body, "roles") or [],
                                          password=_text(body, "password"),
                                          display_name=str(body.get("display_name", "")),
                                          facilities=_strings(body, "facilities"),
                                          departments=_strings(body, "departments")))
        except AccountError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse(asdict(account), status_code=201)

    @router.patch("/{username}")
    async def update_user(request: Request, username: str) -> dict[str, Any]:
        """Change roles, facilities, departments, ``active`` and/or ``password``."""
        body = await json_object(request)
        change(request, {"user": username, "change": "updated",
                         **{key: body[key] for key in ("roles", "facilities", "departments", "active") if key in body},
                         **({"password": "changed"} if "password" in body else {})})
        active = body.get("active")
        if active is not None and not isinstance(active, bool):
            raise HTTPException(400, "active must be true or false")
        try:
            account = await run_in_threadpool(
                lambda: identity.update_user(username, roles=_strings(body, "roles"),
                                             facilities=_strings(body, "facilities"),
                                             departments=_strings(body, "departments"), active=active,
                                             password=_text(body, "password")))
        except AccountError as exc:
            raise HTTPException(404 if "no user named" in str(exc) else 400, str(exc)) from None
        return asdict(account)

    @router.post("/{username}/tokens", status_code=201)
    async def issue_token(request: Request, username: str) -> JSONResponse:
        """A new API token for the account, shown in this answer only."""
        body = await json_object(request, empty_ok=True)
        change(request, {"user": username, "change": "token issued", "label": body.get("label", "")})
        days = body.get("days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)
                                 or not 0 < days < 36_500):
            raise HTTPException(400, "days must be a number of days between 0 and 36500 (leave it out: no expiry)")
        try:
            token = await run_in_threadpool(lambda: identity.issue_token(
                username, name=str(body.get("label", "")), days=float(days) if days is not None else None))
        except AccountError as exc:
            raise HTTPException(404, str(exc)) from None
        return JSONResponse({"token": token}, status_code=201)

    @router.delete("/{username}/tokens")
    def revoke_tokens(request: Request, username: str) -> dict[str, Any]:
        change(request, {"user": username, "change": "tokens revoked"})
        try:
            return {"revoked": identity.revoke_tokens(username)}
        except AccountError as exc:
            raise HTTPException(404, str(exc)) from None

    return router


def _text(body: dict[str, Any], key: str) -> str | None:
    """A string field of the body (None when absent); anything else is a 400."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise HTTPException(400, f"{key} must be a string")
    return value
