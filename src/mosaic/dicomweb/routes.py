"""The DICOMweb routes under ``/dicom-web``: STOW-RS, QIDO-RS and WADO-RS metadata.

Handlers are thin: parse the request, call a service, encode the answer with the shared codecs
(mosaic.dicomweb.multipart, mosaic.dicomweb.dicomjson).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mosaic.core.errors import QueryError
from mosaic.dicomweb.cache import ByteCache
from mosaic.dicomweb.dicomjson import MEDIA_TYPE, dumps, instance_metadata, json_array, plain_json
from mosaic.dicomweb.guard import dicomweb_guard, scope_of
from mosaic.dicomweb.multipart import MultipartError, media_type_parameters, read_parts
from mosaic.dicomweb.paths import PREFIX, base_url
from mosaic.dicomweb.qido import parse_qido
from mosaic.dicomweb.stow import StowService
from mosaic.dicomweb.wado import create_wado_router
from mosaic.governance.policy import AccessPolicy
from mosaic.http.auth import principal_of
from mosaic.http.responses import GZIP_MIN, compressed, not_modified, problem
from mosaic.services.demographics import CurrentDemographics, patched_metadata
from mosaic.services.ingest import IngestService
from mosaic.services.metadata import MetadataService
from mosaic.services.query import QueryService
from mosaic.services.retrieve import RetrieveService
from mosaic.storage.spool import Spool


def dicom_json(request: Request, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None,
               etag: str | None = None) -> Response:
    headers = dict(headers or {})
    if etag is not None and (unchanged := not_modified(request, etag, headers)) is not None:
        return unchanged
    return Response(compressed(request, body, headers), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def create_router(*, policy: AccessPolicy, query_service: QueryService, metadata_service: MetadataService,
                  retrieve: RetrieveService, ingest: IngestService, spool: Spool,
                  demographics: CurrentDemographics | None = None) -> APIRouter:
    """The DICOMweb door, handed the services it serves; every route passes :func:`dicomweb_guard` first and
    reads only within the scope it found."""
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(dicomweb_guard(policy))])
    metadata_cache = ByteCache(max_bytes=128 * 1024 * 1024)
    stow = StowService(ingest, spool)

    # --- QIDO-RS ---------------------------------------------------------------------------------

    def qido(request: Request, level: str, fixed: dict[str, str]) -> Response:
        try:
            parsed = parse_qido(level, request.query_params.multi_items(), fixed)
            query = parsed.query
            if parsed.include_all:
                query.with_metadata = True
            scope = scope_of(request)
            matches = query_service.find(query, door="dicomweb", scope=scope)
            total = (query_service.count(query, scope=scope) if query.offset or len(matches) == query.limit
                     else len(matches))
        except QueryError as exc:
            return problem(400, str(exc))
        audit = getattr(request.state, "audit", None)
        if audit is not None:
            audit.detail["matches"] = total
            audit.detail["studies"] = sorted({match.rows["STUDY"].StudyInstanceUID for match in matches
                                              if "STUDY" in match.rows})[:100]
            audit.detail["patients"] = sorted({match.rows["PATIENT"].PatientID for match in matches})[:100]
        root = base_url(request)
        objects = []
        for match in matches:
            values = query_service.indexed_values(match, query, root="STUDY")
            objects.append(dumps(plain_json(values, match, _retrieve_url(root, match, level),
                                            include_all=parsed.include_all)).decode("utf-8"))
        return dicom_json(request, json_array(objects), headers={"X-Total-Count": str(total)})

    @router.get("/studies")
    def search_studies(request: Request) -> Response:
        return qido(request, "STUDY", {})

    @router.get("/series")
    def search_series(request: Request) -> Response:
        return qido(request, "SERIES", {})

    @router.get("/instances")
    def search_instances(request: Request) -> Response:
        return qido(request, "IMAGE", {})

    @router.get("/studies/{study}/series")
    def search_study_series(request: Request, study: str) -> Response:
        return qido(request, "SERIES", {"StudyInstanceUID": study})

    @router.get("/studies/{study}/instances")
    def search_study_instances(request: Request, study: str) -> Response:
        return qido(request, "IMAGE", {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}/instances")
    def search_series_instances(request: Request, study: str, series: str) -> Response:
        return qido(request, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    # --- WADO-RS metadata ------------------------------------------------------------------------

    def metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
        scope = scope_of(request)
        versions = metadata_service.versions(study, series, sop, scope=scope)
        if not versions:
            what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
            return problem(404, f"{what} is not in the archive")
        root = base_url(request)
        digest = hashlib.sha1(usedforsecurity=False)
        for sop_instance_uid, version in versions:
            digest.update(f"{sop_instance_uid}:{version};".encode())
        digest.update(root.encode())
        current = demographics.of_study(study) if demographics is not None else None
        if current is not None:  # the patient's demographics changed since: they go out as they are now
            digest.update(f"patient:{current[1]}".encode())
        etag = f'"{digest.hexdigest()}"'
        gzipped = "gzip" in request.headers.get("accept-encoding", "")
        if etag in {value.strip() for value in request.headers.get("if-none-match", "").split(",")}:
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
        cached = metadata_cache.get((etag, gzipped))
        if cached is None:
            objects = []
            for row in metadata_service.metadata(study, series, sop, scope=scope):
                url = (f"{root}/studies/{row.StudyInstanceUID}/series/{row.SeriesInstanceUID}"
                       f"/instances/{row.SOPInstanceUID}")
                stored = row.metadata_json if current is None else patched_metadata(row.metadata_json, current[0])
                objects.append(instance_metadata(stored, url))
            body = json_array(objects)
            cached = gzip.compress(body, compresslevel=5) if gzipped and len(body) >= GZIP_MIN else body
            metadata_cache.put((etag, gzipped), cached)
        headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if cached[:2] == b"\x1f\x8b":
            headers["Content-Encoding"] = "gzip"
        return Response(cached, media_type=MEDIA_TYPE, headers=headers)

    @router.get("/studies/{study}/metadata")
    def study_metadata(request: Request, study: str) -> Response:
        return metadata(request, study)

    @router.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(request: Request, study: str, series: str) -> Response:
        return metadata(request, study, series)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata_route(request: Request, study: str, series: str, sop: str) -> Response:
        return metadata(request, study, series, sop)

    # --- STOW-RS ---------------------------------------------------------------------------------

    async def store(request: Request, study: str | None) -> Response:
        media_type, parameters = media_type_parameters(request.headers.get("content-type", ""))
        if media_type != "multipart/related":
            return problem(415, f"STOW-RS takes multipart/related bodies, not {media_type or 'no content type'!r}")
        part_type = parameters.get("type", "application/dicom").lower()
        if part_type not in ("application/dicom", "application/dicom+json"):
            return problem(415, f"multipart/related type {part_type!r} is not application/dicom "
                                "or application/dicom+json")

        def sink() -> tuple[Path, BinaryIO]:
            # each part is written once, where it will stay: a new blob path that ingest adopts
            path, stream = spool.create()
            spooled.append(path)
            return path, stream

        spooled: list[Path] = []
        try:
            parts = await read_parts(request.stream(), parameters.get("boundary", ""), sink)
        except MultipartError as exc:
            for path in spooled:
                spool.discard(path)
            return problem(400, f"malformed multipart body: {exc}")
        except BaseException:  # the client went away mid-body: nothing half-stored stays behind
            for path in spooled:
                spool.discard(path)
            raise
        if not parts:
            return problem(400, "the multipart body has no parts")
        source = request.client.host if request.client else "http"
        root = base_url(request)
        outcome = await run_in_threadpool(stow.store_parts, parts, study_uid=study, base_url=root, source=source,
                                          principal=principal_of(request),
                                          json_request=part_type == "application/dicom+json")
        if not outcome.stored and not outcome.failed:
            return problem(400, f"the multipart body has no {part_type} part: nothing to store")
        audit = getattr(request.state, "audit", None)
        if audit is not None:
            audit.detail["stored"] = len(outcome.stored)
            audit.detail["failed"] = len(outcome.failed)
            audit.detail["instances"] = outcome.audited.stored[:100]
        study_url = f"{root}/studies/{study}" if study else None
        return Response(dumps(outcome.body(study_url)), status_code=outcome.status_code, media_type=MEDIA_TYPE,
                        headers=outcome.headers)

    @router.post("/studies")
    async def store_instances(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study}")
    async def store_study_instances(request: Request, study: str) -> Response:
        return await store(request, study)

    # --- WADO-RS retrieve, frames, bulk data, rendered, thumbnails; WADO-URI (mosaic.dicomweb.wado) -------

    router.include_router(create_wado_router(retrieve))
    return router



def _retrieve_url(root: str, match: Any, level: str) -> str:
    study = match.rows["STUDY"].StudyInstanceUID
    if level == "STUDY":
        return f"{root}/studies/{study}"
    series = match.rows["SERIES"].SeriesInstanceUID
    if level == "SERIES":
        return f"{root}/studies/{study}/series/{series}"
    return f"{root}/studies/{study}/series/{series}/instances/{match.rows['IMAGE'].SOPInstanceUID}"
