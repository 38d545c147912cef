"""Original-mode acknowledgements (HL7 v2.5.1 2.9.2): MSH + MSA (+ ERR), on the connection the message came in.

``AA`` the message was applied; ``AE`` it could not be applied (ERR says where and why); ``AR`` it was refused
(an unsupported message type or event, a sender that may not send it). The acknowledgement is encoded in the
character set of the message it answers and echoes its MSH-18.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from mosaic.hl7.message import ERROR_NAMES, Hl7Error

APPLICATION = "MOSAIC"


def escape(text: str, encoding_characters: str = "^~\\&") -> str:
    """``text`` with HL7's delimiters escaped (``\\F\\``, ``\\S\\``, ``\\R\\``, ``\\E\\``, ``\\T\\``)."""
    component, repetition, escape_char, subcomponent = (list(encoding_characters) + ["^", "~", "\\", "&"][
        len(encoding_characters):])[:4]
    out = text.replace(escape_char, f"{escape_char}E{escape_char}")
    for char, name in (("|", "F"), (component, "S"), (repetition, "R"), (subcomponent, "T")):
        out = out.replace(char, f"{escape_char}{name}{escape_char}")
    return " ".join(out.split("\r"))


def acknowledgement(header: list[str], code: str, *, error: Hl7Error | None = None, trigger_event: str = "",
                    now: datetime | None = None) -> str:
    """The ACK for a message whose raw MSH fields are ``header`` (index n-1 is MSH-n; ``[]`` when the message had
    no readable header)."""
    def field(number: int) -> str:
        return header[number - 1] if len(header) >= number else ""

    separator = field(1) or "|"
    encoding = field(2) or "^~\\&"
    component = encoding[0]
    version = (field(12).split(component)[0] if field(12) else "") or "2.5.1"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    control_id = uuid.uuid4().hex[:20]
    msh = ["MSH", encoding, field(5) or APPLICATION, field(6), field(3), field(4), stamp, "",
           component.join(["ACK", trigger_event, "ACK"]) if trigger_event else "ACK", control_id,
           field(11) or "P", field(12) or version, "", "", "", "", "", field(18)]
    while msh and msh[-1] == "":
        msh.pop()
    text = escape(str(error), encoding) if error is not None else ""
    msa = ["MSA", code, field(10)]
    if error is not None and _before_25(version):
        msa.append(text[:80])  # MSA-3 text message, withdrawn in 2.5 (ERR-8 carries it)
    segments = [separator.join(msh), separator.join(msa)]
    if error is not None:
        err_code = component.join([str(error.error_code), ERROR_NAMES.get(error.error_code, ""), "HL70357"])
        severity = "E"
        location = error.location.replace("^", component)
        segments.append(separator.join(["ERR", "", location, err_code, severity, "", "", "", text]))
    return "\r".join(segments) + "\r"


def _before_25(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) < (2, 5)
    except ValueError:
        return False
