"""Round trip of pydicom's bundled test files through a running Mosaic node with real dcmtk tools.

Every readable storage object is sent with storescu (one association, a presentation context per
SOP class and transfer syntax), found with findscu at IMAGE level, and retrieved with getscu and
with movescu into a storescp. The data set bytes must come back exactly as they were sent.

"As sent" is what storescu put on the wire, captured by sending the same files to a bit-preserving
storescp. For most files that is the data set of the original file byte for byte; for about a fifth of
them dcmtk re-encodes while sending (it drops trailing padding (FFFC,FFFC), recomputes group lengths,
writes sequences and items with explicit lengths, re-deflates a deflated data set), so there the bytes
after the original file's meta information are not what travelled, and the comparison is with what did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

from mosaic.app import Mosaic
from mosaic.index.query import Scope
from mosaic.services.retrieve import RetrieveService
from tests.dimse_support import (
    StoreSCP,
    counts,
    dataset_bytes,
    findscu,
    peer_args,
    received_files,
    run_tool,
    start_node,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),  # pydicom reading the corpus's deliberately odd files
]

NOT_ROUND_TRIPPED: dict[str, str] = {
    "SC_rgb_jpeg.dcm": "dcmtk cannot parse it (element (0008,0008) has the non-standard VR '  ' and a bogus "
                       "element follows): storescu refuses to send it",
}
"""Bundled files that legitimately cannot round trip through dcmtk, with the reason."""

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
GETSCU_CONVERTS = {
    IMPLICIT_VR_LITTLE_ENDIAN: "getscu (dcmtk 3.6.7) proposes only Explicit VR Little Endian for its storage "
                               "contexts even with +xi: an Implicit VR object is sent converted to Explicit "
                               "VR, so C-GET checks its elements (C-MOVE checks its bytes)",
}
"""Transfer syntaxes getscu cannot receive as stored, and why: those instances arrive converted."""

GETSCU_PREFERENCE = {
    IMPLICIT_VR_LITTLE_ENDIAN: "+xi",
    "1.2.840.10008.1.2.1": "+xe",
    "1.2.840.10008.1.2.1.99": "+xd",
    "1.2.840.10008.1.2.2": "+xb",
    "1.2.840.10008.1.2.4.50": "+xy",
    "1.2.840.10008.1.2.4.51": "+xx",
    "1.2.840.10008.1.2.4.70": "+xs",
    "1.2.840.10008.1.2.4.80": "+xt",
    "1.2.840.10008.1.2.4.81": "+xu",
    "1.2.840.10008.1.2.4.90": "+xv",
    "1.2.840.10008.1.2.4.91": "+xw",
    "1.2.840.10008.1.2.5": "+xr",
}
"""getscu accepts one compressed transfer syntax per association: its option for each syntax."""


TEST_FILES = Path(DATA_ROOT) / "test_files"


def label(path: Path) -> str:
    """A bundled file's name relative to pydicom's test_files folder (some names repeat in subfolders)."""
    return str(path.relative_to(TEST_FILES)) if path.is_relative_to(TEST_FILES) else str(path)


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class Corpus:
    sent: list[CorpusFile]
    """One file per SOP Instance UID, sent to Mosaic."""
    refused: list[CorpusFile]
    """Files Mosaic must refuse (no Study or Series Instance UID: they cannot be filed)."""
    excluded: dict[str, str]
    """File (see :func:`label`) → why it is not part of the round trip."""


def select_corpus() -> Corpus:
    """pydicom's bundled data sets (on disk only), one per SOP Instance UID, with every exclusion named."""
    by_uid: dict[str, CorpusFile] = {}
    refused: list[CorpusFile] = []
    excluded: dict[str, str] = {}
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if not path.is_file():
            continue
        name = label(path)
        if not is_dicom(path):
            excluded[name] = "not a Part 10 file (no DICM prefix)"
            continue
        if name in NOT_ROUND_TRIPPED:
            excluded[name] = NOT_ROUND_TRIPPED[name]
            continue
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            excluded[name] = f"pydicom cannot read it ({type(exc).__name__})"
            continue
        if "SOPClassUID" not in dataset or "SOPInstanceUID" not in dataset:
            excluded[name] = "no SOP Class UID / SOP Instance UID: not a storage object"
            continue
        item = CorpusFile(path, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID),
                          str(dataset.file_meta.TransferSyntaxUID))
        if not dataset.get("StudyInstanceUID") or not dataset.get("SeriesInstanceUID"):
            refused.append(item)
            excluded[name] = "no Study/Series Instance UID: Mosaic refuses it (checked), it cannot be filed"
            continue
        if item.sop_instance_uid in by_uid:
            excluded[name] = (f"same SOP Instance UID as {label(by_uid[item.sop_instance_uid].path)} "
                                   "(one object per UID; a different second one is refused as a duplicate)")
            continue
        by_uid[item.sop_instance_uid] = item
    return Corpus(list(by_uid.values()), refused, excluded)


def storescu_config(files: list[CorpusFile], folder: Path) -> list[str]:
    """storescu options for a config file offering each file's own SOP class and transfer syntax."""
    syntaxes = sorted({item.transfer_syntax_uid for item in files})
    pairs = sorted({(item.sop_class_uid, item.transfer_syntax_uid) for item in files})
    assert len(pairs) <= 128, "more presentation contexts than one association can carry"
    lines = ["[[TransferSyntaxes]]"]
    for number, syntax in enumerate(syntaxes):
        lines += [f"[Syntax{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Corpus]"]
    for number, (sop_class, syntax) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{number} = {sop_class}\\Syntax{syntaxes.index(syntax)}")
    lines += ["[[Profiles]]", "[Corpus]", "PresentationContexts = Corpus"]
    config = folder / "storescu-corpus.cfg"
    config.write_text("\n".join(lines) + "\n")
    return ["-xf", str(config), "Corpus"]


@dataclass
class StoredCorpus:
    node: Mosaic
    corpus: Corpus
    as_sent_files: dict[str, Path]
    """SOP Instance UID → the file a bit-preserving storescp wrote from what storescu sent."""
    as_sent: dict[str, bytes]
    """SOP Instance UID → data set bytes as storescu sent them."""
    destination: StoreSCP
    work: Path


@pytest.fixture(scope="module")
def stored_corpus(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str]) -> Iterator[StoredCorpus]:
    work = tmp_path_factory.mktemp("corpus")
    corpus = select_corpus()
    files = corpus.sent + corpus.refused
    options = storescu_config(files, work)
    reference = StoreSCP(work / "as-sent", dcmtk, ae_title="REFERENCE").start()
    try:
        result = run_tool("storescu", "-nh", *options, "-aec", reference.ae_title, "127.0.0.1",
                          str(reference.port), *(item.path for item in corpus.sent), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        reference.stop()
    as_sent_files = reference.received()
    as_sent = {uid: dataset_bytes(path) for uid, path in as_sent_files.items()}
    destination = StoreSCP(work / "moved", dcmtk, ae_title="DESTINATION").start()
    node = start_node(work / "mosaic", peers=[destination.peer()])
    try:
        result = run_tool("storescu", "-nh", *options, *peer_args(node), *(item.path for item in files),
                          env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        yield StoredCorpus(node, corpus, as_sent_files, as_sent, destination, work)
    finally:
        node.stop()
        destination.stop()


def test_bundled_corpus_leaves_out_only_files_with_a_stated_reason(stored_corpus: StoredCorpus) -> None:
    corpus = stored_corpus.corpus
    assert len(corpus.sent) >= 100, "pydicom's bundled test files should give at least 100 storage objects"
    assert all(reason for reason in corpus.excluded.values())
    assert set(stored_corpus.as_sent) == {item.sop_instance_uid for item in corpus.sent}, \
        "storescu did not send every selected file"


def test_every_corpus_instance_is_stored_with_the_bytes_sent(stored_corpus: StoredCorpus) -> None:
    node, corpus = stored_corpus.node, stored_corpus.corpus
    assert counts(node)["Instance"] == len(corpus.sent)
    stored = RetrieveService(node.database, node.blobs).instances_by_uid(
        [item.sop_instance_uid for item in corpus.sent + corpus.refused], scope=Scope.everything())
    refused = {item.sop_instance_uid for item in corpus.refused}
    assert not refused & set(stored), "an object without study/series was indexed"
    for item in corpus.sent:
        instance = stored[item.sop_instance_uid]
        assert instance.SOPClassUID == item.sop_class_uid
        assert instance.TransferSyntaxUID == item.transfer_syntax_uid
        with node.blobs.open(instance.blob_key) as stream:
            stream.seek(instance.dataset_offset)
            assert stream.read() == stored_corpus.as_sent[item.sop_instance_uid], label(item.path)


def _query_file(folder: Path, item: CorpusFile) -> Path:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = item.sop_instance_uid
    query.SOPClassUID = ""
    query.StudyInstanceUID = ""
    query.SeriesInstanceUID = ""
    path = folder / f"{item.sop_instance_uid}.query.dcm"
    pydicom.dcmwrite(path, query, implicit_vr=False, little_endian=True)
    return path


def test_every_corpus_instance_is_found_by_cfind_at_image_level(stored_corpus: StoredCorpus,
                                                                dcmtk: dict[str, str]) -> None:
    queries = stored_corpus.work / "queries"
    queries.mkdir()
    items = stored_corpus.corpus.sent + stored_corpus.corpus.refused
    responses = findscu(stored_corpus.node, {}, stored_corpus.work / "found", env=dcmtk,
                        query_files=[_query_file(queries, item) for item in items])
    found = [(str(response.SOPInstanceUID), str(response.SOPClassUID)) for response in responses]
    expected = [(item.sop_instance_uid, item.sop_class_uid) for item in stored_corpus.corpus.sent]
    assert sorted(found) == sorted(expected)
    for response in responses:
        assert response.QueryRetrieveLevel == "IMAGE"
        assert response.StudyInstanceUID and response.SeriesInstanceUID


def test_cget_returns_every_corpus_instance_byte_identical(stored_corpus: StoredCorpus,
                                                           dcmtk: dict[str, str]) -> None:
    by_syntax: dict[str, list[CorpusFile]] = {}
    for item in stored_corpus.corpus.sent:
        by_syntax.setdefault(item.transfer_syntax_uid, []).append(item)
    assert set(by_syntax) <= set(GETSCU_PREFERENCE), "a transfer syntax getscu cannot be asked to accept"
    received: dict[str, Path] = {}
    for syntax, items in by_syntax.items():
        folder = stored_corpus.work / f"get-{syntax}"
        folder.mkdir()
        uids = "\\".join(item.sop_instance_uid for item in items)
        result = run_tool("getscu", "-S", "+B", GETSCU_PREFERENCE[syntax], "-od", folder,
                          "-k", "QueryRetrieveLevel=IMAGE", "-k", f"SOPInstanceUID={uids}",
                          *peer_args(stored_corpus.node), env=dcmtk)
        assert result.returncode == 0, f"{syntax}: {result.stdout}{result.stderr}"
        received.update(received_files(folder))
    converted = {item.sop_instance_uid for item in stored_corpus.corpus.sent
                 if item.transfer_syntax_uid in GETSCU_CONVERTS}
    _assert_byte_identical(stored_corpus, received, converted=converted)


def test_cmove_delivers_every_corpus_instance_byte_identical(stored_corpus: StoredCorpus,
                                                             dcmtk: dict[str, str]) -> None:
    uids = "\\".join(item.sop_instance_uid for item in stored_corpus.corpus.sent)
    result = run_tool("movescu", "-v", "-S", "-aem", stored_corpus.destination.ae_title,
                      "-k", "QueryRetrieveLevel=IMAGE", "-k", f"SOPInstanceUID={uids}",
                      *peer_args(stored_corpus.node), env=dcmtk, logs=[stored_corpus.destination.log])
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_byte_identical(stored_corpus, stored_corpus.destination.received())


def _assert_byte_identical(stored_corpus: StoredCorpus, received: dict[str, Path],
                           converted: set[str] | frozenset[str] = frozenset()) -> None:
    """Every instance came back; its data set bytes are the ones sent (``converted``: its elements are)."""
    names = {item.sop_instance_uid: label(item.path) for item in stored_corpus.corpus.sent}
    missing = sorted(names[uid] for uid in set(names) - set(received))
    assert not missing, f"not retrieved: {missing}"
    assert set(received) == set(names)
    different = sorted(names[uid] for uid, path in received.items()
                       if uid not in converted and dataset_bytes(path) != stored_corpus.as_sent[uid])
    assert not different, f"data set bytes differ from what was sent: {different}"
    for uid in converted:
        original = pydicom.dcmread(stored_corpus.as_sent_files[uid])
        copy = pydicom.dcmread(received[uid])
        assert list(copy.keys()) == list(original.keys()), names[uid]
        assert all(copy[element.tag].value == element.value for element in original), names[uid]
