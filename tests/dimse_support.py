"""Shared pieces of the DIMSE integration tests (no tests here): a running Mosaic node, dcmtk tools
run as subprocesses over loopback, a dcmtk ``storescp`` as C-MOVE destination, and pynetdicom SCUs.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import func, select

from mosaic.app import Mosaic
from mosaic.config import (
    DicomPeer,
    DicomSettings,
    DicomTlsSettings,
    HttpSettings,
    IndexSettings,
    Settings,
    StorageSettings,
)
from mosaic.index.schema import Instance, Patient, Series, Study
from tests.helpers import free_port, is_listening

LOCALHOST = "127.0.0.1"
MOSAIC_AE = "MOSAIC"
TOOL_TIMEOUT = 180
"""A deadline for a hang, not a speed limit: the suite runs on loaded 2-core machines."""


def start_node(data_dir: Path, *, peers: Sequence[DicomPeer] = (), allow_unknown_calling_aes: bool = True,
               index_url: str | None = None, storage: StorageSettings | None = None,
               tls: DicomTlsSettings | None = None, **dicom: Any) -> Mosaic:
    """A started Mosaic node on free ports (the caller stops it): SQLite and a blob folder unless
    ``index_url`` / ``storage`` say otherwise; ``dicom`` sets more DicomSettings (max_associations=2, …)."""
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        index=IndexSettings(url=index_url),  # type: ignore[call-arg]
        storage=storage or StorageSettings(),  # type: ignore[call-arg]
        http=HttpSettings(port=0),  # type: ignore[call-arg]
        dicom=DicomSettings(  # type: ignore[call-arg]
            ae_title=MOSAIC_AE, port=0, peers=list(peers), allow_unknown_calling_aes=allow_unknown_calling_aes,
            **({"tls": tls} if tls else {}), **dicom,
        ),
    )
    node = Mosaic(settings)
    node.start()
    return node


def run_tool(tool: str, *args: str | Path, env: dict[str, str], timeout: float = TOOL_TIMEOUT,
             logs: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
    """Run one dcmtk tool; the result carries its exit code and its combined output. A tool still running
    after ``timeout`` fails the test with what it printed and the tail of ``logs`` (e.g. a storescp's)."""
    command = [tool, *(str(arg) for arg in args)]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        printed = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                          for part in (exc.stdout, exc.stderr))
        tails = "".join(f"\n--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                        for log in logs if log.exists())
        raise AssertionError(f"{' '.join(command)} still running after {timeout:.0f} s; it printed:\n"
                             f"{printed or '(nothing)'}{tails}\n--- this process's threads ---\n"
                             f"{thread_stacks()}") from None


def thread_stacks() -> str:
    """Where every thread of this process is (an in-process Mosaic node's among them): what a hang waits on."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(f"# {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame)[-12:])
                     for ident, frame in sys._current_frames().items() if ident != threading.get_ident())


def peer_args(node: Mosaic, calling_ae: str | None = None) -> list[str]:
    """``-aec MOSAIC [-aet CALLING] 127.0.0.1 PORT`` for a dcmtk SCU."""
    args = ["-aec", MOSAIC_AE]
    if calling_ae:
        args += ["-aet", calling_ae]
    return [*args, LOCALHOST, str(node.dicom_port)]


def key_args(keys: dict[str, str]) -> list[str]:
    """``-k Keyword=value`` options (an empty value asks for the attribute to be returned)."""
    args: list[str] = []
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}" if value else keyword]
    return args


def findscu(node: Mosaic, keys: dict[str, str], out_dir: Path, *, env: dict[str, str], model: str = "-S",
            query_files: Iterable[Path] = ()) -> list[Dataset]:
    """C-FIND with dcmtk findscu; the responses' identifiers, in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_tool("findscu", model, "-X", "-od", out_dir, *key_args(keys), *peer_args(node), *query_files,
                      env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its preamble and File Meta Information."""
    with open(path, "rb") as stream:
        read_preamble(stream, False)
        _read_file_meta_info(stream)
        return stream.read()


def received_files(folder: Path) -> dict[str, Path]:
    """The files a dcmtk SCP wrote into ``folder``, by SOP Instance UID."""
    files: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.is_file():
            files[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return files


class StoreSCP:
    """dcmtk ``storescp`` on a free loopback port: a C-MOVE destination that writes what it receives
    bit-preserving (``+B``) into a folder, accepting every transfer syntax it knows (``+xa``)."""

    def __init__(self, folder: Path, env: dict[str, str], ae_title: str = "STORESCP",
                 options: Sequence[str] = ()) -> None:
        self.folder = folder
        self.options = list(options)
        """More storescp options (e.g. ``+tls key cert +cf ca``)."""
        self.env = env
        self.ae_title = ae_title
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder.parent / f"{folder.name}-storescp.log"

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    ["storescp", "-v", "+B", "+xa", *self.options, "-aet", self.ae_title, "-od", str(self.folder),
                     str(self.port)],
                    env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                if is_listening(LOCALHOST, self.port):
                    time.sleep(0.05)
                    if self.process.poll() is None:  # still running: it, not something else, holds the port
                        return self
                    break
                time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"storescp did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def peer(self) -> DicomPeer:
        return DicomPeer(ae_title=self.ae_title, host=LOCALHOST, port=self.port)  # type: ignore[call-arg]

    def received(self) -> dict[str, Path]:
        return received_files(self.folder)


def pynetdicom_find(node: Mosaic, identifier: Dataset, *, calling_ae: str = "PYNETDICOM",
                    model: str = "STUDY") -> tuple[list[int], list[Dataset]]:
    """C-FIND with a pynetdicom SCU: every response status, and the pending responses' identifiers."""
    sop_class = (StudyRootQueryRetrieveInformationModelFind if model == "STUDY"
                 else PatientRootQueryRetrieveInformationModelFind)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(sop_class)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established, "association with Mosaic refused"
    statuses: list[int] = []
    identifiers: list[Dataset] = []
    try:
        for status, response in association.send_c_find(identifier, sop_class):
            assert status, "no C-FIND response (aborted or timed out)"
            statuses.append(int(status.Status))
            if response is not None and int(status.Status) in (0xFF00, 0xFF01):
                identifiers.append(response)
    finally:
        association.release()
    return statuses, identifiers


def counts(node: Mosaic) -> dict[str, int]:
    """Rows at each level of the index."""
    with node.database.session() as session:
        return {model.__name__: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for model in (Patient, Study, Series, Instance)}


def blob_files(node: Mosaic) -> list[Path]:
    """Every file in the blob folder, the spool of incoming data sets (.incoming) included."""
    return [path for path in node.settings.blob_path.rglob("*") if path.is_file()]


def identifier(**keys: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


def c_get_study(node: Mosaic, study_uid: str, *, calling_ae: str) -> tuple[list[Dataset], list[int]]:
    """C-GET a study over pynetdicom as ``calling_ae`` (CT Image Storage, Explicit VR LE): the data sets received
    and the statuses of the C-GET responses."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    association = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.settings.dicom.ae_title,
                               ext_neg=[build_role(CTImageStorage, scp_role=True)],
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert association.is_established
    request = Dataset()
    request.QueryRetrieveLevel = "STUDY"
    request.StudyInstanceUID = study_uid
    try:
        statuses = [int(status.Status) for status, _ in
                    association.send_c_get(request, StudyRootQueryRetrieveInformationModelGet) if status]
    finally:
        association.release()
    return received, statuses
