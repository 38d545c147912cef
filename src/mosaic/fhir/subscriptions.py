"""``/fhir/Subscription``: create, read, search and delete R4 Subscriptions (Subscriptions Backport IG, rest-hook)
on the ``study-available`` topic.

A Subscription names the topic in ``criteria`` (the backport's R4 form), a ``rest-hook`` channel with an http or
https ``endpoint``, ``payload`` ``application/fhir+json`` and, in the ``_payload`` extension
``backport-payload-content``, what a notification carries: ``empty``, ``id-only`` (default) or ``full-resource``.
It is accepted as ``active`` (no handshake). Creating one needs the ``read`` permission and an account: the
notifications carry only the studies that account may read when each is sent (``fhir.notifications``). Each
caller sees and deletes its own subscriptions; administrators all. Everything is audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscription import Subscription
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from mosaic.config import FhirSettings
from mosaic.fhir.answers import MEDIA_TYPE, FhirError, outcome_answer, resource_answer
from mosaic.fhir.endpoints import endpoint_refusal, header_refusal
from mosaic.fhir.notifications import PAYLOAD_CONTENT, PAYLOAD_CONTENTS, TOPIC
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.identity import IdentityService
from mosaic.governance.policy import AccessPolicy, Permission, Principal
from mosaic.http.auth import require
from mosaic.http.bodies import json_object
from mosaic.http.origin import client_origin
from mosaic.index.schema import FhirSubscription
from mosaic.services.subscriptions import NewSubscription, SubscriptionService


def accepted_subscription(body: dict[str, Any], owner: str, settings: FhirSettings) -> NewSubscription:
    """The Subscription of a create request, checked (:class:`FhirError` 400 saying what is wrong)."""
    if body.get("resourceType") != "Subscription":
        raise FhirError(400, f"expected a Subscription, not {body.get('resourceType')!r}")
    body = {key: value for key, value in body.items() if key not in ("id", "meta")}
    try:
        Subscription.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                             for error in exc.errors()[:5])
        raise FhirError(400, f"not a valid R4 Subscription: {problems}") from None
    if body.get("criteria") != TOPIC:
        raise FhirError(400, f"criteria {body.get('criteria')!r} is not a topic Mosaic offers "
                                       f"(the study-available topic is {TOPIC})")
    channel: dict[str, Any] = body.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise FhirError(400, f"channel.type {channel.get('type')!r}: Mosaic notifies by rest-hook only")
    endpoint = str(channel.get("endpoint") or "")
    refusal = endpoint_refusal(endpoint, settings.subscription_endpoints)
    if refusal is not None:
        raise FhirError(400, f"channel.endpoint {refusal}")
    payload = channel.get("payload")
    if payload not in (None, MEDIA_TYPE, "application/json"):
        raise FhirError(400, f"channel.payload {payload!r}: notifications are {MEDIA_TYPE}")
    content = "id-only"
    for extension in (channel.get("_payload") or {}).get("extension") or []:
        if extension.get("url") == PAYLOAD_CONTENT:
            content = str(extension.get("valueCode") or "")
    if content not in PAYLOAD_CONTENTS:
        raise FhirError(400, f"payload content {content!r} is not one of {', '.join(PAYLOAD_CONTENTS)}")
    headers = [str(line) for line in channel.get("header") or []]
    if (refusal := header_refusal(headers)) is not None:
        raise FhirError(400, refusal)
    return NewSubscription(owner=owner, topic=TOPIC, endpoint=endpoint, payload_content=content, headers=headers,
                           resource=body)


MAX_SUBSCRIPTION_BYTES = 64 * 1024
"""The largest Subscription a create request may send."""


def subscription_resource(row: FhirSubscription) -> dict[str, Any]:
    """The Subscription as kept, with its current status (and the last delivery error, as ``error``); the values
    of its channel headers (an EHR's credentials) are not shown again, only their names."""
    resource: dict[str, Any] = json.loads(row.resource_json)
    channel = resource.get("channel") or {}
    if channel.get("header"):
        channel["header"] = [f"{str(line).partition(':')[0].strip()}: (not shown)" for line in channel["header"]]
    resource["id"] = str(row.pk)
    resource["status"] = row.status if row.status in ("active", "error", "off") else "active"
    if row.error and row.status != "active":
        resource["error"] = row.error
    else:
        resource.pop("error", None)
    return resource


def create_subscription_router(*, policy: AccessPolicy, identity: IdentityService,
                               subscriptions: SubscriptionService, settings: FhirSettings,
                               changed: Callable[[], None] | None = None) -> APIRouter:
    """``changed`` is called after a subscription was created or deleted (the notifier looks again)."""
    router = APIRouter(prefix="/fhir")

    def guarded(request: Request, permission: Permission, action: str) -> Principal:
        try:
            return require(request, permission, action=action)
        except HTTPException as exc:
            raise FhirError(exc.status_code, str(exc.detail)) from None

    def audit(request: Request, principal: Principal, action: str, **detail: Any) -> None:
        request.state.audit = AuditEntry.of(principal, action, "", detail={"path": request.url.path, **detail})

    def visible(principal: Principal, identifier: str) -> FhirSubscription:
        row = subscriptions.get(int(identifier)) if identifier.isdigit() else None
        if row is None or (row.owner != principal.name and not policy.permits(principal, Permission.ADMINISTER)):
            raise FhirError(404, f"Subscription/{identifier} is not known")
        return row

    def handled(call: Callable[[], Response]) -> Response:
        try:
            return call()
        except FhirError as exc:
            return outcome_answer(exc.status, str(exc))

    @router.post("/Subscription")
    async def create(request: Request) -> Response:
        try:
            principal = guarded(request, Permission.READ, AuditAction.MODIFY)  # before a byte of the body is read
            body = await json_object(request, max_bytes=MAX_SUBSCRIPTION_BYTES)
        except FhirError as exc:
            return outcome_answer(exc.status, str(exc))
        except HTTPException as exc:
            return outcome_answer(exc.status_code, f"{exc.detail} (expected a Subscription)")

        def answer() -> Response:
            audit(request, principal, AuditAction.MODIFY, operation="create Subscription")
            if identity.principal_for(principal.name) is None:
                raise FhirError(403, f"{principal.name} has no account here: notifications are sent "
                                               "with an account's rights")
            accepted = accepted_subscription(body, principal.name, settings)
            if len(subscriptions.find(principal.name)) >= settings.max_subscriptions_per_account:
                raise FhirError(403, f"{principal.name} holds {settings.max_subscriptions_per_account} "
                                               "subscriptions already (fhir.max_subscriptions_per_account): delete "
                                               "one first")
            row = subscriptions.create(accepted)
            request.state.audit.detail.update(subscription=row.pk, endpoint=row.endpoint[:500])
            if changed is not None:
                changed()
            location = f"{client_origin(request)}/fhir/Subscription/{row.pk}"
            return resource_answer(subscription_resource(row), 201, headers={"Location": location})

        return await run_in_threadpool(handled, answer)

    @router.get("/Subscription")
    def search(request: Request) -> Response:
        def answer() -> Response:
            principal = guarded(request, Permission.READ, AuditAction.QUERY)
            unknown = sorted(set(request.query_params) - {"_format", "_count"})
            if unknown:
                raise FhirError(400, f"search parameter {unknown[0]!r} is not supported for Subscription")
            owner = None if policy.permits(principal, Permission.ADMINISTER) else principal.name
            rows = subscriptions.find(owner)
            audit(request, principal, AuditAction.QUERY, matches=len(rows))
            root = f"{client_origin(request)}/fhir"
            entries = [{"fullUrl": f"{root}/Subscription/{row.pk}", "resource": subscription_resource(row),
                        "search": {"mode": "match"}} for row in rows]
            return resource_answer(Bundle.model_validate({
                "resourceType": "Bundle", "type": "searchset", "total": len(rows),
                "link": [{"relation": "self", "url": f"{root}/Subscription"}], "entry": entries or None}))
        return handled(answer)

    @router.get("/Subscription/{identifier}")
    def read(request: Request, identifier: str) -> Response:
        def answer() -> Response:
            principal = guarded(request, Permission.READ, AuditAction.READ)
            audit(request, principal, AuditAction.READ, subscription=identifier[:64])
            return resource_answer(subscription_resource(visible(principal, identifier)))
        return handled(answer)

    @router.delete("/Subscription/{identifier}")
    def remove(request: Request, identifier: str) -> Response:
        def answer() -> Response:
            principal = guarded(request, Permission.READ, AuditAction.MODIFY)
            audit(request, principal, AuditAction.MODIFY, operation="delete Subscription",
                  subscription=identifier[:64])
            row = visible(principal, identifier)
            subscriptions.delete(row.pk)
            if changed is not None:
                changed()
            return Response(status_code=204)
        return handled(answer)

    return router
