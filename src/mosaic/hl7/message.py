"""Reading one HL7 v2 message: decoded per MSH-18, parsed by python-hl7, its fields read by position.

Positions are written as HL7 writes them (``PID-3.4``: segment, field, component), and an error names the place
it found wrong the way ERR-2 does (``PID^1^3^1^1``: segment, its sequence, field, repetition, component).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hl7

from mosaic.hl7.charsets import decode


class Hl7Error(Exception):
    """A message that cannot be applied: its acknowledgement code (AE, AR), HL7 Table 0357 error code, and
    where (ERR-2), with a diagnostic for people (ERR-8)."""

    def __init__(self, ack_code: str, error_code: int, text: str, location: str = "") -> None:
        super().__init__(text)
        self.ack_code = ack_code
        self.error_code = error_code
        self.location = location


ERROR_NAMES = {
    0: "Message accepted", 100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
    103: "Table value not found", 200: "Unsupported message type", 201: "Unsupported event code",
    202: "Unsupported processing id", 203: "Unsupported version id", 204: "Unknown key identifier",
    205: "Duplicate key identifier", 206: "Application record locked", 207: "Application internal error",
}
"""HL7 Table 0357 (message error condition codes), as HL7 v2.5.1 names them."""


@dataclass
class Message:
    """A decoded, parsed message and the header fields every acknowledgement needs."""

    parsed: hl7.Message
    codec: str
    raw_header: list[str]
    """MSH fields as sent (index n-1 is MSH-n: the field separator, the encoding characters, MSH-3 …; escapes
    kept), for copying into the acknowledgement."""

    _values: dict[str, str] = field(default_factory=dict, repr=False)

    def value(self, path: str) -> str:
        """The unescaped value at ``path`` (``PID.F3.R1.C4`` in python-hl7's notation), "" when absent."""
        known = self._values.get(path)
        if known is not None:
            return known
        try:
            found = self.parsed[path]
        except (IndexError, KeyError):
            found = None
        text = self.parsed.unescape(str(found)) if found is not None else ""
        self._values[path] = text
        return text

    def segments(self, name: str) -> list[hl7.Segment]:
        try:
            return list(self.parsed.segments(name))
        except KeyError:
            return []

    def header(self, number: int) -> str:
        return self.raw_header[number - 1] if len(self.raw_header) >= number else ""

    @property
    def message_type(self) -> str:
        return self.value("MSH.F9.R1.C1").upper()

    @property
    def trigger_event(self) -> str:
        return self.value("MSH.F9.R1.C2").upper()

    @property
    def control_id(self) -> str:
        return self.value("MSH.F10")

    @property
    def version(self) -> str:
        return self.value("MSH.F12.R1.C1")

    @property
    def sending_application(self) -> str:
        return self.value("MSH.F3.R1.C1")

    @property
    def sending_facility(self) -> str:
        return self.value("MSH.F4.R1.C1")


def read_message(raw: bytes, default_charset: str) -> Message:
    """Decode (MSH-18) and parse a message; raises :class:`~mosaic.hl7.charsets.CharsetError` or
    :class:`Hl7Error`."""
    text, codec = decode(raw, default_charset)
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        parsed = hl7.parse(text)
        parsed.segment("MSH")
    except Exception as exc:  # python-hl7 raises several kinds on malformed text
        raise Hl7Error("AE", 100, f"the message cannot be parsed: {type(exc).__name__}: {exc}", "MSH") from exc
    msh = text.split("\r", 1)[0]
    separator = msh[3:4] or "|"
    fields = msh.split(separator)
    return Message(parsed, codec, [separator, *fields[1:]])
