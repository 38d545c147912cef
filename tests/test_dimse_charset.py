"""Specific Character Sets: names stored in Latin-1, UTF-8, GB18030, ISO 2022 (Japanese, Korean) and other
single-byte sets are found by C-FIND queries sent in the same and in another character set, and the names
come back as the same text.

The objects are pydicom's bundled character set examples (from the DICOM standard, PS3.5 annexes H, I, J),
stored with storescu; queries are sent with a pynetdicom SCU so their values can be Unicode in any
character set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset

from mosaic.app import Mosaic
from tests.dimse_support import peer_args, pynetdicom_find, run_tool, start_node

pytestmark = pytest.mark.dcmtk

CHARSET_FILES = ["chrArab.dcm", "chrFren.dcm", "chrGerm.dcm", "chrGreek.dcm", "chrH31.dcm", "chrH32.dcm",
                 "chrHbrw.dcm", "chrI2.dcm", "chrJapMulti.dcm", "chrKoreanMulti.dcm", "chrRuss.dcm",
                 "chrX1.dcm", "chrX2.dcm"]
"""One file per SOP instance (chrFrenMulti and chrJapMultiExplicitIR6 repeat the UIDs of chrFren and
chrJapMulti)."""

UTF8 = "ISO_IR 192"
JIS = ["", "ISO 2022 IR 87"]
KOREAN = ["", "ISO 2022 IR 149"]


@dataclass
class CharsetArchive:
    node: Mosaic
    names: dict[str, str]
    """PatientID → PatientName as stored (decoded by pydicom from the file)."""
    charsets: dict[str, object]
    """PatientID → the file's Specific Character Set."""


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str]) -> Iterator[CharsetArchive]:
    work = tmp_path_factory.mktemp("charset")
    files = [Path(path) for name in CHARSET_FILES for path in get_charset_files(name)]
    assert len(files) == len(CHARSET_FILES), "pydicom's bundled character set files are missing"
    names: dict[str, str] = {}
    charsets: dict[str, object] = {}
    for path in files:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        names[str(dataset.PatientID)] = str(dataset.PatientName)
        charsets[str(dataset.PatientID)] = dataset.SpecificCharacterSet
    node = start_node(work / "mosaic")
    try:
        result = run_tool("storescu", *peer_args(node), *files, env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        yield CharsetArchive(node, names, charsets)
    finally:
        node.stop()


def find_patients(archive: CharsetArchive, patient_name: str,
                  charset: str | list[str] | None) -> dict[str, str]:
    """PatientID → returned PatientName (decoded) for a STUDY level query on PatientName."""
    query = Dataset()
    if charset is not None:
        query.SpecificCharacterSet = charset
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = patient_name
    query.PatientID = ""
    query.StudyInstanceUID = ""
    statuses, responses = pynetdicom_find(archive.node, query)
    assert statuses[-1] == 0x0000, [hex(status) for status in statuses]
    return {str(response.PatientID): str(response.PatientName) for response in responses}


@pytest.mark.parametrize(
    ("patient_name", "charset", "expected"),
    [
        # Latin-1 (ISO_IR 100): same set, UTF-8, upper case, wildcard
        ("Buc^Jérôme", "ISO_IR 100", ["SCSFREN"]),
        ("Buc^Jérôme", UTF8, ["SCSFREN"]),
        ("BUC^JÉRÔME", "ISO_IR 100", ["SCSFREN"]),
        ("buc^j*", None, ["SCSFREN"]),
        ("äneas^rüdiger", UTF8, ["SCSGERM"]),
        # Greek (ISO_IR 126), Cyrillic (ISO_IR 144), Arabic (ISO_IR 127), Hebrew (ISO_IR 138)
        ("Διονυσιος", "ISO_IR 126", ["SCSGREEK"]),
        ("ΔΙΟΝΥΣΙΟΣ", UTF8, ["SCSGREEK"]),
        ("Люкceмбypг", "ISO_IR 144", ["SCSRUSS"]),  # noqa: RUF001 (Cyrillic with Latin c, e, y, p)
        ("Люк*", UTF8, ["SCSRUSS"]),
        ("قباني^لنزار", "ISO_IR 127", ["SCSARAB"]),
        ("قباني*", UTF8, ["SCSARAB"]),
        ("שרון^דבורה", "ISO_IR 138", ["SCSHBRW"]),
        ("שרון^דבורה", UTF8, ["SCSHBRW"]),
        # UTF-8 (ISO_IR 192) and GB18030 Chinese: whole name, one component group, in another set
        ("Wang^XiaoDong=王^小東", UTF8, ["X1EXAMPLE"]),
        ("王^小東", UTF8, ["X1EXAMPLE"]),
        ("王^小東", JIS, ["X1EXAMPLE"]),
        ("王^小东", "GB18030", ["X2EXAMPLE"]),
        ("王^小东", UTF8, ["X2EXAMPLE"]),
        ("WANG^XIAODONG", None, ["X1EXAMPLE", "X2EXAMPLE"]),
        # Japanese (ISO 2022 IR 87, with and without ISO 2022 IR 13 katakana)
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", JIS, ["H31EXAMPLE"]),
        ("山田^太郎", JIS, ["H31EXAMPLE", "H32EXAMPLE"]),
        ("やまだ^たろう", UTF8, ["2008-4", "H31EXAMPLE", "H32EXAMPLE"]),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", ["ISO 2022 IR 13", "ISO 2022 IR 87"], ["H32EXAMPLE"]),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", UTF8, ["H32EXAMPLE"]),
        ("yamada*", None, ["H31EXAMPLE"]),
        # Korean (ISO 2022 IR 149)
        ("Hong^Gildong=洪^吉洞=홍^길동", KOREAN, ["I2EXAMPLE"]),
        ("홍^길동", UTF8, ["I2EXAMPLE"]),
        ("김희중", KOREAN, ["2008-3"]),
    ],
)
def test_patient_name_is_found_in_the_same_and_in_another_character_set(
        archive: CharsetArchive, patient_name: str, charset: str | list[str] | None,
        expected: list[str]) -> None:
    found = find_patients(archive, patient_name, charset)
    assert sorted(found) == expected
    for patient_id, returned_name in found.items():
        assert returned_name == archive.names[patient_id]


def test_every_stored_name_comes_back_as_the_same_text(archive: CharsetArchive) -> None:
    found = find_patients(archive, "*", None)
    assert found == archive.names
    assert {str(charset) for charset in archive.charsets.values()} >= {"ISO_IR 100", "ISO_IR 192", str(JIS)}


def test_response_names_its_character_set(archive: CharsetArchive) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "H31EXAMPLE"
    query.PatientName = ""
    _statuses, [response] = pynetdicom_find(archive.node, query)
    assert response.SpecificCharacterSet == UTF8
    assert response.PatientName.ideographic == "山田^太郎"
    assert response.PatientName.phonetic == "やまだ^たろう"
