"""The fold of a person name for fuzzy matching (QIDO-RS ``fuzzymatching=true``).

PS3.4 C.2.2.2.1.1 leaves fuzzy semantic matching of person names to the implementation. Mosaic's is:
case and accents do not matter, so a user who types ``muller`` on a keyboard without umlauts finds
``Müller^Hans``, and ``MULLER`` finds ``Muller``. The fold is computed at ingest into the ``…Fuzzy``
twin columns, and of the query value at search time, the same way on SQLite and PostgreSQL (no
``unaccent`` extension, no database collation is relied on).
"""

from __future__ import annotations

import unicodedata

_LETTERS = str.maketrans({
    # Letters NFKD leaves whole (they are not a base letter plus a combining mark), as a German, Danish,
    # Norwegian, Polish, Croatian or Icelandic name is commonly written without them.
    "ß": "ss", "ẞ": "SS", "Ø": "O", "ø": "o", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ł": "L", "ł": "l",
    "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Þ": "TH", "þ": "th", "Ħ": "H", "ħ": "h", "\u0131": "i", "Ŧ": "T",
    "ŧ": "t", "Ŋ": "N", "ŋ": "n",
})


def fold_name(text: str) -> str:
    """``text`` without case or accents: compatibility decomposition (NFKD), combining marks dropped, the
    letters above spelt out, upper case. Component (``^``), group (``=``) and wildcard (``*``, ``?``)
    characters are kept, so a folded pattern matches a folded name as the original would. Marks are dropped
    only from Latin, Greek and Cyrillic letters: Japanese kana keep their (semi-)voiced marks (ガ is not カ),
    ideographic and phonetic groups change only where NFKD unifies full- and half-width forms."""
    kept: list[str] = []
    base = ""
    for char in unicodedata.normalize("NFKD", text.translate(_LETTERS)):
        if not unicodedata.combining(char):
            base = char
        elif _alphabetic(base):
            continue
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept)).upper()


def _alphabetic(char: str) -> bool:
    """A Latin, Greek or Cyrillic character (the scripts whose accents a keyboard may not have)."""
    return bool(char) and (ord(char) < 0x0530 or 0x1E00 <= ord(char) <= 0x1FFF)
