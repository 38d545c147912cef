"""WADO-RS retrieval (PS3.18 10.4) and WADO-URI (PS3.18 9): instances, frames, bulk data, rendered images and
thumbnails, under the DICOMweb root.

* Instances go out as stored (byte for byte, read from the blob in chunks) or transcoded to Explicit VR
  Little Endian: see :mod:`mosaic.dicomweb.accept` for the transfer syntax rule.
* Instances go through :meth:`mosaic.services.retrieve.RetrieveService.egress`, the one way out every door
  shares (where a header coercion applies); the reads are scoped to the caller's studies.
* Frames and bulk data are read by offset (:mod:`mosaic.services.rendition.frames`): a frame request never reads the
  other frames.
* Rendered images and thumbnails: :mod:`mosaic.services.rendition.rendered`.

Every representation carries an ETag (from the stored sha256, which never changes for a stored object) and
answers ``If-None-Match`` with 304; multipart boundaries are derived from it, so the bytes are repeatable.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from starlette.background import BackgroundTask

from mosaic.dicomweb.accept import BadAccept, MediaRange, describe, parse_accept
from mosaic.dicomweb.cache import ByteCache
from mosaic.dicomweb.guard import egress_context, scope_of
from mosaic.dicomweb.multipart import OutgoingPart, write_parts
from mosaic.dicomweb.paths import base_url
from mosaic.http.responses import problem
from mosaic.services.egress import EgressContext
from mosaic.services.rendition.frames import (
    PIXEL_DATA,
    SWAP_SIZES,
    UNDECODABLE,
    FrameError,
    PixelLayout,
    can_decode,
    check_frames,
    raw_frame,
    read_header,
    read_layout,
    stored_frame,
    swap_bytes,
)
from mosaic.services.rendition.rendered import (
    MAX_VIEWPORT,
    RENDERED_TYPES,
    THUMBNAIL_SIZE,
    RenderError,
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)
from mosaic.services.rendition.syntaxes import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, LOSSY, syntax_name
from mosaic.services.rendition.transcode import TranscodeError, can_transcode, transcoded_copy
from mosaic.services.retrieve import RetrieveService, StoredInstance

log = logging.getLogger("mosaic.dicomweb.wado")

CHUNK = 256 * 1024
_WILDCARDS = ("*/*", "*")
_FRAME_LIST = re.compile(r"^\s*\d{1,9}(\s*,\s*\d{1,9})*\s*$")
MAX_FRAME_LIST = 10_000
"""Frame numbers one request may list (repeats included): a frame list is a URL path segment, not a loop."""
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_DICOM = "application/dicom"
_OCTETS = "application/octet-stream"


class WadoError(Exception):
    """An answer other than 200: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- negotiation -----------------------------------------------------------------------------------------


@dataclass
class DicomPlan:
    """How one instance goes out: as stored, or transcoded; ``as_stored``: byte for byte (neither transcoded nor
    coerced); ``ready``: the file made for it in advance (its egress held open until the answer is sent)."""

    instance: StoredInstance
    syntax: str
    transcode: bool
    as_stored: bool = True
    ready: Path | None = None
    version: str = ""
    """What names the header change it goes out with ("" as stored: its sha256 says it all)."""


def choose_dicom(syntax: str, ranges: list[MediaRange], *, single_allowed: bool) -> tuple[str, bool, bool] | None:
    """(transfer syntax sent, transcode?, multipart?) for an instance stored as ``syntax``, or None (406)."""
    for item in ranges:
        if not item.type_matches(_DICOM):
            continue
        multipart = item.multipart or item.media_type in _WILDCARDS
        if not multipart and not single_allowed:
            continue
        wanted = item.transfer_syntax
        if wanted == "*" or wanted == syntax:
            return syntax, False, multipart
        if wanted is None:  # the default: Explicit VR Little Endian, unless only lossy pixel data exists
            if syntax == EXPLICIT_LE or syntax in LOSSY:
                return syntax, False, multipart
            if can_transcode(syntax):
                return EXPLICIT_LE, True, multipart
            continue
        if wanted == EXPLICIT_LE and can_transcode(syntax):
            return EXPLICIT_LE, True, multipart
    return None


@dataclass(frozen=True)
class FramePlan:
    media_type: str
    syntax: str
    decode: bool
    multipart: bool


def choose_frames(layout: PixelLayout, ranges: list[MediaRange], *, single_allowed: bool) -> FramePlan | None:
    """The representation of an instance's frames: as stored in their own media type, or decompressed."""
    stored = layout.transfer_syntax
    for item in ranges:
        multipart = item.multipart or item.media_type in _WILDCARDS
        if not multipart and not single_allowed:
            continue
        wanted = item.transfer_syntax
        if layout.encapsulated:
            own = layout.media_type
            if ((item.type_matches(own) and wanted in (None, "*", stored))
                    or (item.media_type == _OCTETS and wanted in ("*", stored))):
                return FramePlan(own, stored, False, multipart)
            if item.type_matches(_OCTETS) and wanted in (None, EXPLICIT_LE) and can_decode(stored):
                return FramePlan(_OCTETS, EXPLICIT_LE, True, multipart)
        elif item.type_matches(_OCTETS) and wanted in (None, "*", EXPLICIT_LE):
            return FramePlan(_OCTETS, EXPLICIT_LE, False, multipart)
    return None


def choose_rendered(ranges: list[MediaRange], *, several: bool) -> tuple[str, bool] | None:
    """(image media type, multipart?) for rendered frames."""
    for item in ranges:
        wildcard = item.media_type in _WILDCARDS
        multipart = (item.multipart and not wildcard) or (several and wildcard)
        if several and not multipart:
            continue
        for media_type in RENDERED_TYPES:
            if item.type_matches(media_type):
                return media_type, multipart
    return None


def _accept(request: Request, default_part_type: str) -> list[MediaRange]:
    """The ``accept`` query parameter (PS3.18 8.3.3.1) if given, else the Accept header."""
    value = request.query_params.get("accept") or request.headers.get("accept")
    try:
        return parse_accept(value, default_part_type)
    except BadAccept as exc:
        raise WadoError(400, str(exc)) from exc


# --- HTTP helpers ----------------------------------------------------------------------------------------


def _etag(*keys: object) -> str:
    return '"' + hashlib.sha256("|".join(str(key) for key in keys).encode()).hexdigest()[:40] + '"'


def not_modified(request: Request, etag: str) -> bool:
    """If-None-Match (weak comparison, RFC 9110 13.1.2) matches ``etag``."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    return etag in {value.strip().removeprefix("W/") for value in header.split(",")}


def _boundary(etag: str) -> str:
    return "mosaic-" + hashlib.sha1(etag.encode(), usedforsecurity=False).hexdigest()


_SMALL_BODY = 4 * 1024 * 1024


def _multipart(parts: Iterable[OutgoingPart], part_type: str, etag: str, *, length: int | None = None,
               background: BackgroundTask | None = None, small: bool = False) -> Response:
    """A multipart/related answer: streamed, or (``small``: frames, rendered images) sent in one piece with
    its Content-Length, which spares a viewer's many frame requests the streaming machinery."""
    boundary = _boundary(etag)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    media_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if small:
        parts = list(parts)
        if all(part.body is not None or (part.length or _SMALL_BODY + 1) <= _SMALL_BODY for part in parts):
            return Response(b"".join(write_parts(parts, boundary)), headers=headers, media_type=media_type,
                            background=background)
    if length is not None:
        headers["Content-Length"] = str(length)
    return StreamingResponse(write_parts(parts, boundary), headers=headers, background=background,
                             media_type=media_type)


def _multipart_length(parts: list[tuple[str, int]], boundary: str) -> int:
    """The length of a multipart body of (content type, size) parts, framed by the shared writer."""
    framing = sum(len(chunk) for chunk in write_parts([OutgoingPart(content_type, body=b"")
                                                        for content_type, _ in parts], boundary))
    return framing + sum(size for _, size in parts)


def _file_chunks(path: Path, *, delete: bool = False) -> Iterator[bytes]:
    try:
        with open(path, "rb") as stream:
            yield from iter(lambda: stream.read(CHUNK), b"")
    finally:
        if delete:
            path.unlink(missing_ok=True)


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5]; :class:`WadoError` 400 when it is not a comma-separated list of numbers."""
    if text.count(",") >= MAX_FRAME_LIST:
        raise WadoError(400, f"a frame list names at most {MAX_FRAME_LIST} frames")
    if not _FRAME_LIST.match(text):
        raise WadoError(400, f"frame list {text[:80]!r} is not comma-separated frame numbers (1, 2, …)")
    return list(dict.fromkeys(int(number) for number in text.split(",")))  # each frame once, in order


@dataclass
class _Value:
    """Where an element's value is in the stored file."""

    offset: int
    length: int
    vr: str
    inline: bytes | None = field(default=None, repr=False)


def _vr_of(element: Any) -> str:
    vr = getattr(element, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(element.tag))
    except KeyError:
        return "UN"


def find_value(dataset: Dataset, tag: int) -> _Value | None:
    """The first element ``tag`` in ``dataset`` (depth first through sequences) with its file offset."""
    element = dataset.get_item(tag)
    if element is not None:
        if isinstance(element, RawDataElement) and element.value_tell is not None \
                and element.length != 0xFFFFFFFF:
            return _Value(element.value_tell, element.length, _vr_of(element))
        return None
    for key in list(dataset.keys()):
        item = dataset.get_item(key)
        if item is None or _vr_of(item) != "SQ":
            continue
        try:
            sequence = dataset[key].value
        except Exception:  # a private sequence pydicom cannot parse: not searched
            continue
        for child in sequence or []:
            found = find_value(child, tag)
            if found is not None:
                return found
    return None


@contextmanager
def decoding(instance: StoredInstance, what: str) -> Iterator[None]:
    """Whatever the decoders raise on a stored object they cannot read becomes a 422 that names the object and the
    reason (the object stays stored and retrievable as sent); storage failures and answers already decided pass."""
    try:
        yield
    except (WadoError, RenderError, OSError):
        raise
    except (FrameError, TranscodeError) as exc:
        status = getattr(exc, "status", UNDECODABLE)
        if status != UNDECODABLE:
            raise
        raise WadoError(status, f"instance {instance.SOPInstanceUID} is stored but cannot be {what}: {exc}") from exc
    except Exception as exc:  # pydicom and the pixel decoders raise many kinds on malformed data
        log.warning("instance %s cannot be %s: %s: %s", instance.SOPInstanceUID, what, type(exc).__name__, exc)
        raise WadoError(UNDECODABLE, f"instance {instance.SOPInstanceUID} is stored but cannot be {what}: "
                                     f"{type(exc).__name__}: {exc}") from exc


# --- the router ------------------------------------------------------------------------------------------


def create_wado_router(retrieve: RetrieveService, *, rs: bool = True, uri: bool = True) -> APIRouter:
    """WADO-RS retrieve, frames, bulk data, rendered and thumbnails (``rs``), WADO-URI at ``/wado`` (``uri``).

    Paths are relative: the DICOMweb router includes both under ``/dicom-web``; the web application may also
    include ``create_wado_router(retrieve, rs=False)`` to answer WADO-URI at the site root (``/wado``).
    """
    router = APIRouter()
    uri_router = APIRouter()
    thumbnails = ByteCache(max_bytes=32 * 1024 * 1024, max_entries=512)

    def handle(call: Any) -> Response:
        try:
            return call()  # type: ignore[no-any-return]
        except WadoError as exc:
            return problem(exc.status, str(exc))
        except (FrameError, TranscodeError) as exc:
            status = getattr(exc, "status", 500)
            return problem(status, str(exc))
        except RenderError as exc:
            return problem(400, str(exc))

    def instances(request: Request, study: str, series: str | None = None,
                  sop: str | None = None) -> list[StoredInstance]:
        scope = scope_of(request)
        found = retrieve.instances_in(study, series, sop, scope=scope)
        if not found:
            raise WadoError(404, retrieve.missing_uid(study, series, sop, scope=scope))
        return found

    def layout_of(instance: StoredInstance) -> PixelLayout:
        with decoding(instance, "read"), retrieve.open(instance) as stream:
            return read_layout(stream, instance.TransferSyntaxUID)

    def instance_url(request: Request, study: str, series: str, sop: str) -> str:
        return f"{base_url(request)}/studies/{study}/series/{series}/instances/{sop}"

    # --- WADO-RS retrieve (application/dicom) ------------------------------------------------------------

    def transcode(instance: StoredInstance) -> Path:
        with decoding(instance, "transcoded to Explicit VR Little Endian"), retrieve.open(instance) as source:
            return transcoded_copy(source)

    @contextmanager
    def egress(plan: DicomPlan, context: EgressContext) -> Iterator[Path]:
        with (decoding(plan.instance, "transcoded to Explicit VR Little Endian"),
              retrieve.egress(plan.instance, context, transfer_syntax=plan.syntax if plan.transcode else None)
              as path):
            yield path

    def dicom_parts(plans: list[DicomPlan], context: EgressContext) -> Iterator[OutgoingPart]:
        for plan in plans:
            if plan.ready is not None:
                yield OutgoingPart(f"{_DICOM}; transfer-syntax={plan.syntax}", path=plan.ready)
                continue
            with egress(plan, context) as path:
                yield OutgoingPart(f"{_DICOM}; transfer-syntax={plan.syntax}", path=path)

    def stored_body(plan: DicomPlan, context: EgressContext) -> Iterator[bytes]:
        with egress(plan, context) as path:
            yield from _file_chunks(path)

    def retrieve_dicom(request: Request, study: str, series: str | None = None,
                       sop: str | None = None) -> Response:
        found = instances(request, study, series, sop)
        context = egress_context(request)
        ranges = _accept(request, _DICOM)
        plans: list[DicomPlan] = []
        multipart = True
        for instance in found:
            choice = choose_dicom(instance.TransferSyntaxUID, ranges, single_allowed=sop is not None)
            if choice is None:
                raise WadoError(406, f"instance {instance.SOPInstanceUID} is stored as "
                                     f"{syntax_name(instance.TransferSyntaxUID)}; Mosaic sends it as stored or as "
                                     f"Explicit VR Little Endian ({EXPLICIT_LE}) when it can decode it, but the "
                                     f"request accepts only: {describe(ranges)}")
            syntax, needs_transcoding, multipart = choice
            version = retrieve.egress_version(instance, context)
            plans.append(DicomPlan(instance, syntax, needs_transcoding, not needs_transcoding and version is None,
                                   version=version or ""))
        if len(plans) == 1 and plans[0].as_stored and multipart:
            etag = f'"{plans[0].instance.sha256}"'
        else:
            etag = _etag(multipart, *(f"{plan.instance.sha256}:{plan.syntax}:{plan.version}" for plan in plans))
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        held = ExitStack()
        try:
            if len(plans) == 1 and not plans[0].as_stored:
                plans[0].ready = held.enter_context(egress(plans[0], context))  # errors answer with a status
            if not multipart:
                plan = plans[0]
                headers = {"ETag": etag, "Cache-Control": "no-cache"}
                media_type = f"{_DICOM}; transfer-syntax={plan.syntax}"
                if plan.ready is not None:
                    headers["Content-Length"] = str(plan.ready.stat().st_size)
                    return StreamingResponse(_file_chunks(plan.ready), media_type=media_type, headers=headers,
                                             background=BackgroundTask(held.close))
                headers["Content-Length"] = str(plan.instance.size)
                return StreamingResponse(stored_body(plan, context), media_type=media_type, headers=headers)
            length = None
            if all(plan.as_stored for plan in plans):
                length = _multipart_length([(f"{_DICOM}; transfer-syntax={plan.syntax}", plan.instance.size)
                                            for plan in plans], _boundary(etag))
            elif plans[0].ready is not None:
                length = _multipart_length([(f"{_DICOM}; transfer-syntax={plans[0].syntax}",
                                             plans[0].ready.stat().st_size)], _boundary(etag))
            return _multipart(dicom_parts(plans, context), _DICOM, etag, length=length,
                              background=BackgroundTask(held.close))
        except BaseException:
            held.close()
            raise

    @router.get("/studies/{study}")
    def retrieve_study(request: Request, study: str) -> Response:
        return handle(lambda: retrieve_dicom(request, study))

    @router.get("/studies/{study}/series/{series}")
    def retrieve_series(request: Request, study: str, series: str) -> Response:
        return handle(lambda: retrieve_dicom(request, study, series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return handle(lambda: retrieve_dicom(request, study, series, sop))

    # --- frames ----------------------------------------------------------------------------------------

    def frame_bytes(stream: BinaryIO, layout: PixelLayout, number: int, plan: FramePlan) -> bytes:
        data = stored_frame(stream, layout, number - 1)
        return raw_frame(layout, data) if plan.decode else data

    def send_frames(request: Request, instance: StoredInstance, layout: PixelLayout, numbers: list[int],
                    url: str, ranges: list[MediaRange]) -> Response:
        plan = choose_frames(layout, ranges, single_allowed=len(numbers) == 1)
        if plan is None:
            stored = (f"compressed as {syntax_name(layout.transfer_syntax)} ({layout.media_type})"
                      if layout.encapsulated else "uncompressed (application/octet-stream)")
            decodable = "" if not layout.encapsulated or can_decode(layout.transfer_syntax) else \
                " and cannot be decompressed here"
            raise WadoError(406, f"the frames of instance {instance.SOPInstanceUID} are {stored}{decodable}; "
                                 f"the request accepts only: {describe(ranges)}")
        part_type = f"{plan.media_type}; transfer-syntax={plan.syntax}"
        etag = _etag(instance.sha256, "frames", *numbers, part_type, plan.multipart)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        with decoding(instance, "served frame by frame"), retrieve.open(instance) as stream:
            first = frame_bytes(stream, layout, numbers[0], plan)  # the first frame now: a failure gets a status
        if not plan.multipart:
            return Response(first, media_type=part_type, headers={"ETag": etag, "Cache-Control": "no-cache"})

        def parts() -> Iterator[OutgoingPart]:
            yield OutgoingPart(part_type, body=first, headers={"Content-Location": f"{url}/frames/{numbers[0]}"})
            if len(numbers) > 1:
                with retrieve.open(instance) as stream:
                    for number in numbers[1:]:
                        yield OutgoingPart(part_type, body=frame_bytes(stream, layout, number, plan),
                                           headers={"Content-Location": f"{url}/frames/{number}"})

        return _multipart(parts(), plan.media_type, etag, small=len(numbers) <= 8)

    def frames(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        numbers = parse_frame_list(frame_list)
        instance = instances(request, study, series, sop)[0]
        ranges = _accept(request, _OCTETS)
        layout = layout_of(instance)
        check_frames(layout, numbers, f"instance {sop}")
        return send_frames(request, instance, layout, numbers, instance_url(request, study, series, sop), ranges)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}")
    def retrieve_frames(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        return handle(lambda: frames(request, study, series, sop, frame_list))

    # --- bulk data -------------------------------------------------------------------------------------

    def locate_value(instance: StoredInstance, tag: int) -> tuple[_Value, Path | None]:
        """The value of ``tag`` and, for deflated data sets, the transcoded copy it is in (caller deletes)."""
        copy = transcode(instance) if instance.TransferSyntaxUID == DEFLATED_LE else None
        try:
            with (open(copy, "rb") if copy is not None else retrieve.open(instance)) as stream:
                header = read_header(stream)
                found = find_value(header, tag)
                if found is None and tag > PIXEL_DATA:
                    stream.seek(0)
                    found = find_value(pydicom.dcmread(stream, defer_size=1024, force=True), tag)
                if found is not None and (copy is not None or retrieve.stored_path(instance) is None):
                    stream.seek(found.offset)
                    found.inline = stream.read(found.length)
        except BaseException:
            if copy is not None:
                copy.unlink(missing_ok=True)
            raise
        if found is None:
            if copy is not None:
                copy.unlink(missing_ok=True)
            raise WadoError(404, f"instance {instance.SOPInstanceUID} has no element {tag >> 16:04X},"
                                 f"{tag & 0xFFFF:04X} with a value to send")
        return found, copy

    def bulkdata(request: Request, study: str, series: str, sop: str, tag_text: str) -> Response:
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag_text):
            raise WadoError(400, f"bulk data tag {tag_text!r} is not 8 hexadecimal digits")
        tag = int(tag_text, 16)
        instance = instances(request, study, series, sop)[0]
        url = instance_url(request, study, series, sop)
        if tag == PIXEL_DATA:
            ranges = _accept(request, _OCTETS)
            layout = layout_of(instance)
            check_frames(layout, [1], f"instance {sop}")
            numbers = list(range(1, layout.number_of_frames + 1))
            return send_frames(request, instance, layout, numbers, url, ranges)
        ranges = _accept(request, _OCTETS)
        multipart: bool | None = None
        for item in ranges:
            if item.type_matches(_OCTETS) and item.transfer_syntax in (None, "*", EXPLICIT_LE):
                multipart = item.multipart or item.media_type in _WILDCARDS
                break
        if multipart is None:
            raise WadoError(406, f"bulk data is sent as application/octet-stream; the request accepts only: "
                                 f"{describe(ranges)}")
        value, copy = locate_value(instance, tag)
        data = value.inline
        if instance.TransferSyntaxUID == EXPLICIT_BE and value.vr in SWAP_SIZES:
            if data is None:
                data = retrieve.read_range(instance, value.offset, value.length)
            data = swap_bytes(data, SWAP_SIZES[value.vr])
        etag = _etag(instance.sha256, "bulkdata", tag_text.upper(), multipart)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Cache-Control": "no-cache", "Accept-Ranges": "bytes"}
        byte_range = request.headers.get("range")
        if byte_range:
            match = _RANGE.match(byte_range)
            if match and (match.group(1) or match.group(2)):
                size = value.length
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:
                    start, end = max(size - int(match.group(2)), 0), size - 1
                if start >= size or end < start:
                    return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                part = data[start: end + 1] if data is not None else \
                    retrieve.read_range(instance, value.offset + start, end - start + 1)
                return Response(part, status_code=206, media_type=_OCTETS, headers=headers)
        if data is None:
            stored = retrieve.stored_path(instance)
            assert stored is not None
            whole = OutgoingPart(_OCTETS, path=stored, offset=value.offset, length=value.length,
                                 headers={"Content-Location": f"{url}/bulkdata/{tag_text}"})
        else:
            whole = OutgoingPart(_OCTETS, body=data, headers={"Content-Location": f"{url}/bulkdata/{tag_text}"})
        if copy is not None:
            copy.unlink(missing_ok=True)
        if not multipart:
            if whole.body is not None:
                return Response(whole.body, media_type=_OCTETS, headers=headers)
            assert whole.path is not None
            return StreamingResponse(_range_chunks(whole.path, value.offset, value.length), media_type=_OCTETS,
                                     headers={**headers, "Content-Length": str(value.length)})
        return _multipart([whole], _OCTETS, etag)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
    def retrieve_bulkdata(request: Request, study: str, series: str, sop: str, tag: str) -> Response:
        return handle(lambda: bulkdata(request, study, series, sop, tag))

    # --- rendered and thumbnails -----------------------------------------------------------------------

    def image_layout(instance: StoredInstance) -> PixelLayout:
        layout = layout_of(instance)
        if not layout.has_pixels:
            name = UID(instance.SOPClassUID).name or instance.SOPClassUID
            raise WadoError(406, f"instance {instance.SOPInstanceUID} ({name}) has no pixel data: "
                                 "Mosaic renders images only")
        return layout

    def rendered_frames(instance: StoredInstance, layout: PixelLayout, numbers: list[int], media_type: str,
                        window: Window | None, viewport: Viewport | None, quality: int) -> list[bytes]:
        images = []
        with decoding(instance, "rendered"), retrieve.open(instance) as stream:
            for number in numbers:
                data = stored_frame(stream, layout, number - 1)
                images.append(render(layout, data, number - 1, media_type=media_type, window=window,
                                     viewport=viewport, quality=quality))
        return images

    def rendered(request: Request, study: str, series: str, sop: str, frame_list: str | None) -> Response:
        numbers = parse_frame_list(frame_list) if frame_list is not None else [1]
        window = parse_window(request.query_params.get("window"))
        viewport = parse_viewport(request.query_params.get("viewport"))
        quality = parse_quality(request.query_params.get("quality"))
        ranges = _accept(request, "image/jpeg")
        choice = choose_rendered(ranges, several=len(numbers) > 1)
        if choice is None:
            raise WadoError(406, f"rendered images are image/jpeg or image/png; the request accepts only: "
                                 f"{describe(ranges)}")
        media_type, multipart = choice
        instance = instances(request, study, series, sop)[0]
        etag = _etag(instance.sha256, "rendered", *numbers, media_type, multipart, window, viewport, quality)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        layout = image_layout(instance)
        check_frames(layout, numbers, f"instance {sop}")
        images = rendered_frames(instance, layout, numbers, media_type, window, viewport, quality)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if not multipart:
            return Response(images[0], media_type=media_type, headers=headers)
        return _multipart([OutgoingPart(media_type, body=image) for image in images], media_type, etag, small=True)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
    def instance_rendered(request: Request, study: str, series: str, sop: str) -> Response:
        return handle(lambda: rendered(request, study, series, sop, None))

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/rendered")
    def frames_rendered(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        return handle(lambda: rendered(request, study, series, sop, frame_list))

    def thumbnail(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
        viewport = parse_viewport(request.query_params.get("viewport"))
        if viewport is None:
            viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE, letterbox=False)
        quality = parse_quality(request.query_params.get("quality"))
        ranges = _accept(request, "image/jpeg")
        choice = choose_rendered(ranges, several=False)
        if choice is None:
            raise WadoError(406, f"thumbnails are image/jpeg or image/png; the request accepts only: "
                                 f"{describe(ranges)}")
        media_type = choice[0]
        if sop is not None:
            instance = instances(request, study, series, sop)[0]
        else:
            found = retrieve.representative(study, series, scope=scope_of(request))
            if found is None:
                message = retrieve.missing_uid(study, series, scope=scope_of(request))
                if retrieve.instances_in(study, series, scope=scope_of(request)):
                    what = f"series {series}" if series else f"study {study}"
                    message = f"{what} has no image instances to show"
                raise WadoError(404, message)
            instance = found
        key = (instance.sha256, media_type, viewport, quality)
        etag = _etag("thumbnail", *key)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        image = thumbnails.get(key)
        if image is None:
            layout = image_layout(instance)
            middle = (layout.number_of_frames + 1) // 2
            image = rendered_frames(instance, layout, [middle], media_type, None, viewport, quality)[0]
            thumbnails.put(key, image)
        return Response(image, media_type=media_type, headers={"ETag": etag, "Cache-Control": "no-cache"})

    @router.get("/studies/{study}/thumbnail")
    def study_thumbnail(request: Request, study: str) -> Response:
        return handle(lambda: thumbnail(request, study))

    @router.get("/studies/{study}/series/{series}/thumbnail")
    def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return handle(lambda: thumbnail(request, study, series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
        return handle(lambda: thumbnail(request, study, series, sop))

    # --- WADO-URI --------------------------------------------------------------------------------------

    def wado_uri(request: Request) -> Response:
        params = request.query_params
        if params.get("requestType") != "WADO":
            raise WadoError(400, "WADO-URI needs requestType=WADO")
        uids = {name: (params.get(name) or "").strip() for name in ("studyUID", "seriesUID", "objectUID")}
        missing = [name for name, value in uids.items() if not value]
        if missing:
            raise WadoError(400, f"WADO-URI needs {', '.join(missing)}")
        instance = instances(request, uids["studyUID"], uids["seriesUID"], uids["objectUID"])[0]
        wanted = [value.split(";")[0].strip().lower() for value in (params.get("contentType") or "image/jpeg")
                  .split(",") if value.strip()]
        media_type = next((value if value in (_DICOM, *RENDERED_TYPES) else "image/jpeg" for value in wanted
                           if value in (_DICOM, *RENDERED_TYPES, "image/*", "*/*")), None)
        if media_type is None:
            raise WadoError(406, f"contentType {params.get('contentType')!r}: Mosaic sends application/dicom, "
                                 "image/jpeg or image/png")
        if media_type == _DICOM:
            syntax = params.get("transferSyntax") or None
            choice = choose_dicom(instance.TransferSyntaxUID, [MediaRange(_DICOM, False, syntax)],
                                  single_allowed=True)
            if choice is None:
                raise WadoError(406, f"instance {instance.SOPInstanceUID} is stored as "
                                     f"{syntax_name(instance.TransferSyntaxUID)} and cannot be sent as {syntax}")
            sent, needs_transcoding, _ = choice
            context = egress_context(request)
            version = retrieve.egress_version(instance, context)
            plan = DicomPlan(instance, sent, needs_transcoding, not needs_transcoding and version is None,
                             version=version or "")
            etag = f'"{instance.sha256}"' if plan.as_stored else _etag(instance.sha256, sent, plan.version)
            if not_modified(request, etag):
                return Response(status_code=304, headers={"ETag": etag})
            headers = {"ETag": etag, "Cache-Control": "no-cache"}
            if not plan.as_stored:
                held = ExitStack()
                path = held.enter_context(egress(plan, context))
                headers["Content-Length"] = str(path.stat().st_size)
                return StreamingResponse(_file_chunks(path), media_type=_DICOM, headers=headers,
                                         background=BackgroundTask(held.close))
            headers["Content-Length"] = str(instance.size)
            return StreamingResponse(stored_body(plan, context), media_type=_DICOM, headers=headers)
        number = _int_param(params.get("frameNumber"), "frameNumber", 1) or 1
        center, width = params.get("windowCenter"), params.get("windowWidth")
        if (center is None) != (width is None):
            raise WadoError(400, "windowCenter and windowWidth go together")
        window = parse_window(f"{center},{width}") if center is not None else None
        rows = _int_param(params.get("rows"), "rows", maximum=MAX_VIEWPORT)
        columns = _int_param(params.get("columns"), "columns", maximum=MAX_VIEWPORT)
        viewport = _uri_viewport(params.get("region"), rows, columns)
        quality = parse_quality(params.get("imageQuality"))
        etag = _etag(instance.sha256, "wado-uri", number, media_type, window, viewport, quality)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        layout = image_layout(instance)
        check_frames(layout, [number], f"instance {instance.SOPInstanceUID}")
        if viewport is not None and viewport.sw is not None:
            viewport = _scale_region(viewport, layout)
        image = rendered_frames(instance, layout, [number], media_type, window, viewport, quality)[0]
        return Response(image, media_type=media_type, headers={"ETag": etag, "Cache-Control": "no-cache"})

    @uri_router.get("/wado")
    def wado(request: Request) -> Response:
        return handle(lambda: wado_uri(request))

    combined = APIRouter()
    if rs:
        combined.include_router(router)
    if uri:
        combined.include_router(uri_router)
    return combined


def _range_chunks(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        stream.seek(offset)
        remaining = length
        while remaining > 0:
            chunk = stream.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def _int_param(text: str | None, name: str, default: int | None = None, *,
               maximum: int = 2**31 - 1) -> int | None:
    if text is None or not text.strip():
        return default
    if len(text.strip()) > 12:
        raise WadoError(400, f"{name}={text[:20]!r}… is not a number from 1 to {maximum}")
    try:
        value = int(text)
    except ValueError as exc:
        raise WadoError(400, f"{name}={text!r} is not a whole number") from exc
    if not 1 <= value <= maximum:
        raise WadoError(400, f"{name}={text!r} must be 1 to {maximum}")
    return value


def _uri_viewport(region: str | None, rows: int | None, columns: int | None) -> Viewport | None:
    """WADO-URI rows/columns are maxima (aspect kept); region=x1,y1,x2,y2 is a fraction of the image."""
    corners: list[float] | None = None
    if region:
        try:
            corners = [float(value) for value in region.split(",")]
        except ValueError as exc:
            raise WadoError(400, f"region={region!r} is not four numbers") from exc
        if len(corners) != 4 or not all(0.0 <= value <= 1.0 for value in corners) \
                or corners[2] <= corners[0] or corners[3] <= corners[1]:
            raise WadoError(400, f"region={region!r} must be x1,y1,x2,y2 between 0 and 1, x1 < x2, y1 < y2")
    if corners is None and rows is None and columns is None:
        return None
    if corners is None:
        return Viewport(columns, rows, letterbox=False)
    return Viewport(columns, rows, corners[0], corners[1], corners[2] - corners[0], corners[3] - corners[1],
                    letterbox=False)


def _scale_region(viewport: Viewport, layout: PixelLayout) -> Viewport:
    """A WADO-URI region (fractions) in pixels of the frame."""
    columns, rows = int(layout.header.get("Columns", 0) or 0), int(layout.header.get("Rows", 0) or 0)
    return Viewport(viewport.width, viewport.height, (viewport.sx or 0) * columns, (viewport.sy or 0) * rows,
                    (viewport.sw or 0) * columns, (viewport.sh or 0) * rows, letterbox=False)
