"""The one way the pages answer with stored content (the portal's and a share link's): by byte range, and only
as a type a browser shows without running anything of it.

The media type a stored object names (an Encapsulated Document's MIME type, a kept original's) is the sender's
word: ``text/html`` or ``image/svg+xml`` there would run script on the archive's own origin. Only the types of
:data:`SHOWN` are served as themselves, inline; anything else goes as ``application/octet-stream``, an
attachment. Every answer carries a Content-Security-Policy that lets the document load nothing and, but for PDFs
(the browser's PDF viewer does not run in a sandbox), runs it sandboxed."""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from mosaic.services.content import Content, ContentService

SHOWN = frozenset({"application/pdf", "image/jpeg", "image/png", "image/tiff", "image/heic", "image/webp",
                   "image/gif", "video/mp4", "video/quicktime", "video/mpeg"})
"""Media types served as themselves: documents, images and video a browser displays without script."""
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SUFFIX = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif", "image/heic": ".heic",
           "image/webp": ".webp", "image/gif": ".gif", "video/mp4": ".mp4", "video/quicktime": ".mov",
           "application/pdf": ".pdf"}


def ranged(request: Request, content: ContentService, found: Content, *, download: bool,
           cache: str = "private, no-cache") -> Response:
    """``found`` as the answer to ``request`` (its ``Range``, if any: 206, or 416 beyond the end)."""
    media_type = found.media_type.split(";", 1)[0].strip().lower()
    shown = media_type in SHOWN
    if not shown:
        media_type, download = "application/octet-stream", True
    name = found.filename or f"{found.instance.SOPInstanceUID}{_SUFFIX.get(media_type, '')}"
    policy = "default-src 'none'" + ("" if media_type == "application/pdf" else "; sandbox")
    headers = {"Accept-Ranges": "bytes", "Cache-Control": cache, "ETag": f'"{found.instance.sha256}"',
               "X-Content-Type-Options": "nosniff", "Content-Security-Policy": policy,
               "Content-Disposition": f"{'attachment' if download else 'inline'}; filename*=UTF-8''{quote(name)}"}
    size = found.length
    match = _RANGE.match(request.headers.get("range", "").strip())
    if match and (match.group(1) or match.group(2)):
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:
            start, end = max(size - int(match.group(2)), 0), size - 1
        if start >= size or end < start:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        return StreamingResponse(content.read(found, start, end), status_code=206, media_type=media_type,
                                 headers=headers)
    headers["Content-Length"] = str(size)
    return StreamingResponse(content.read(found), media_type=media_type, headers=headers)
