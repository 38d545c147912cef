"""The multipart/related codec: what the writer produces the reader gives back, however it is chunked."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mosaic.dicomweb.multipart import (
    MultipartError,
    OutgoingPart,
    Part,
    media_type_parameters,
    read_parts,
    write_parts,
)


def read(body: bytes, boundary: str, tmp_path: Path, chunk: int) -> list[tuple[Part, bytes]]:
    counter = itertools.count()

    def sink() -> tuple[Path, object]:
        path = tmp_path / f"part{next(counter)}"
        return path, open(path, "wb")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    parts = asyncio.run(read_parts(chunks(), boundary, sink))  # type: ignore[arg-type]
    return [(part, part.path.read_bytes()) for part in parts]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_round_trip_whatever_the_chunking(tmp_path: Path, chunk: int) -> None:
    payloads = [b"", b"\r\n--not-the-boundary\r\n", bytes(range(256)) * 40, b"--b\r\n"]
    body = b"".join(write_parts([OutgoingPart("application/dicom", body=p) for p in payloads], "b0undary"))
    parts = read(body, "b0undary", tmp_path, chunk)
    assert [data for _part, data in parts] == payloads
    assert all(part.content_type == "application/dicom" for part, _data in parts)


def test_preamble_epilogue_and_headers(tmp_path: Path) -> None:
    body = (b"ignored preamble\r\n--xyz\r\nContent-Type: application/dicom\r\nContent-Location: a.dcm\r\n\r\n"
            b"DATA\r\n--xyz--\r\nepilogue")
    [(part, data)] = read(body, "xyz", tmp_path, 5)
    assert data == b"DATA" and part.headers["content-location"] == "a.dcm"


@pytest.mark.parametrize(
    "body", [b"no boundary here at all" * 2000, b"--xyz\r\nContent-Type: a\r\n\r\nDATA never ends"]
)
def test_broken_bodies_are_refused(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(MultipartError):
        read(body, "xyz", tmp_path, 1000)


def test_media_type_parameters() -> None:
    main, parameters = media_type_parameters('Multipart/Related; type="application/dicom"; boundary=abc;x=1')
    assert main == "multipart/related"
    assert parameters == {"type": "application/dicom", "boundary": "abc", "x": "1"}


@pytest.mark.parametrize("chunk", [13, 4096, 65536])
def test_near_boundary_patterns_at_every_chunk_edge_stay_in_the_part(tmp_path: Path, chunk: int) -> None:
    """Prefixes of the delimiter (``\\r\\n--boundar``…) straddling chunk edges are part data, not delimiters."""
    boundary = "mosaic-edge"
    delimiter = f"\r\n--{boundary}".encode()
    pieces = [delimiter[:length] + b"x" for length in range(1, len(delimiter))]
    payload = b"".join(pad + piece for pad in (b"", b"y" * 5, b"z" * 11) for piece in pieces) * 9
    payload += delimiter[:-1]  # ends one byte short of a delimiter, right before the real one
    body = b"".join(write_parts([OutgoingPart("application/dicom", body=payload),
                                 OutgoingPart("application/dicom", body=b"second")], boundary))
    for shift in range(0, 40, 3):  # move the chunk edges across the patterns
        parts = read(body, boundary, tmp_path, chunk + shift)
        assert [data for _, data in parts] == [payload, b"second"]
        assert parts[0][0].size == len(payload)
