#!/usr/bin/env python3
"""Mosaic vs Orthanc, side by side, in one run, on the same files.

    .venv/bin/python bench/run.py                  # the full run (see docs/benchmarks.md)
    .venv/bin/python bench/run.py --quick          # a small smoke run (~2 minutes once the cache is built)

Measures C-STORE ingest (dcmtk storescu, 1 and 4 associations), C-FIND latency (pynetdicom in-process,
one open association) at several archive sizes, the server's resident memory while a ~1 GB
multi-frame instance arrives, and DICOMweb (bench/dicomweb.py: STOW-RS ingest, QIDO-RS latency on the
C-FIND archives, WADO-RS series metadata and frames; Orthanc with its DICOMweb plugin). Generated data is
cached in bench/.cache; servers run from temporary folders that are removed at the end. Prints a Markdown
report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dicomweb
import dimse
import queries
import synth
from dicomweb import percentile
from servers import (
    ORTHANC_BIN,
    ROOT,
    BenchError,
    MosaicServer,
    OrthancServer,
    Server,
    dcmtk_available,
    nodelay_env,
    orthanc_available,
    orthanc_dicomweb_available,
    rss_kib,
)

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
WORK = BENCH / "work"
SERVERS: tuple[type[Server], ...] = (MosaicServer, OrthancServer)
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def warm_page_cache(paths: list[Path]) -> None:
    """Read the files once so that neither server pays for the first read from disk."""
    for path in paths:
        files = [path] if path.is_file() else sorted(path.iterdir())
        for file in files:
            with open(file, "rb") as stream:
                while stream.read(1 << 22):
                    pass


# --- results -------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    server: str
    associations: int
    instances: int
    seconds: float
    stored: int
    cpu_seconds: float
    exit_codes: list[int]
    failures: int
    crashed: bool = False

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


@dataclass
class MemoryResult:
    server: str
    size_bytes: int
    baseline_kib: int
    peak_kib: int
    after_kib: int
    seconds: float
    stored: int
    exit_codes: list[int]
    crashed: bool = False

    @property
    def delta_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024


@dataclass
class QueryResult:
    name: str
    expected: int
    matches: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    """Where the servers' answers differ (matches, or values of the requested attributes)."""


@dataclass
class FindResult:
    size: int
    populate_seconds: dict[str, float]
    counts: dict[str, int]
    queries: list[QueryResult]


@dataclass
class Report:
    started: str
    machine: dict[str, str]
    versions: dict[str, str]
    settings: dict[str, Any]
    ingest: list[IngestResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    find: list[FindResult] = field(default_factory=list)
    dicomweb: dicomweb.DicomwebResults | None = None
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)


# --- environment -----------------------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def machine_info() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        memory = f"{int(info.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    load = os.getloadavg()
    return {"cores": str(os.cpu_count()), "cpu": cpu, "memory": memory, "kernel": platform.release(),
            "python": platform.python_version(),
            "load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"}


def versions() -> dict[str, str]:
    import pydicom
    import pynetdicom

    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    from importlib.metadata import version

    return {
        "Mosaic": f"{version('mosaic')} (git {commit}{', src/ modified' if dirty else ''})",
        "Orthanc": _first_line([str(ORTHANC_BIN), "--version"]),
        "dcmtk storescu": _first_line(["storescu", "--version"]).strip("$ "),
        "pydicom / pynetdicom": f"{pydicom.__version__} / {pynetdicom.__version__}",
    }


# --- ingest ------------------------------------------------------------------------------------------


def split(items: list[Path], parts: int) -> list[list[Path]]:
    """Up to ``parts`` non-empty groups, round robin."""
    return [group for group in (items[part::parts] for part in range(parts)) if group]


def bench_ingest(folders: list[Path], instances: int, associations: int, server_type: type[Server],
                 work: Path) -> IngestResult:
    server = server_type(work)
    try:
        server.start()
        groups = [folders] if associations == 1 else split(folders, associations)
        if associations != 1 and len(folders) != associations:
            raise BenchError("the ingest set has one folder per association")
        before = cpu_seconds(server.pid)
        run = dimse.run_storescu(server, groups, server.data_dir / f"storescu-{associations}")
        crashed = not server.alive()
        used = 0.0 if crashed else cpu_seconds(server.pid) - before
        stored = -1 if crashed else dimse.count_instances(server)
        result = IngestResult(server.name, associations, instances, run.seconds, stored, used, run.exit_codes,
                              run.failures, crashed)
        log(f"  {server.name:8s} {associations} assoc: {result.rate:7.1f} instances/s "
            f"({run.seconds:.1f} s, stored {stored}, server CPU {used:.1f} s, "
            f"storescu exit {run.exit_codes})")
        if crashed:
            log(f"  {server.name} is not running any more:\n{server.log_tail()}")
        return result
    finally:
        server.cleanup()


# --- memory ------------------------------------------------------------------------------------------


class RssSampler:
    """Samples a process's resident set size every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = rss_kib(self.pid)
            except (OSError, BenchError):
                return
            self.peak = max(self.peak, self.last)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_memory(path: Path, server_type: type[Server], work: Path) -> MemoryResult:
    server = server_type(work)
    try:
        server.start()
        time.sleep(2)
        dimse.count_instances(server)  # exercise the DICOM listener once before the baseline
        time.sleep(1)
        samples = []
        for _ in range(5):
            samples.append(rss_kib(server.pid))
            time.sleep(0.1)
        baseline = min(samples)
        with RssSampler(server.pid) as sampler:
            run = dimse.run_storescu(server, [[path]], server.data_dir / "storescu-memory", scan_dirs=False)
            time.sleep(2)
        crashed = not server.alive()
        stored = -1 if crashed else dimse.count_instances(server)
        result = MemoryResult(server.name, path.stat().st_size, baseline, sampler.peak, sampler.last,
                              run.seconds, stored, run.exit_codes, crashed)
        log(f"  {server.name:8s} baseline {baseline / 1024:.0f} MiB, peak {sampler.peak / 1024:.0f} MiB "
            f"(+{result.delta_mib:.0f} MiB), {run.seconds:.1f} s, stored {stored}, "
            f"storescu exit {run.exit_codes}")
        if crashed:
            log(f"  {server.name} is not running any more:\n{server.log_tail()}")
        return result
    finally:
        server.cleanup()


# --- C-FIND ------------------------------------------------------------------------------------------


def populate(mosaic: MosaicServer, orthanc: OrthancServer, blocks: list[Path]) -> dict[str, float]:
    """Mosaic by ``mosaic import`` (server stopped), Orthanc by 4 storescu at once; both at the same time."""
    timings: dict[str, float] = {}
    mosaic.stop()
    mosaic.initialise()
    started = time.perf_counter()
    import_log = mosaic.data_dir / "import.log"
    with open(import_log, "ab") as output:
        importer = subprocess.Popen(mosaic.import_command(blocks), stdout=output, stderr=subprocess.STDOUT,
                                    env={**os.environ, "COLUMNS": "100"})
        store = dimse.run_storescu(orthanc, split(blocks, 4), orthanc.data_dir / "populate", timeout=3600)
        timings["Orthanc"] = store.seconds
        code = importer.wait()
    timings["Mosaic"] = time.perf_counter() - started
    if code != 0:
        tail = "\n".join(import_log.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"mosaic import exited with {code}:\n{tail}")
    if any(store.exit_codes):
        log(f"  storescu into Orthanc exited with {store.exit_codes}")
    mosaic.start()
    return timings


def time_queries(clients: dict[str, dimse.FindClient], find_queries: list[queries.FindQuery], size: int,
                 rounds: int, warmup: int = 2) -> list[QueryResult]:
    results = [QueryResult(query.name, query.expected(size)) for query in find_queries]
    names = list(clients)
    for round_number in range(-warmup, rounds):
        # alternate which server goes first, round after round
        order = names if round_number % 2 == 0 else list(reversed(names))
        for query, result in zip(find_queries, results, strict=True):
            answers: dict[str, list[Any]] = {}
            for name in order:
                seconds, matches, status = clients[name].find(query.model, query.identifier)
                if round_number < 0:
                    result.matches[name] = len(matches)
                    result.statuses[name] = "?" if status is None else f"0x{status:04X}"
                    answers[name] = matches
                    continue
                result.samples.setdefault(name, []).append(seconds)
            if round_number == -warmup:
                result.differences = queries.compare_answers(query, {name: answers[name] for name in names})
    return results


def bench_find(sizes: list[int], rounds: int, work: Path, report: Report, *, cfind: bool = True,
               qido: bool = False, profile: bool = False) -> None:
    """C-FIND (``cfind``) and QIDO-RS (``qido``, into ``report.dicomweb``) on the same archives; ``profile``:
    py-spy on Mosaic answering its slowest QIDO-RS query at the largest size."""
    layout = synth.query_layout(max(sizes))
    find_queries = queries.build_queries(layout, min(sizes))
    qido_queries = dicomweb.build_qido_queries(layout, min(sizes)) if qido else []
    mosaic = MosaicServer(work)
    orthanc = OrthancServer(work, dicomweb=qido)
    try:
        orthanc.start()
        loaded = 0
        for size in sizes:
            blocks = synth.query_blocks(CACHE, size)[loaded // synth.BLOCK:]
            log(f"{'C-FIND' if cfind else 'QIDO-RS'}: loading instances {loaded}..{size} into both servers")
            timings = populate(mosaic, orthanc, blocks)
            loaded = size
            servers: dict[str, Server] = {"Mosaic": mosaic, "Orthanc": orthanc}
            counts = {name: dimse.count_instances(server) for name, server in servers.items()}
            log(f"  loaded in {timings['Mosaic']:.0f} s (Mosaic import) / {timings['Orthanc']:.0f} s "
                f"(Orthanc C-STORE x4), concurrently; archive counts {counts}")
            if qido and report.dicomweb is not None:
                qido_result = dicomweb.time_qido(servers, qido_queries, size, rounds, log)
                qido_result.populate_seconds, qido_result.counts = timings, counts
                report.dicomweb.qido.append(qido_result)
                if profile and size == max(sizes):
                    slowest = max(range(len(qido_queries)), key=lambda at: qido_result.queries[at].p("Mosaic", 0.95))
                    log(f"  profiling Mosaic on QIDO-RS {qido_queries[slowest].name}")
                    report.dicomweb.profiles.append(dicomweb.profile_qido(
                        mosaic, qido_queries[slowest], 50, WORK / "profile-qido.txt", summarise_profile))
            if not cfind:
                continue
            with dimse.FindClient(mosaic) as mosaic_client, dimse.FindClient(orthanc) as orthanc_client:
                clients = {"Mosaic": mosaic_client, "Orthanc": orthanc_client}
                results = time_queries(clients, find_queries, size, rounds)
            for result in results:
                timings_text = " ".join(
                    f"{name} p50 {_ms(percentile(samples, 0.5))} ms p95 {_ms(percentile(samples, 0.95))} ms"
                    for name, samples in result.samples.items())
                log(f"  {result.name:45s} matches {result.matches} (expected {result.expected}) "
                    f"{timings_text}")
            report.find.append(FindResult(size, timings, counts, results))
            for name, server in servers.items():
                if not server.alive():
                    raise BenchError(f"{name} stopped during the C-FIND benchmark:\n{server.log_tail()}")
    finally:
        mosaic.cleanup()
        orthanc.cleanup()


# --- profile -----------------------------------------------------------------------------------------


def profile_ingest(folders: list[Path], work: Path) -> list[str]:
    """py-spy on the Mosaic server during one extra 1-association ingest: its top frames."""
    py_spy = ROOT / ".venv" / "bin" / "py-spy"
    if not py_spy.exists() and not shutil.which("py-spy"):
        return ["py-spy is not installed: no profile"]
    server = MosaicServer(work)
    raw = WORK / "profile-ingest.txt"
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        server.start()
        spy = subprocess.Popen([str(py_spy if py_spy.exists() else "py-spy"), "record", "-p", str(server.pid),
                                "-r", "250", "-f", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1)
        run = dimse.run_storescu(server, [folders], server.data_dir / "storescu-profile")
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        log(f"  profiled ingest: {run.seconds:.1f} s")
    finally:
        server.cleanup()
    return summarise_profile(raw)


_WAITING = ("Condition.wait", "Event.wait", "Queue.get", "select (selectors", "_worker (concurrent",
            "sleep", "serve_forever", "accept")


def summarise_profile(raw: Path, top: int = 15) -> list[str]:
    """The frames where the server's threads spent their on-CPU samples (py-spy's raw format)."""
    own: dict[str, int] = {}
    total_time: dict[str, int] = {}
    samples = 0
    with contextlib.suppress(OSError):
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            if any(marker in frames[-1] for marker in _WAITING):
                continue  # py-spy counts some blocked threads as active
            samples += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                total_time[frame] = total_time.get(frame, 0) + count
    if not samples:
        return ["no samples"]
    lines = [f"{samples} busy samples (all threads, waits left out); raw stacks in bench/work/{raw.name}",
             "", "own time:"]
    lines += [f"  {count / samples:6.1%}  {frame}" for frame, count in
              sorted(own.items(), key=lambda item: -item[1])[:top]]
    lines += ["", "total time (Mosaic's frames):"]
    lines += [f"  {count / samples:6.1%}  {frame}" for frame, count in
              sorted(total_time.items(), key=lambda item: -item[1]) if "mosaic/" in frame][:top]
    return lines


# --- report ------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def render(report: Report) -> str:
    out: list[str] = []
    add = out.append
    add(f"# Mosaic vs Orthanc benchmark — {report.started}")
    add("")
    add("| machine | |")
    add("|---|---|")
    for key, value in {**report.machine, **report.versions}.items():
        add(f"| {key} | {value} |")
    add(f"| settings | {', '.join(f'{key}={value}' for key, value in report.settings.items())} |")
    add("")
    if report.ingest:
        count = report.ingest[0].instances
        runs = max(1, len(report.ingest) // 4)
        add(f"## C-STORE ingest: {count} CT instances of 512x512x16 bit (~0.5 MB), dcmtk storescu "
            f"`--max-send-pdu {dimse.MAX_SEND_PDU}`, median of {runs} run(s), a fresh server each")
        add("")
        add("| associations | Mosaic inst/s | Orthanc inst/s | Mosaic / Orthanc | goal ≥ 1.5x "
            "| all runs inst/s (Mosaic; Orthanc) | server CPU s per 1000 (Mosaic / Orthanc) |")
        add("|---|---:|---:|---:|---|---|---:|")
        for associations in sorted({result.associations for result in report.ingest}):
            rows = {name: [r for r in report.ingest if r.server == name and r.associations == associations]
                    for name in ("Mosaic", "Orthanc")}
            if not rows["Mosaic"] or not rows["Orthanc"]:
                continue
            rate = {name: statistics.median(r.rate for r in results) for name, results in rows.items()}
            cpu = {name: statistics.median(r.cpu_seconds for r in results) * 1000 / count
                   for name, results in rows.items()}
            every = "; ".join(", ".join(f"{r.rate:.0f}" for r in results) for results in rows.values())
            ratio = rate["Mosaic"] / rate["Orthanc"] if rate["Orthanc"] else float("nan")
            add(f"| {associations} | {rate['Mosaic']:.1f} | {rate['Orthanc']:.1f} | {ratio:.2f}x | "
                f"{'met' if ratio >= 1.5 else 'missed'} | {every} | "
                f"{cpu['Mosaic']:.1f} / {cpu['Orthanc']:.1f} |")
        add("")
    if report.find:
        for find in report.find:
            add(f"## C-FIND latency at {find.size:,} instances (pynetdicom SCU in-process, one open "
                f"association, ms per round trip incl. all responses)")
            add("")
            previous = report.find.index(find)
            added = find.size - (report.find[previous - 1].size if previous else 0)
            add(f"Archive counts: {', '.join(f'{name} {count:,}' for name, count in find.counts.items())}. "
                f"Loading these {added:,} instances took {find.populate_seconds['Mosaic']:.0f} s "
                f"(mosaic import) and "
                f"{find.populate_seconds['Orthanc']:.0f} s (Orthanc, 4 storescu), run concurrently.")
            add("")
            add("| query | matches M / O (expected) | Mosaic p50 | Mosaic p95 | Orthanc p50 | Orthanc p95 | "
                "p95 goal |")
            add("|---|---|---:|---:|---:|---:|---|")
            pooled: dict[str, list[float]] = {}
            for query in find.queries:
                mosaic = query.samples.get("Mosaic", [])
                orthanc = query.samples.get("Orthanc", [])
                pooled.setdefault("Mosaic", []).extend(mosaic)
                pooled.setdefault("Orthanc", []).extend(orthanc)
                agree = query.matches.get("Mosaic") == query.matches.get("Orthanc") == query.expected
                mark = "" if agree else " ⚠"
                goal = "met" if percentile(mosaic, 0.95) < percentile(orthanc, 0.95) else "missed"
                add(f"| {query.name} | {query.matches.get('Mosaic')} / {query.matches.get('Orthanc')} "
                    f"({query.expected}){mark} | {_ms(percentile(mosaic, 0.5))} | "
                    f"{_ms(percentile(mosaic, 0.95))} | {_ms(percentile(orthanc, 0.5))} | "
                    f"{_ms(percentile(orthanc, 0.95))} | {goal} |")
            wins = sum(1 for query in find.queries if percentile(query.samples.get("Mosaic", []), 0.95)
                       < percentile(query.samples.get("Orthanc", []), 0.95))
            mosaic, orthanc = pooled.get("Mosaic", []), pooled.get("Orthanc", [])
            goal = f"met on {wins} of {len(find.queries)} queries"
            add(f"| **all queries pooled** | | **{_ms(percentile(mosaic, 0.5))}** | "
                f"**{_ms(percentile(mosaic, 0.95))}** | **{_ms(percentile(orthanc, 0.5))}** | "
                f"**{_ms(percentile(orthanc, 0.95))}** | {goal} |")
            add("")
            differences = [f"{query.name}: {problem}"
                           for query in find.queries for problem in query.differences]
            if differences:
                add("Answers that differ between the servers (first warm-up round):")
                add("")
                out.extend(f"- {line}" for line in differences)
                add("")
    if report.memory:
        size = report.memory[0].size_bytes
        add(f"## Memory: one {size / 1e9:.2f} GB multi-frame instance over C-STORE (RSS sampled every 10 ms)")
        add("")
        add("| server | baseline RSS MiB | peak RSS MiB | peak - baseline MiB | transfer s | MB/s | stored |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for memory in report.memory:
            add(f"| {memory.server} | {memory.baseline_kib / 1024:.0f} | {memory.peak_kib / 1024:.0f} | "
                f"{memory.delta_mib:.0f} | {memory.seconds:.1f} | {size / 1e6 / memory.seconds:.0f} | "
                f"{memory.stored} |")
        add("")
    if report.dicomweb is not None:
        out.extend(dicomweb.render(report.dicomweb))
    if report.profile:
        add("## py-spy profile of Mosaic during a 1-association ingest")
        add("")
        add("```")
        out.extend(report.profile)
        add("```")
        add("")
    if report.notes:
        add("## Notes")
        add("")
        out.extend(f"- {note}" for note in report.notes)
        add("")
    return "\n".join(out)


def to_json(report: Report) -> dict[str, Any]:
    data = asdict(report)
    for item, result in zip(data["ingest"], report.ingest, strict=True):
        item["rate"] = result.rate
    return data


# --- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000, help="CT instances for the ingest runs")
    parser.add_argument("--find-sizes", default="10000,100000",
                        help="archive sizes for C-FIND, comma-separated multiples of 1000")
    parser.add_argument("--frames", type=int, default=2000,
                        help="frames of 512x512x16 bit in the memory test's instance (2000: ~1 GB)")
    parser.add_argument("--rounds", type=int, default=20, help="timed repetitions of each C-FIND per server")
    parser.add_argument("--repeat", type=int, default=3,
                        help="ingest runs per server and association count (the median is reported)")
    parser.add_argument("--only", default="ingest,memory,find,dicomweb",
                        help="parts to run: ingest, memory, find, dicomweb")
    parser.add_argument("--profile", action="store_true",
                        help="also profile Mosaic with py-spy during an extra 1-association ingest (and, with "
                             "dicomweb, extra STOW-RS runs and its slowest QIDO-RS query)")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 200 instances, C-FIND at 2000 and 5000, 100 MB instance")
    parser.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.find_sizes, args.frames, args.rounds, args.repeat = 200, "2000,5000", 200, 5, 1
    args.sizes = sorted({int(size) for size in args.find_sizes.split(",") if size.strip()})
    args.parts = {part.strip() for part in args.only.split(",") if part.strip()}
    if args.instances % 4:
        parser.error("--instances must be a multiple of 4 (one quarter per association)")
    if any(size % synth.BLOCK for size in args.sizes):
        parser.error(f"--find-sizes must be multiples of {synth.BLOCK}")
    return args


@contextlib.contextmanager
def work_folder() -> Iterator[Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    folder = WORK / f"run-{os.getpid()}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not dcmtk_available():
        print("dcmtk (storescu) is missing: run scripts/install-system-deps.sh", file=sys.stderr)
        return 2
    if not orthanc_available():
        print("Orthanc is missing (/usr/sbin/Orthanc): run scripts/install-system-deps.sh", file=sys.stderr)
        return 2
    if "dicomweb" in args.parts and not orthanc_dicomweb_available():
        print("Orthanc's DICOMweb plugin is missing (package orthanc-dicomweb)", file=sys.stderr)
        return 2
    os.environ.update(nodelay_env())
    report = Report(
        started=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine_info(), versions=versions(),
        settings={"instances": args.instances, "find sizes": "/".join(map(str, args.sizes)),
                  "frames": args.frames, "C-FIND rounds": args.rounds},
    )
    if "dicomweb" in args.parts:
        report.dicomweb = dicomweb.DicomwebResults(settings={
            "STOW-RS instances per request": dicomweb.PER_REQUEST, "STOW-RS runs": args.repeat,
            "QIDO-RS rounds": args.rounds, "metadata rounds": args.rounds, "frame rounds": 3})
    log("preparing data (cached in bench/.cache)")
    started = time.perf_counter()
    ingest_folders = (synth.ensure_ingest_set(CACHE, args.instances)
                      if args.parts & {"ingest", "dicomweb"} else [])
    if args.parts & {"find", "dicomweb"}:
        synth.ensure_query_set(CACHE, max(args.sizes), max(args.sizes))
    if "dicomweb" in args.parts:
        dicomweb.ensure_metadata_series(CACHE)
    multiframe = synth.ensure_multiframe(CACHE, frames=args.frames) if "memory" in args.parts else None
    log(f"data ready in {time.perf_counter() - started:.0f} s")
    exit_code = 0
    with work_folder() as work:
        if "ingest" in args.parts:
            warm_page_cache(ingest_folders)
            for run_number in range(args.repeat):
                for associations in (1, 4):
                    # alternate which server goes first
                    order = SERVERS if (run_number + associations) % 2 else tuple(reversed(SERVERS))
                    log(f"C-STORE ingest over {associations} association(s), "
                        f"run {run_number + 1} of {args.repeat}")
                    for server_type in order:
                        result = bench_ingest(ingest_folders, args.instances, associations, server_type, work)
                        report.ingest.append(result)
                        if result.crashed or result.stored != args.instances:
                            report.notes.append(
                                f"{result.server} stored {result.stored} of {args.instances} instances over "
                                f"{associations} association(s); storescu exit {result.exit_codes}, "
                                f"{result.failures} failure lines")
        if "memory" in args.parts and multiframe is not None:
            log(f"memory: one {multiframe.stat().st_size / 1e9:.2f} GB instance")
            warm_page_cache([multiframe])
            for server_type in SERVERS:
                try:
                    report.memory.append(bench_memory(multiframe, server_type, work))
                except BenchError as exc:
                    report.notes.append(f"memory test on {server_type.name} failed: {exc}")
                    log(f"  {exc}")
        if "dicomweb" in args.parts and report.dicomweb is not None:
            stow_files = [path for folder in ingest_folders for path in dicomweb.dicom_files(folder)]
            warm_page_cache(ingest_folders)
            stow_warmup = dicomweb.dicom_files(dicomweb.ensure_metadata_series(CACHE))[:4]
            try:
                report.dicomweb.stow = dicomweb.run_stow(stow_files, stow_warmup, args.repeat, dicomweb.PER_REQUEST,
                                                         work, log)
                if args.profile:
                    for clients in (1, 4):
                        log(f"profiling Mosaic's STOW-RS path with py-spy ({clients} client(s))")
                        report.dicomweb.profiles.append(dicomweb.profile_stow(
                            stow_files, stow_warmup, clients, dicomweb.PER_REQUEST, work,
                            WORK / f"profile-stow-{clients}.txt", summarise_profile, log))
            except BenchError as exc:
                report.dicomweb.notes.append(f"STOW-RS benchmark failed: {exc}")
                log(str(exc))
                exit_code = 1
        if args.parts & {"find", "dicomweb"}:
            try:
                bench_find(args.sizes, args.rounds, work, report, cfind="find" in args.parts,
                           qido="dicomweb" in args.parts, profile=args.profile)
            except BenchError as exc:
                report.notes.append(f"C-FIND / QIDO-RS benchmark failed: {exc}")
                log(str(exc))
                exit_code = 1
        if "dicomweb" in args.parts and report.dicomweb is not None:
            log("WADO-RS: series metadata and frames")
            try:
                report.dicomweb.retrieve = dicomweb.run_retrieve(CACHE, ingest_folders[0], work, args.rounds, log)
            except BenchError as exc:
                report.dicomweb.notes.append(f"WADO-RS benchmark failed: {exc}")
                log(str(exc))
                exit_code = 1
        if args.profile and "ingest" in args.parts:
            log("profiling Mosaic's C-STORE path with py-spy")
            report.profile = profile_ingest(ingest_folders, work)
    load = os.getloadavg()
    report.machine["load average at end"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    report.notes.append(f"total run time {time.monotonic() - STARTED:.0f} s")
    markdown = render(report)
    print(markdown)
    if args.output:
        args.output.write_text(markdown + "\n")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "last-results.json").write_text(json.dumps(to_json(report), indent=2, default=str))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
