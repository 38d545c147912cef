"""The clients: dcmtk storescu for C-STORE, pynetdicom (in-process) for C-FIND."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from servers import HOST, SCU_AE, BenchError, Server, nodelay_env

MAX_SEND_PDU = 131072
"""storescu --max-send-pdu: the same for both servers (each also caps it at its own maximum receive PDU)."""

# the client should cost as little as possible: no pretty-printing of every identifier for the debug log
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

MODELS = {"patient": PatientRootQueryRetrieveInformationModelFind,
          "study": StudyRootQueryRetrieveInformationModelFind}


def storescu_command(server: Server, paths: list[Path], *, scan_dirs: bool) -> list[str]:
    command = ["storescu", "-aet", SCU_AE, "-aec", server.ae_title, "-R", "--max-send-pdu", str(MAX_SEND_PDU),
               "-nh", "-to", "120", "-ta", "120", "-td", "600"]
    if scan_dirs:
        command.append("+sd")
    return [*command, HOST, str(server.dicom_port), *map(str, paths)]


@dataclass
class StoreRun:
    seconds: float
    exit_codes: list[int]
    failures: int
    """Lines of storescu output reporting a failed or refused C-STORE."""


def run_storescu(server: Server, groups: list[list[Path]], log: Path, *, scan_dirs: bool = True,
                 timeout: float = 1800) -> StoreRun:
    """One storescu process (one association) per group, all at once; the wall time until the last exits."""
    logs = [log.with_suffix(f".{number}.log") for number in range(len(groups))]
    handles = [open(path, "wb") for path in logs]  # noqa: SIM115 (closed below)
    try:
        started = time.perf_counter()
        processes = [subprocess.Popen(storescu_command(server, group, scan_dirs=scan_dirs), stdout=handle,
                                      stderr=subprocess.STDOUT, env=nodelay_env())
                     for group, handle in zip(groups, handles, strict=True)]
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(1.0, timeout - (time.perf_counter() - started))))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        seconds = time.perf_counter() - started
    finally:
        for handle in handles:
            handle.close()
    failures = 0
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("E:", "F:")) or "Failed" in line or "Refused" in line:
                failures += 1
    return StoreRun(seconds, codes, failures)


class FindClient:
    """One open association to a server; :meth:`find` times one C-FIND round trip."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ae = AE(ae_title=SCU_AE)
        for model in MODELS.values():
            self.ae.add_requested_context(model)
        self.ae.acse_timeout = 60
        self.ae.dimse_timeout = 600
        self.ae.network_timeout = 600
        self.assoc: Any = None

    def __enter__(self) -> FindClient:
        self.assoc = self.ae.associate(HOST, self.server.dicom_port, ae_title=self.server.ae_title)
        if not self.assoc.is_established:
            raise BenchError(f"C-FIND association to {self.server.name} was not established")
        sock = getattr(self.assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()

    def find(self, model: str, identifier: Dataset) -> tuple[float, list[Dataset], int | None]:
        """(seconds, matches, final status) of one C-FIND; raises if the association dropped."""
        matches: list[Dataset] = []
        final: int | None = None
        started = time.perf_counter()
        for status, answer in self.assoc.send_c_find(identifier, MODELS[model]):
            if status is None or "Status" not in status:
                raise BenchError(f"C-FIND to {self.server.name}: no answer (aborted or timed out)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                matches.append(answer)
            else:
                final = code
        seconds = time.perf_counter() - started
        return seconds, matches, final

    def count_instances(self) -> int:
        """Instances in the archive: the sum of Number of Study Related Instances over all studies."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = None
        identifier.NumberOfStudyRelatedInstances = None
        _seconds, matches, status = self.find("study", identifier)
        if status != 0:
            raise BenchError(f"counting C-FIND to {self.server.name} ended with status 0x{status or 0:04X}")
        return sum(int(match.get("NumberOfStudyRelatedInstances") or 0) for match in matches)


def count_instances(server: Server) -> int:
    with FindClient(server) as client:
        return client.count_instances()
