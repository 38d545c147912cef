"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, Release 2): ``0x0B`` message ``0x1C 0x0D``.

A connection carries any number of framed messages, each answered on the same connection before the next is
read (original-mode acknowledgement). Bytes outside a frame are not a message: they are skipped up to the next
start block, and counted so the door can log them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\x0d"


class FrameTooLarge(Exception):
    """A frame grew past the configured maximum before its end block: the connection is closed."""


@dataclass
class Framing:
    """What was seen besides messages on one connection."""

    skipped_bytes: int = 0
    unfinished: bool = False
    """The peer closed the connection (or went silent) in the middle of a frame: that message is not applied."""


def frame(payload: bytes) -> bytes:
    return START + payload + END


def read_frames(connection: socket.socket, *, max_bytes: int, framing: Framing,
                chunk: int = 65536) -> Iterator[bytes]:
    """The payload of each complete frame received on ``connection``, in order, until it closes or times out
    (``socket.timeout`` ends the iteration like a close)."""
    buffer = bytearray()
    while True:
        start = buffer.find(START)
        if start < 0:
            framing.skipped_bytes += len(buffer)
            buffer.clear()
        else:
            if start:
                framing.skipped_bytes += start
                del buffer[:start]
            end = buffer.find(END, 1)
            if end > max_bytes + 1 or (end < 0 and len(buffer) > max_bytes + 1):
                raise FrameTooLarge(f"a message of more than {max_bytes} bytes")
            if end >= 0:
                payload = bytes(buffer[1:end])
                del buffer[:end + len(END)]
                yield payload
                continue
        try:
            data = connection.recv(chunk)
        except (TimeoutError, OSError):
            data = b""
        if not data:
            framing.unfinished = START in buffer
            return
        buffer += data
