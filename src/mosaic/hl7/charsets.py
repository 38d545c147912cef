"""Which text encoding a message uses: MSH-18 (HL7 Table 0211), read from the raw bytes before decoding.

A message states its character set in MSH-18; the first repetition is the default one, further ones are
alternates switched to by ISO 2022 escape sequences (Japanese messages send ``~ISO IR87``). Without MSH-18 the
receiver's configured default applies (``hl7.default_charset``).
"""

from __future__ import annotations

CODECS: dict[str, str] = {
    "ASCII": "ascii", "ISO IR6": "ascii",
    "8859/1": "latin-1", "ISO IR100": "latin-1",
    "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4", "8859/5": "iso8859-5",
    "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "ISO IR87": "iso2022_jp_2", "ISO IR159": "iso2022_jp_2", "ISO IR14": "iso2022_jp_2",
    "GB 18030": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}
"""HL7 Table 0211 names → Python codecs. JIS X 0208 (IR 87), JIS X 0212 (IR 159) and JIS X 0201 (IR 14) arrive
as ISO 2022 escape sequences, which ``iso2022_jp_2`` decodes together with the ASCII around them."""


class CharsetError(ValueError):
    """MSH-18 names a character set Mosaic does not decode, or the bytes are not in it."""


def header_fields(raw: bytes) -> list[bytes]:
    """The fields of the MSH segment (``[b"MSH", b"^~\\\\&", MSH-3, …]``: index n-1 is MSH-n), from raw bytes.

    MSH up to MSH-18 is ASCII in every character set of Table 0211 that Mosaic decodes (ISO 2022 escapes appear
    only in later fields), so it can be read before the encoding is known."""
    segment = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not segment.startswith(b"MSH") or len(segment) < 8:
        raise CharsetError("the message does not start with an MSH segment")
    separator = segment[3:4]
    fields = segment.split(separator)
    return [b"MSH", *fields[1:]]


def codec_for(raw: bytes, default: str) -> tuple[str, str]:
    """(the character set named, its Python codec) for a message: MSH-18's repetitions (any ISO 2022 Japanese
    one makes the whole message ISO 2022), else ``default``."""
    fields = header_fields(raw)
    declared = fields[17].decode("ascii", "replace") if len(fields) > 17 else ""
    encoding_characters = fields[1].decode("ascii", "replace") if len(fields) > 1 else "^~\\&"
    repetition = encoding_characters[1] if len(encoding_characters) > 1 else "~"
    names = [name.strip().upper() for name in declared.split(repetition)]
    if not any(names):
        name = default.strip().upper()
        return name, CODECS[name]
    for name in names:
        if name and name not in CODECS:
            raise CharsetError(f"MSH-18 character set {name!r} is not one Mosaic decodes "
                               f"({', '.join(sorted(CODECS))})")
    japanese = [name for name in names if CODECS.get(name) == "iso2022_jp_2"]
    name = japanese[0] if japanese else next(name for name in names if name)
    return name, CODECS[name]


def decode(raw: bytes, default: str) -> tuple[str, str]:
    """(the message as text, the codec it was decoded with); raises :class:`CharsetError`."""
    name, codec = codec_for(raw, default)
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError as exc:
        raise CharsetError(f"the message is not valid {name} (MSH-18): byte {exc.start}") from exc
