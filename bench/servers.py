"""Start and stop the servers under test: each in its own process, data folder and free ports on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
MOSAIC_BIN = ROOT / ".venv" / "bin" / "mosaic"
ORTHANC_BIN = Path(os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc"))
ORTHANC_DICOMWEB_PLUGIN = Path(os.environ.get("ORTHANC_DICOMWEB_PLUGIN",
                                              "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"))
SCU_AE = "BENCH"


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def nodelay_env() -> dict[str, str]:
    """The environment for dcmtk tools and Orthanc: without TCP_NODELAY each C-STORE waits ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1"}


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """A server process with its own temporary data folder."""

    name = "server"
    ae_title = ""

    def __init__(self, work: Path | None = None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name.lower()}-", dir=work))
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.log_path = self.data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def auth_headers(self) -> dict[str, str]:
        """What an HTTP client sends to be let in."""
        return {}

    def environment(self) -> dict[str, str]:
        return nodelay_env()

    def ready(self) -> bool:
        return _listening(self.dicom_port)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.name} is not running")
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.environment(), cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.process.returncode} at start:\n"
                                 f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.name} did not start in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop gracefully (SIGTERM, then SIGKILL); returns the exit code."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def version(self) -> str:
        return ""

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class MosaicServer(Server):
    """Mosaic as a hospital runs it: the benchmark's SCU is a configured DICOM peer, HTTP clients use an API
    token (authentication, access policy and audit on every request)."""

    name = "Mosaic"
    ae_title = "MOSAIC"

    def __init__(self, work: Path | None = None) -> None:
        super().__init__(work)
        self.token = ""
        self.config_path = self.data_dir / "mosaic.toml"
        self.config_path.write_text(
            f'[dicom]\npeers = [{{ae_title = "{SCU_AE}", host = "{HOST}", port = {free_port()}}}]\n')

    def command(self) -> list[str]:
        return [str(MOSAIC_BIN), "serve", "--config", str(self.config_path), "--data-dir", str(self.data_dir / "data"),
                "--http-port", str(self.http_port), "--dicom-port", str(self.dicom_port), "--ae-title", self.ae_title]

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)
        if not self.token:
            result = subprocess.run([str(MOSAIC_BIN), "user", "token", "admin", "--label", "bench", "--config",
                                     str(self.config_path), "--data-dir", str(self.data_dir / "data")],
                                    capture_output=True, text=True, check=False, env=self.environment())
            if result.returncode != 0:
                raise BenchError(f"cannot issue an API token: {result.stderr or result.stdout}")
            self.token = result.stdout.strip().splitlines()[-1]

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ready(self) -> bool:
        return _listening(self.dicom_port) and _http_ok(f"http://{HOST}:{self.http_port}/healthz")

    def initialise(self) -> None:
        """Set up the archive (``mosaic init``) if no server has run on it yet: ``mosaic import`` refuses a data
        directory that is not set up."""
        if (self.data_dir / "data").exists():
            return
        result = subprocess.run([str(MOSAIC_BIN), "init", "--config", str(self.config_path), "--data-dir",
                                 str(self.data_dir / "data")], capture_output=True, text=True, check=False,
                                env=self.environment())
        if result.returncode != 0:
            raise BenchError(f"mosaic init failed: {result.stderr or result.stdout}")

    def import_command(self, folders: list[Path]) -> list[str]:
        return [str(MOSAIC_BIN), "import", "--config", str(self.config_path), "--data-dir", str(self.data_dir / "data"),
                *map(str, folders)]

    def version(self) -> str:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/healthz", timeout=5) as response:
                return str(json.load(response).get("version", ""))
        except (urllib.error.URLError, OSError, ValueError):
            return ""


class OrthancServer(Server):
    """Debian's Orthanc with its defaults, except what a private benchmark instance needs."""

    name = "Orthanc"
    ae_title = "ORTHANC"

    def __init__(self, work: Path | None = None, *, dicomweb: bool = False) -> None:
        self.dicomweb = dicomweb
        """Load Debian's DICOMweb plugin (served at /dicom-web/)."""
        super().__init__(work)
        self.config_path = self.data_dir / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def config(self) -> dict[str, Any]:
        storage = str(self.data_dir / "db")
        config: dict[str, Any] = {
            "Name": "bench-orthanc",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # the benchmark's SCU must be known for C-FIND (DicomAlwaysAllowFind is false by default)
            "DicomModalities": {"bench": [SCU_AE, HOST, free_port()]},
            "Plugins": [],
            # explicit, and the same as Orthanc 1.10's defaults
            "StorageCompression": False,
            "OverwriteInstances": False,
        }
        if self.dicomweb:
            config["Plugins"] = [str(ORTHANC_DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        return config

    def command(self) -> list[str]:
        return [str(ORTHANC_BIN), str(self.config_path)]

    def ready(self) -> bool:
        if self.dicomweb and not _http_ok(f"http://{HOST}:{self.http_port}/dicom-web/studies?limit=1"):
            return False
        return _listening(self.dicom_port) and _http_ok(f"http://{HOST}:{self.http_port}/system")

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=30) as response:
            return json.load(response)

    def version(self) -> str:
        try:
            return str(self.rest("/system").get("Version", ""))
        except (urllib.error.URLError, OSError, ValueError):
            return ""

    def instance_count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


def orthanc_available() -> bool:
    return ORTHANC_BIN.exists()


def orthanc_dicomweb_available() -> bool:
    return ORTHANC_DICOMWEB_PLUGIN.exists()


def dcmtk_available() -> bool:
    return all(shutil.which(tool) for tool in ("storescu", "echoscu"))
