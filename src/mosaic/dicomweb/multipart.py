"""multipart/related (RFC 2387) as DICOMweb uses it: one reader for STOW-RS, one writer for WADO-RS.

The reader streams: each part's body goes straight to a file as the request arrives, so a multi-GB
STOW request never sits in memory. A part whose file cannot be written (a full disk) is still read to its end,
without writing, and returned with its ``failure``, as C-STORE reads a data set it cannot write: the request
can then be answered (0xA700 for that part) instead of the connection being reset mid-body.
The writer yields parts from bytes or from files in chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 256 * 1024
_MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not the multipart/related it claims to be."""


@dataclass
class Part:
    headers: dict[str, str]
    path: Path | None
    """The spool file holding the body (None when none could be created)."""
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    """SHA-256 of the body, computed as it was written (the spool file is never re-read to hash it)."""
    failure: OSError | None = None
    """Why the body could not be written (its file, if any, holds only a beginning)."""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def media_type_parameters(content_type: str) -> tuple[str, dict[str, str]]:
    """Split ``multipart/related; type="application/dicom"; boundary=x`` into its type and parameters."""
    main, _, rest = content_type.partition(";")
    parameters: dict[str, str] = {}
    for match in re.finditer(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?', rest):
        value = match.group(2).strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"')
        parameters[match.group(1).lower()] = value
    return main.strip().lower(), parameters


@dataclass
class _State:
    parts: list[Part] = field(default_factory=list)
    current: BinaryIO | None = None
    headers_done: bool = False


async def read_parts(chunks: AsyncIterator[bytes], boundary: str,
                     open_sink: Callable[[], tuple[Path, BinaryIO]]) -> list[Part]:
    """Read every part of a multipart body; ``open_sink`` gives a fresh (path, writable file) per part.

    An ``OSError`` opening, writing or closing a part's file is kept in :attr:`Part.failure`; the rest of that
    part is read and dropped, and the next part gets a file of its own again."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("the multipart boundary is missing or too long")
    first = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + first
    buffer = bytearray()
    parts: list[Part] = []
    sink: BinaryIO | None = None
    state = "preamble"
    finished = False
    try:
        async for chunk in chunks:
            buffer += chunk
            while True:
                if state == "preamble":
                    at = buffer.find(first)
                    if at < 0:
                        if len(buffer) > _MAX_HEADER_BYTES:
                            raise MultipartError("no multipart boundary found at the start of the body")
                        break
                    del buffer[: at + len(first)]
                    state = "after-delimiter"
                if state == "after-delimiter":
                    if len(buffer) < 2:
                        break
                    if buffer[:2] == b"--":
                        finished = True
                        state = "epilogue"
                        buffer.clear()
                        break
                    end = buffer.find(b"\r\n")
                    if end < 0:
                        break
                    del buffer[: end + 2]  # transport padding, then CRLF
                    state = "headers"
                if state == "headers":
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0 and buffer.startswith(b"\r\n"):
                        end = -2  # a part without headers
                    if end == -1:
                        if len(buffer) > _MAX_HEADER_BYTES:
                            raise MultipartError("a part's headers are too long or never end")
                        break
                    headers = _parse_headers(bytes(buffer[: max(end, 0)]))
                    del buffer[: end + 4]
                    try:
                        path, sink = open_sink()
                    except OSError as exc:
                        parts.append(Part(headers, None, failure=exc))
                    else:
                        parts.append(Part(headers, path))
                    state = "body"
                if state == "body":
                    at = buffer.find(delimiter)
                    if at < 0:
                        keep = len(delimiter) - 1
                        if len(buffer) > keep:
                            sink = _write(parts[-1], sink, buffer[: len(buffer) - keep])
                            del buffer[: len(buffer) - keep]
                        break
                    sink = _write(parts[-1], sink, buffer[:at])
                    if sink is not None:
                        _close(parts[-1], sink)
                        sink = None
                    del buffer[: at + len(delimiter)]
                    state = "after-delimiter"
                    continue
                if state == "epilogue":
                    buffer.clear()
                    break
    finally:
        if sink is not None:
            with contextlib.suppress(OSError):  # the body ended early: the caller discards the part anyway
                sink.close()
    if not finished:
        raise MultipartError("the multipart body ends before its closing boundary")
    return parts


def _write(part: Part, sink: BinaryIO | None, piece: bytearray) -> BinaryIO | None:
    """Append ``piece`` to the part's file, hashing it; the file (None once it could not take more) after."""
    part.size += len(piece)
    if sink is None:
        return None
    try:
        sink.write(piece)
    except OSError as exc:
        part.failure = exc
        with contextlib.suppress(OSError):  # flushing what is buffered fails the same way
            sink.close()
        return None
    part.digest.update(piece)
    return sink


def _close(part: Part, sink: BinaryIO) -> None:
    """Close a part's file: the last buffered bytes are written here, and may not fit either."""
    try:
        sink.close()
    except OSError as exc:
        part.failure = exc


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    return f"mosaic-{uuid.uuid4().hex}"


@dataclass
class OutgoingPart:
    content_type: str
    body: bytes | None = None
    path: Path | None = None
    offset: int = 0
    length: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def write_parts(parts: Iterable[OutgoingPart], boundary: str) -> Iterator[bytes]:
    """The multipart/related body, part by part (files are read in chunks)."""
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        for name, value in part.headers.items():
            head += f"{name}: {value}\r\n"
        yield (head + "\r\n").encode("latin-1")
        if part.body is not None:
            yield part.body
        elif part.path is not None:
            yield from _file_chunks(part.path, part.offset, part.length)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")


def _file_chunks(path: Path, offset: int, length: int | None) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        stream.seek(offset)
        remaining = length
        while remaining is None or remaining > 0:
            chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
