"""DICOMweb, Mosaic vs Orthanc (with Debian's DICOMweb plugin): STOW-RS ingest, QIDO-RS latency, WADO-RS series
metadata and single frames.

One HTTP client library for both servers (``requests``, one keep-alive ``Session`` per client thread). Every
GET is timed from sending the request to the last byte of the body as it came over the wire (``raw.read`` with
``decode_content=False``): a gzip answer is decompressed and checked only after the clock stops, so the
client's decompression is not counted for either server. Query strings are written literally (``*``, ``-``,
``,`` not percent-encoded) because Orthanc 1.10's plugin does not decode percent-encoded values.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
import urllib3

import dimse
import synth
from servers import HOST, ROOT, BenchError, MosaicServer, OrthancServer, Server

Log = Callable[[str], None]
Summarise = Callable[[Path], list[str]]
"""Turns a py-spy raw profile into report lines (run.summarise_profile)."""

PER_REQUEST = 20
"""Instances per STOW-RS request (the same for both servers)."""
METADATA_SERIES = 1000
"""Instances in the series whose /metadata is timed."""
FRAME_INSTANCES = 30
"""Distinct 512x512 CT instances whose frame 1 is timed (for each Accept-Encoding)."""
OHIF_FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"
QIDO_HEADERS = {"Accept": DICOM_JSON, "Accept-Encoding": "gzip"}
"""What a browser sends: a gzip answer is allowed (each server decides whether to compress)."""
SERVER_NAMES = ("Mosaic", "Orthanc")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def py_spy_record(pid: int, raw: Path, action: Callable[[], None], rate: int = 250) -> bool:
    """Run ``action`` while py-spy samples process ``pid`` into ``raw`` (py-spy's raw format)."""
    py_spy = ROOT / ".venv" / "bin" / "py-spy"
    command = str(py_spy) if py_spy.exists() else shutil.which("py-spy")
    if not command:
        return False
    raw.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([command, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        action()
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    return True


def root_url(server: Server) -> str:
    return f"http://{HOST}:{server.http_port}/dicom-web"


def start_pair(work: Path) -> tuple[MosaicServer, OrthancServer]:
    mosaic, orthanc = MosaicServer(work), OrthancServer(work, dicomweb=True)
    try:
        mosaic.start()
        orthanc.start()
    except BaseException:
        mosaic.cleanup()
        orthanc.cleanup()
        raise
    return mosaic, orthanc


# --- data ----------------------------------------------------------------------------------------------------


def ensure_metadata_series(cache: Path, count: int = METADATA_SERIES) -> Path:
    """One CT series of ``count`` small instances (16x16 pixels) with the bench's full CT header."""
    folder = cache / f"metadata-series-{count}"
    meta: dict[str, object] = {"version": synth.VERSION, "count": count}
    marker = folder / "complete.json"
    try:
        if json.loads(marker.read_text()) == meta:
            return folder
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    study = synth.StudyPlan(number=0, patient=synth._patient(1, "metadata"), uid=synth.uid("metadata", "study"),
                            accession="W00000001", study_date="20240502", study_time="101500",
                            description="CT THIN SLICE CHEST", first_index=0)
    series = synth.SeriesPlan(uid=synth.uid("metadata", "series"), number=3, modality="CT",
                              description="AXIAL 0.625MM LUNG", body_part="CHEST", count=count)
    study.series.append(series)
    layout = synth.Layout("metadata", [study])
    pixels = (bytes(range(256)) * 2)[:16 * 16 * 2]
    for plan, ds in synth._headers(layout, 0, count, rows=16, columns=16):
        ds.PixelData = pixels
        ds.save_as(folder / f"m{plan.index:05d}.dcm", enforce_file_format=True)
    marker.write_text(json.dumps(meta))
    return folder


def dicom_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix == ".dcm")


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def instance_ref(path: Path) -> InstanceRef:
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    return InstanceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


# --- HTTP ------------------------------------------------------------------------------------------------------


class MultipartBody:
    """A multipart/related body of DICOM files read from disk as it is sent (its length is known up front, so
    the request has a Content-Length and no chunked encoding)."""

    def __init__(self, paths: list[Path]) -> None:
        self.boundary = f"bench-{uuid.uuid4().hex}"
        self._pieces: list[bytes | Path] = []
        for path in paths:
            self._pieces += [f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path, b"\r\n"]
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self._length = sum(len(piece) if isinstance(piece, bytes) else piece.stat().st_size
                           for piece in self._pieces)
        self._position = 0
        self._file: Any = None

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else 1 << 20
        while self._position < len(self._pieces):
            piece = self._pieces[self._position]
            if isinstance(piece, bytes):
                self._position += 1
                return piece
            if self._file is None:
                self._file = open(piece, "rb")  # noqa: SIM115 (closed when exhausted)
            data = self._file.read(size)
            if data:
                return bytes(data)
            self._file.close()
            self._file = None
            self._position += 1
        return b""


@dataclass
class Fetched:
    seconds: float
    status: int
    headers: dict[str, str]
    raw: bytes
    """The body as it came over the wire (possibly compressed)."""

    @property
    def body(self) -> bytes:
        encoding = self.headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            return gzip.decompress(self.raw)
        if encoding == "deflate":
            try:
                return zlib.decompress(self.raw)
            except zlib.error:
                return zlib.decompress(self.raw, -zlib.MAX_WBITS)
        return self.raw

    def json(self) -> Any:
        return json.loads(self.body) if self.raw else []


class Client:
    """One keep-alive HTTP session to one server's DICOMweb root."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.root = root_url(server)
        self.session = requests.Session()
        self.session.headers.update(server.auth_headers())

    def get(self, path: str, headers: dict[str, str]) -> Fetched:
        started = time.perf_counter()
        try:
            response = self.session.get(self.root + path, headers=headers, stream=True, timeout=600)
            raw = response.raw.read(decode_content=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise BenchError(f"GET {path} from {self.server.name}: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        response.close()
        return Fetched(seconds, response.status_code, {key.lower(): value for key, value in response.headers.items()},
                       raw)

    def stow(self, paths: list[Path]) -> tuple[int, int, int]:
        """(HTTP status, stored, failed) of one STOW-RS request."""
        body = MultipartBody(paths)
        response = self.session.post(self.root + "/studies", data=body, timeout=600,
                                     headers={"Content-Type": body.content_type, "Accept": DICOM_JSON})
        stored = failed = 0
        try:
            answer = response.json()
            stored = len(answer.get("00081199", {}).get("Value", []) or [])
            failed = len(answer.get("00081198", {}).get("Value", []) or [])
        except ValueError:
            pass
        return response.status_code, stored, failed

    def close(self) -> None:
        self.session.close()


# --- STOW-RS ---------------------------------------------------------------------------------------------------


@dataclass
class StowResult:
    server: str
    clients: int
    instances: int
    requests: int
    seconds: float
    stored: int
    """Instances in the archive afterwards (C-FIND count), minus the warm-up instances."""
    cpu_seconds: float
    http_errors: int
    failed_parts: int
    crashed: bool = False

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def batches(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[start:start + size] for start in range(0, len(paths), size)]


def send_batches(sessions: list[Client], work: list[list[Path]]) -> tuple[float, list[str], int]:
    """STOW-RS every batch, one thread per session taking the next batch; (seconds, errors, failed parts)."""
    work_queue: queue.Queue[list[Path]] = queue.Queue()
    for batch in work:
        work_queue.put(batch)
    errors: list[str] = []
    failed = [0]
    lock = threading.Lock()

    def client(session: Client) -> None:
        while True:
            try:
                batch = work_queue.get_nowait()
            except queue.Empty:
                return
            try:
                status, _stored, failed_parts = session.stow(batch)
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                failed[0] += failed_parts
                if status != 200:
                    errors.append(f"HTTP {status}")

    threads = [threading.Thread(target=client, args=(session,)) for session in sessions]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, errors, failed[0]


def profile_stow(files: list[Path], warmup: list[Path], clients: int, per_request: int, work: Path, raw: Path,
                 summarise: Summarise, log: Log) -> list[str]:
    """py-spy on a fresh Mosaic during one extra STOW-RS run: its top frames."""
    server = MosaicServer(work)
    sessions: list[Client] = []
    try:
        server.start()
        sessions = [Client(server) for _ in range(clients)]
        for number, session in enumerate(sessions):
            session.stow([warmup[number]])
        timing: list[float] = []

        def action() -> None:
            timing.append(send_batches(sessions, batches(files, per_request))[0])

        if not py_spy_record(server.pid, raw, action):
            return ["py-spy is not installed: no profile"]
        log(f"  profiled STOW-RS with {clients} client(s): {len(files) / timing[0]:.0f} instances/s under py-spy")
    finally:
        for session in sessions:
            session.close()
        server.cleanup()
    return [f"STOW-RS, {clients} client(s), {len(files)} instances ({len(files) / timing[0]:.0f} instances/s "
            "while sampled)", *summarise(raw)]


def bench_stow(files: list[Path], warmup: list[Path], server_type: type[Server], clients: int, per_request: int,
               work: Path, log: Log) -> StowResult:
    server: Server = OrthancServer(work, dicomweb=True) if server_type is OrthancServer else server_type(work)
    sessions: list[Client] = []
    try:
        server.start()
        sessions = [Client(server) for _ in range(clients)]
        for number, session in enumerate(sessions):  # open every connection, one small instance each
            status, _stored, _failed = session.stow([warmup[number]])
            if status != 200:
                raise BenchError(f"warm-up STOW-RS to {server.name} answered {status}")
            session.get("/studies?limit=1", QIDO_HEADERS)
        before = cpu_seconds(server.pid)
        seconds, errors, failed_parts = send_batches(sessions, batches(files, per_request))
        crashed = not server.alive()
        used = 0.0 if crashed else cpu_seconds(server.pid) - before
        stored = -1 if crashed else dimse.count_instances(server) - clients
        result = StowResult(server.name, clients, len(files), len(batches(files, per_request)), seconds, stored,
                            used, len(errors), failed_parts, crashed)
        log(f"  {server.name:8s} {clients} client(s): {result.rate:7.1f} instances/s ({seconds:.1f} s, stored "
            f"{stored}, server CPU {used:.1f} s, HTTP errors {len(errors)} {errors[:3]}, failed parts {failed_parts})")
        if crashed:
            log(f"  {server.name} is not running any more:\n{server.log_tail()}")
        return result
    finally:
        for session in sessions:
            session.close()
        server.cleanup()


def run_stow(files: list[Path], warmup: list[Path], repeat: int, per_request: int, work: Path,
             log: Log) -> list[StowResult]:
    results: list[StowResult] = []
    servers: tuple[type[Server], ...] = (MosaicServer, OrthancServer)
    for run_number in range(repeat):
        for clients in (1, 4):
            order = servers if (run_number + clients) % 2 else tuple(reversed(servers))
            log(f"STOW-RS ingest, {clients} client(s), {per_request} instances per request, "
                f"run {run_number + 1} of {repeat}")
            for server_type in order:
                results.append(bench_stow(files, warmup, server_type, clients, per_request, work, log))
    return results


# --- QIDO-RS ---------------------------------------------------------------------------------------------------


UID_TAG = {"STUDY": "0020000D", "SERIES": "0020000E", "IMAGE": "00080018"}


@dataclass
class QidoQuery:
    name: str
    path: str
    level: str
    expected: Callable[[int], int]
    compare_keys: bool = True
    """Whether both servers must return the same entities (not for a limit without an order)."""


def build_qido_queries(layout: synth.Layout, smallest: int) -> list[QidoQuery]:
    """The C-FIND benchmark's targets (bench/queries.py), asked over QIDO-RS, plus OHIF's study list."""
    from queries import _present

    complete = [study for study in layout.studies if study.first_index + study.count <= smallest]
    if len(complete) < 12:
        raise ValueError(f"{smallest} instances hold too few studies for the query set")
    name_prefix = complete[3].patient.name.split("^")[0][:4].title()
    patient_id = complete[7].patient.patient_id
    month = synth.month_range(complete[5].study_date)
    low, high = month.split("-")
    multi_series = max(complete, key=lambda study: (len(study.series), -study.number))
    biggest_study, biggest = max(((study, series) for study in complete for series in study.series),
                                 key=lambda pair: pair[1].count)

    def studies(keep: Callable[[synth.StudyPlan, list[tuple[synth.SeriesPlan, int]]], bool]) -> Callable[[int], int]:
        return lambda size: sum(1 for study, series in _present(layout, size) if keep(study, series))

    def series_of(study_uid: str) -> Callable[[int], int]:
        return lambda size: sum(len(series) for study, series in _present(layout, size) if study.uid == study_uid)

    def instances_of(series_uid: str) -> Callable[[int], int]:
        return lambda size: sum(count for _study, series in _present(layout, size) for plan, count in series
                                if plan.uid == series_uid)

    return [
        QidoQuery(f"studies, PatientName={name_prefix}*", f"/studies?PatientName={name_prefix}*", "STUDY",
                  studies(lambda study, _s: study.patient.name.upper().startswith(name_prefix.upper()))),
        QidoQuery("studies, PatientID exact", f"/studies?PatientID={patient_id}", "STUDY",
                  studies(lambda study, _s: study.patient.patient_id == patient_id)),
        QidoQuery("studies, StudyDate one-month range", f"/studies?StudyDate={month}", "STUDY",
                  studies(lambda study, _s: low <= study.study_date <= high)),
        QidoQuery("studies, ModalitiesInStudy=MG", "/studies?ModalitiesInStudy=MG", "STUDY",
                  studies(lambda _study, series: any(plan.modality == "MG" for plan, _n in series))),
        QidoQuery(f"series of a study ({len(multi_series.series)})", f"/studies/{multi_series.uid}/series",
                  "SERIES", series_of(multi_series.uid)),
        QidoQuery(f"instances of a series ({biggest.count})",
                  f"/studies/{biggest_study.uid}/series/{biggest.uid}/instances", "IMAGE", instances_of(biggest.uid)),
        QidoQuery("OHIF study list (limit=101, includefield)",
                  "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060", "STUDY",
                  lambda size: min(101, len(_present(layout, size))), compare_keys=False),
    ]


@dataclass
class Latency:
    name: str
    expected: int | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    matches: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    wire_bytes: dict[str, int] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)

    def p(self, server: str, share: float) -> float:
        return percentile(self.samples.get(server, []), share)


@dataclass
class QidoResult:
    size: int
    queries: list[Latency]
    populate_seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _value_text(element: Any) -> str:
    if not isinstance(element, dict):
        return repr(element)
    value = element.get("Value")
    if value is None:
        return "<empty>"
    items = [json.dumps(item, sort_keys=True) if isinstance(item, dict) else str(item) for item in value]
    return "\\".join(items)


def compare_json(level: str, answers: dict[str, list[dict[str, Any]]], *, compare_keys: bool,
                 limit: int = 5) -> list[str]:
    """Where two servers' DICOM JSON answers differ: matched entities, attributes present, values."""
    (first, left_list), (second, right_list) = list(answers.items())[:2]
    tag = UID_TAG[level]
    left = {_value_text(item.get(tag)): item for item in left_list}
    right = {_value_text(item.get(tag)): item for item in right_list}
    problems: list[str] = []
    if compare_keys:
        only_left, only_right = set(left) - set(right), set(right) - set(left)
        if only_left or only_right:
            problems.append(f"{len(only_left)} matches only from {first}, {len(only_right)} only from {second}")
    tags_left = set().union(*(item.keys() for item in left_list)) if left_list else set()
    tags_right = set().union(*(item.keys() for item in right_list)) if right_list else set()
    if tags_left - tags_right:
        problems.append(f"attributes only from {first}: {', '.join(sorted(tags_left - tags_right))}")
    if tags_right - tags_left:
        problems.append(f"attributes only from {second}: {', '.join(sorted(tags_right - tags_left))}")
    differing: dict[str, tuple[str, str]] = {}
    for key in sorted(set(left) & set(right)):
        for attribute in sorted(set(left[key]) & set(right[key])):
            if attribute == "00081190":  # RetrieveURL: each server's own address
                continue
            one, other = _value_text(left[key][attribute]), _value_text(right[key][attribute])
            if one != other and attribute not in differing:
                differing[attribute] = (one, other)
    for attribute, (one, other) in list(differing.items())[:limit]:
        problems.append(f"{attribute}: {first} {one[:60]!r} vs {second} {other[:60]!r}")
    if len(differing) > limit:
        problems.append(f"... and {len(differing) - limit} more attributes differ")
    return problems


def time_qido(servers: dict[str, Server], qido_queries: list[QidoQuery], size: int, rounds: int, log: Log,
              warmup: int = 2) -> QidoResult:
    """p50/p95 of each query on each server (alternating which goes first); the answers of the first
    warm-up round are checked against the expected counts and compared attribute by attribute."""
    clients = {name: Client(server) for name, server in servers.items()}
    results = [Latency(query.name, query.expected(size)) for query in qido_queries]
    names = list(clients)
    try:
        for round_number in range(-warmup, rounds):
            order = names if round_number % 2 == 0 else list(reversed(names))
            for query, result in zip(qido_queries, results, strict=True):
                answers: dict[str, list[dict[str, Any]]] = {}
                for name in order:
                    fetched = clients[name].get(query.path, QIDO_HEADERS)
                    if round_number == -warmup:
                        result.statuses[name] = fetched.status
                        result.wire_bytes[name] = len(fetched.raw)
                        result.encodings[name] = fetched.headers.get("content-encoding", "identity")
                        try:
                            answer = fetched.json() if fetched.status == 200 else []
                        except ValueError:
                            answer = []
                        answers[name] = answer if isinstance(answer, list) else []
                        result.matches[name] = len(answers[name])
                    elif round_number >= 0:
                        result.samples.setdefault(name, []).append(fetched.seconds)
                if round_number == -warmup:
                    result.differences = compare_json(query.level, {name: answers[name] for name in names},
                                                      compare_keys=query.compare_keys)
    finally:
        for client in clients.values():
            client.close()
    for result in results:
        timings = " ".join(f"{name} p50 {result.p(name, 0.5) * 1000:.1f} ms p95 {result.p(name, 0.95) * 1000:.1f} ms"
                           for name in names)
        log(f"  QIDO {result.name:45s} matches {result.matches} (expected {result.expected}) "
            f"HTTP {result.statuses} {timings}")
    return QidoResult(size, results)


def profile_qido(mosaic: Server, query: QidoQuery, repeat: int, raw: Path, summarise: Summarise) -> list[str]:
    """py-spy on Mosaic while one QIDO-RS request is repeated."""
    client = Client(mosaic)
    timing: list[float] = []
    try:
        client.get(query.path, QIDO_HEADERS)
        if not py_spy_record(mosaic.pid, raw, lambda: timing.extend(
                client.get(query.path, QIDO_HEADERS).seconds for _ in range(repeat))):
            return ["py-spy is not installed: no profile"]
    finally:
        client.close()
    return [f"QIDO-RS {query.name}, {repeat} requests (p50 {percentile(timing, 0.5) * 1000:.0f} ms while sampled)",
            *summarise(raw)]


# --- WADO-RS: series metadata, frames --------------------------------------------------------------------------


@dataclass
class RetrieveResult:
    metadata: list[Latency] = field(default_factory=list)
    frames: list[Latency] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a multipart body (enough of RFC 2046 for checking a frame's size)."""
    boundary = ""
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return []
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


def time_metadata(clients: dict[str, Client], series: InstanceRef, rounds: int, log: Log,
                  warmup: int = 2) -> list[Latency]:
    """Series metadata with and without gzip, each twice: the same request repeated (what a server may cache:
    Mosaic keeps encoded answers by ETag), and with a new Host header each time (``bench-N.localhost``, the
    same for both servers). Both servers build their BulkDataURIs from the Host header, so Mosaic's ETag and
    cache key change with it: that is the cold path, the cost of the first viewer to open a series."""
    path = f"/studies/{series.study}/series/{series.series}/metadata"
    results: list[Latency] = []
    hosts = iter(range(1, 1 << 30))
    for encoding, fresh_host in (("identity", True), ("gzip", True), ("identity", False), ("gzip", False)):
        headers = {"Accept": DICOM_JSON, "Accept-Encoding": encoding}
        label = "new Host each request (cold)" if fresh_host else "same request repeated"
        result = Latency(f"series metadata ({METADATA_SERIES} instances), Accept-Encoding: {encoding}, {label}",
                         METADATA_SERIES)
        names = list(clients)
        for round_number in range(-warmup, rounds):
            order = names if round_number % 2 == 0 else list(reversed(names))
            host = f"bench-{next(hosts)}.localhost" if fresh_host else ""
            for name in order:
                if host:
                    headers["Host"] = f"{host}:{clients[name].server.http_port}"
                fetched = clients[name].get(path, headers)
                if round_number >= 0:
                    result.samples.setdefault(name, []).append(fetched.seconds)
                    continue
                if round_number == -warmup:
                    result.statuses[name] = fetched.status
                    result.wire_bytes[name] = len(fetched.raw)
                    result.encodings[name] = fetched.headers.get("content-encoding", "identity")
                    answer = fetched.json() if fetched.status == 200 else []
                    result.matches[name] = len(answer)
                    if answer and not results:
                        attributes = len(answer[0])
                        bulk = sum(1 for element in answer[0].values()
                                   if isinstance(element, dict) and "BulkDataURI" in element)
                        result.differences.append(f"{name}: {len(fetched.body) / 1e6:.2f} MB of JSON, "
                                                  f"{attributes} attributes in the first instance "
                                                  f"({bulk} as BulkDataURI)")
        timings = " ".join(f"{name} p50 {result.p(name, 0.5) * 1000:.0f} ms p95 {result.p(name, 0.95) * 1000:.0f} ms"
                           for name in names)
        log(f"  {result.name}: instances {result.matches}, wire bytes {result.wire_bytes} "
            f"{result.encodings} {timings}")
        results.append(result)
    return results


def time_frames(clients: dict[str, Client], instances: list[InstanceRef], warmup_instances: list[InstanceRef],
                rounds: int, frame_bytes: int, log: Log, encoding: str) -> list[Latency]:
    """Frame 1 of each instance, ``rounds`` times; the first round separately (nothing cached yet)."""
    headers = {"Accept": OHIF_FRAME_ACCEPT, "Accept-Encoding": encoding}
    first = Latency(f"frame 1 of a 512x512 CT instance, Accept-Encoding: {encoding}, first request for each of "
                    f"{len(instances)} instances", frame_bytes)
    every = Latency(f"frame 1 of a 512x512 CT instance, Accept-Encoding: {encoding}, {rounds} rounds over "
                    f"{len(instances)} instances", frame_bytes)
    names = list(clients)
    for reference in warmup_instances:
        for name in names:
            fetched = clients[name].get(reference.path + "/frames/1", headers)
            parts = multipart_parts(fetched.headers.get("content-type", ""), fetched.body)
            every.statuses[name] = first.statuses[name] = fetched.status
            every.matches[name] = first.matches[name] = len(parts[0]) if parts else -1
            every.encodings[name] = first.encodings[name] = (
                f"{fetched.headers.get('content-type', '')}; "
                f"content-encoding={fetched.headers.get('content-encoding', 'identity')}")
            every.wire_bytes[name] = first.wire_bytes[name] = len(fetched.raw)
    for round_number in range(rounds):
        for number, reference in enumerate(instances):
            order = names if (round_number + number) % 2 == 0 else list(reversed(names))
            for name in order:
                fetched = clients[name].get(reference.path + "/frames/1", headers)
                if fetched.status != 200:
                    every.differences.append(f"{name}: HTTP {fetched.status} for {reference.sop}")
                every.samples.setdefault(name, []).append(fetched.seconds)
                if round_number == 0:
                    first.samples.setdefault(name, []).append(fetched.seconds)
    for result in (first, every):
        timings = " ".join(f"{name} p50 {result.p(name, 0.5) * 1000:.1f} ms p95 {result.p(name, 0.95) * 1000:.1f} ms"
                           for name in names)
        log(f"  {result.name}: frame bytes {result.matches} HTTP {result.statuses} {timings}")
    return [first, every]


def run_retrieve(cache: Path, ct_folder: Path, work: Path, rounds: int, log: Log) -> RetrieveResult:
    """Both servers, fresh, loaded over C-STORE with the 1,000-instance series and some 512x512 CT slices."""
    series_folder = ensure_metadata_series(cache)
    series_files = dicom_files(series_folder)
    ct_files = dicom_files(ct_folder)[:2 * FRAME_INSTANCES + 3]
    result = RetrieveResult()
    mosaic, orthanc = start_pair(work)
    servers: dict[str, Server] = {"Mosaic": mosaic, "Orthanc": orthanc}
    clients: dict[str, Client] = {}
    try:
        for server in servers.values():
            run = dimse.run_storescu(server, [[series_folder, *ct_files]], server.data_dir / "load-retrieve")
            count = dimse.count_instances(server)
            log(f"  loaded {server.name} over C-STORE in {run.seconds:.1f} s: {count} instances "
                f"(storescu exit {run.exit_codes})")
            if count != len(series_files) + len(ct_files):
                result.notes.append(f"{server.name} holds {count} instances instead of "
                                    f"{len(series_files) + len(ct_files)} for the retrieve tests")
        clients = {name: Client(server) for name, server in servers.items()}
        series = instance_ref(series_files[0])
        result.metadata = time_metadata(clients, series, rounds, log)
        references = [instance_ref(path) for path in ct_files]
        ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
        frame_bytes = int(ct.Rows) * int(ct.Columns) * int(ct.BitsAllocated) // 8
        # each encoding on its own instances, so that its first round is a first request for both servers
        result.frames = time_frames(clients, references[3:3 + FRAME_INSTANCES], references[:3], 3, frame_bytes, log,
                                    "gzip, deflate")
        result.frames += time_frames(clients, references[3 + FRAME_INSTANCES:], references[:3], 3, frame_bytes, log,
                                     "identity")
        for name, server in servers.items():
            if not server.alive():
                raise BenchError(f"{name} stopped during the WADO-RS benchmark:\n{server.log_tail()}")
    finally:
        for client in clients.values():
            client.close()
        mosaic.cleanup()
        orthanc.cleanup()
    return result


# --- report ----------------------------------------------------------------------------------------------------


@dataclass
class DicomwebResults:
    settings: dict[str, Any] = field(default_factory=dict)
    stow: list[StowResult] = field(default_factory=list)
    qido: list[QidoResult] = field(default_factory=list)
    retrieve: RetrieveResult | None = None
    notes: list[str] = field(default_factory=list)
    profiles: list[list[str]] = field(default_factory=list)


def _ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def _ratio(slow: float, fast: float) -> float:
    return slow / fast if fast else float("nan")


def render(results: DicomwebResults) -> Iterator[str]:
    yield "## DICOMweb (Orthanc with its DICOMweb plugin)"
    yield ""
    yield "Settings: " + ", ".join(f"{key}={value}" for key, value in results.settings.items())
    yield ""
    if results.stow:
        count, requests_count = results.stow[0].instances, results.stow[0].requests
        runs = max(1, len(results.stow) // 4)
        yield (f"### STOW-RS ingest: {count} CT instances (~0.5 MB), {requests_count} requests of "
               f"{count // requests_count} instances, median of {runs} run(s), a fresh server each")
        yield ""
        yield ("| clients | Mosaic inst/s | Orthanc inst/s | Mosaic / Orthanc | goal ≥ 2x | all runs (Mosaic; Orthanc) "
               "| server CPU s per 1000 (M / O) | stored (M / O) |")
        yield "|---|---:|---:|---:|---|---|---:|---|"
        for clients in sorted({result.clients for result in results.stow}):
            rows = {name: [r for r in results.stow if r.server == name and r.clients == clients]
                    for name in SERVER_NAMES}
            if not all(rows.values()):
                continue
            rate = {name: percentile([r.rate for r in rows[name]], 0.5) for name in SERVER_NAMES}
            cpu = {name: percentile([r.cpu_seconds for r in rows[name]], 0.5) * 1000 / count for name in SERVER_NAMES}
            every = "; ".join(", ".join(f"{r.rate:.0f}" for r in rows[name]) for name in SERVER_NAMES)
            stored = " / ".join(",".join(str(r.stored) for r in rows[name]) for name in SERVER_NAMES)
            ratio = _ratio(rate["Mosaic"], rate["Orthanc"])
            yield (f"| {clients} | {rate['Mosaic']:.1f} | {rate['Orthanc']:.1f} | {ratio:.2f}x | "
                   f"{'met' if ratio >= 2 else 'missed'} | {every} | {cpu['Mosaic']:.1f} / {cpu['Orthanc']:.1f} | "
                   f"{stored} |")
        yield ""
    for qido in results.qido:
        yield f"### QIDO-RS at {qido.size:,} instances (ms, request to last byte; Accept-Encoding: gzip)"
        yield ""
        if qido.counts:
            yield (f"Archive counts: {', '.join(f'{name} {count:,}' for name, count in qido.counts.items())} "
                   f"(loaded by mosaic import and 4 storescu into Orthanc, concurrently: "
                   f"{', '.join(f'{name} {seconds:.0f} s' for name, seconds in qido.populate_seconds.items())}).")
            yield ""
        yield ("| query | matches M / O (expected) | Mosaic p50 | Mosaic p95 | Orthanc p50 | Orthanc p95 | "
               "goal: p95 < 50 ms and < Orthanc |")
        yield "|---|---|---:|---:|---:|---:|---|"
        pooled: dict[str, list[float]] = {}
        met = 0
        for query in qido.queries:
            for name in SERVER_NAMES:
                pooled.setdefault(name, []).extend(query.samples.get(name, []))
            agree = query.matches.get("Mosaic") == query.matches.get("Orthanc") == query.expected
            good = query.p("Mosaic", 0.95) < min(0.05, query.p("Orthanc", 0.95))
            met += good
            yield (f"| {query.name} | {query.matches.get('Mosaic')} / {query.matches.get('Orthanc')} "
                   f"({query.expected}){'' if agree else ' ⚠'} | {_ms(query.p('Mosaic', 0.5))} | "
                   f"{_ms(query.p('Mosaic', 0.95))} | {_ms(query.p('Orthanc', 0.5))} | "
                   f"{_ms(query.p('Orthanc', 0.95))} | {'met' if good else 'missed'} |")
        mosaic, orthanc = pooled.get("Mosaic", []), pooled.get("Orthanc", [])
        yield (f"| **all queries pooled** | | **{_ms(percentile(mosaic, 0.5))}** | **{_ms(percentile(mosaic, 0.95))}** "
               f"| **{_ms(percentile(orthanc, 0.5))}** | **{_ms(percentile(orthanc, 0.95))}** | "
               f"met on {met} of {len(qido.queries)} |")
        yield ""
        differences = [f"{query.name}: {problem}" for query in qido.queries for problem in query.differences]
        statuses = [f"{query.name}: HTTP {query.statuses}" for query in qido.queries
                    if any(status != 200 for status in query.statuses.values())]
        if differences or statuses:
            yield "Differences between the answers (first warm-up round):"
            yield ""
            yield from (f"- {line}" for line in statuses + differences)
            yield ""
    retrieve = results.retrieve
    if retrieve and retrieve.metadata:
        yield "### WADO-RS series metadata and frames (ms, request to last byte on the wire)"
        yield ""
        yield ("| request | answer M / O | wire bytes M / O | Mosaic p50 | Mosaic p95 | Orthanc p50 | Orthanc p95 | "
               "Orthanc / Mosaic (p50) | goal |")
        yield "|---|---|---|---:|---:|---:|---:|---:|---|"
        for result in retrieve.metadata + retrieve.frames:
            ratio = _ratio(result.p("Orthanc", 0.5), result.p("Mosaic", 0.5))
            if result in retrieve.metadata:
                goal = "met" if ratio >= 3 else "missed"
                answer = f"{result.matches.get('Mosaic')} / {result.matches.get('Orthanc')} instances"
                answer += f" ({result.encodings.get('Mosaic')} / {result.encodings.get('Orthanc')})"
            else:
                goal = "(no goal)"
                answer = f"{result.matches.get('Mosaic')} / {result.matches.get('Orthanc')} bytes"
            yield (f"| {result.name} | {answer} | {result.wire_bytes.get('Mosaic')} / "
                   f"{result.wire_bytes.get('Orthanc')} | {_ms(result.p('Mosaic', 0.5))} | "
                   f"{_ms(result.p('Mosaic', 0.95))} | {_ms(result.p('Orthanc', 0.5))} | "
                   f"{_ms(result.p('Orthanc', 0.95))} | {ratio:.1f}x | {goal} |")
        yield ""
        details = [f"{result.name}: {line}" for result in retrieve.metadata for line in result.differences]
        details += list(dict.fromkeys(f"frames ({result.name.split(', ')[1]}): {name} answered {value}"
                                      for result in retrieve.frames for name, value in result.encodings.items()))
        details += [line for result in retrieve.frames for line in result.differences]
        details += retrieve.notes
        yield from (f"- {line}" for line in details)
        yield ""
    if results.notes:
        yield from (f"- {note}" for note in results.notes)
        yield ""
    for profile in results.profiles:
        yield f"### py-spy profile of Mosaic: {profile[0]}"
        yield ""
        yield "```"
        yield from profile[1:]
        yield "```"
        yield ""
