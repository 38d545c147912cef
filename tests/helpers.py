"""Helpers shared by the test suite: free ports and real servers started for the test run.

The fixtures in ``conftest.py`` wrap these; other tests (and benchmarks) may import them directly::

    from tests.helpers import free_port
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"

DCMTK_TOOLS = ("storescu", "findscu", "movescu", "getscu", "echoscu", "storescp")


class ServerError(RuntimeError):
    """A server needed by the tests is missing or did not start."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``ready()`` until it is true; fail early when ``process`` exits, quoting ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise ServerError(f"{what}: process exited with {process.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not ready after {timeout:.0f} s{_tail(log)}")
        time.sleep(interval)


def is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log) + " ---\n" + "\n".join(text)


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


# --------------------------------------------------------------------------------------------- PostgreSQL


def find_postgres_bin(name: str) -> Path | None:
    """``initdb``/``pg_ctl``/… from Debian's /usr/lib/postgresql/<version>/bin (newest first), else PATH."""

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(part) for part in match.group(1).split(".")) if match else ()

    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version, reverse=True):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which(name)
    return Path(found) if found else None


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, trust auth, socket and data in a temp dir.

    PostgreSQL refuses to run as root: when the tests run as root, the cluster belongs to the
    ``postgres`` system user and ``initdb``/``pg_ctl`` run through ``runuser -u postgres --``.
    """

    user = "mosaic"

    def __init__(self) -> None:
        initdb = find_postgres_bin("initdb")
        pg_ctl = find_postgres_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise ServerError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH; "
                "install them with scripts/install-system-deps.sh (run by `make test`)"
            )
        self.initdb: Path = initdb
        self.pg_ctl: Path = pg_ctl
        self.run_as: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerError(
                    "running as root, and PostgreSQL refuses root: a `postgres` system user is needed "
                    "(the Debian postgresql package creates it)"
                ) from exc
            runuser = shutil.which("runuser")
            if runuser is None:
                raise ServerError("running as root and `runuser` is missing: cannot start PostgreSQL")
            self.run_as = [runuser, "-u", "postgres", "--"]
        self.host = LOCALHOST
        self.port = 0
        self.base = Path(tempfile.mkdtemp(prefix="mosaic-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.started = False

    def _run(self, *args: str | Path, timeout: float = 120.0) -> None:
        command = [*self.run_as, *(str(arg) for arg in args)]
        result = subprocess.run(
            command, cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ServerError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"{_tail(self.log)}"
            )

    def start(self) -> None:
        if self.owner is not None:
            os.chown(self.base, self.owner.pw_uid, self.owner.pw_gid)
        self.base.chmod(0o700)
        self._run(
            self.initdb, "-D", self.data, "-U", self.user, "--auth=trust", "--encoding=UTF8", "--no-locale",
            "--no-sync",
        )
        options = " ".join(
            [
                f"-c listen_addresses={self.host}",
                f"-c unix_socket_directories={self.base}",
                "-c max_connections=300",
                "-c fsync=off",  # a test cluster: durability is not under test here
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._options = options
        last_error: ServerError | None = None
        for _attempt in range(3):  # the port may be taken between free_port() and bind()
            self.port = free_port(self.host)
            try:
                self._run(
                    self.pg_ctl, "start", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                    "-o", f"{options} -p {self.port}",
                )
            except ServerError as exc:
                last_error = exc
                continue
            self.started = True
            return
        assert last_error is not None
        raise last_error

    def halt(self) -> None:
        """Stop the server under its clients (an outage: their connections are cut), keeping its data for
        :meth:`resume`. A fast shutdown, not an immediate one: this cluster runs without fsync and synchronous
        commit, so an immediate stop would also lose commits already acknowledged, which is not the outage under
        test."""
        self._run(self.pg_ctl, "stop", "-D", self.data, "-m", "fast", "-w", "-t", "60")
        self.started = False

    def resume(self) -> None:
        """Start a halted server again, on the same port."""
        self._run(self.pg_ctl, "start", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                  "-o", f"{self._options} -p {self.port}")
        self.started = True

    def stop(self) -> None:
        try:
            if self.started:
                self._run(self.pg_ctl, "stop", "-D", self.data, "-m", "immediate", "-w", "-t", "60")
                self.started = False
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def _execute(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as connection:
            connection.execute(statement.encode())

    def create_database(self, name: str | None = None) -> str:
        """Create a new, empty database and return its name."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"unsafe database name {name!r}")
        self._execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"unsafe database name {name!r}")
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------- S3 (moto)


def moto_server_command() -> list[str]:
    """``moto_server`` from the running interpreter's environment (installed by ``moto[server]``)."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    return [sys.executable, "-m", "moto.server"]


class MotoServer:
    """A local S3-compatible endpoint: ``moto_server -H 127.0.0.1 -p PORT``."""

    access_key_id = "test"
    secret_access_key = "test"
    region = "us-east-1"

    def __init__(self) -> None:
        self.host = LOCALHOST
        self.port = 0
        self.base = Path(tempfile.mkdtemp(prefix="mosaic-s3-"))
        self.log = self.base / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1) as response:
                return int(response.status) < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> None:
        last_error: ServerError | None = None
        for _attempt in range(3):
            self.port = free_port(self.host)
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [*moto_server_command(), "-H", self.host, "-p", str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base,
                )
            try:
                wait_until(self._answers, timeout=timeout, what="moto_server", process=self.process, log=self.log)
            except ServerError as exc:
                last_error = exc
                _stop_process(self.process)
                continue
            return
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        try:
            if self.process is not None:
                _stop_process(self.process)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a new, empty bucket and return its name."""
        name = name or new_bucket_name()
        self.client().create_bucket(Bucket=name)
        return name


def new_bucket_name() -> str:
    """A fresh, valid S3 bucket name."""
    return f"mosaic-test-{uuid.uuid4().hex[:20]}"


# --------------------------------------------------------------------------------------------- dcmtk


def dcmtk_env() -> dict[str, str]:
    """The environment to run dcmtk tools with.

    Debian's dcmtk leaves Nagle's algorithm on unless ``TCP_NODELAY`` is set, and every C-STORE
    then waits ~40 ms for a delayed ACK.
    """
    missing = [tool for tool in DCMTK_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ServerError(
            f"dcmtk tools missing: {', '.join(missing)}; "
            "install them with scripts/install-system-deps.sh (run by `make test`)"
        )
    return {**os.environ, "TCP_NODELAY": "1"}
