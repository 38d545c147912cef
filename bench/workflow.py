#!/usr/bin/env python3
"""The hospital's information flow against an archive of 100,000 instances: HL7 v2 ADT and ORM applied per
second over one MLLP connection, a merge of a patient with 100 studies / ~10,000 instances, Modality Worklist
C-FIND latency with 10,000 scheduled steps, and FHIR ``ImagingStudy?patient=`` latency.

    .venv/bin/python bench/workflow.py [--instances 100000] [--real 10000] [--orders 10000] [--queries 300]

Mosaic only: Debian's Orthanc has no HL7 listener, worklist fed by HL7 or FHIR server to compare with.

How the index gets to 100,000 instances: the first ``--real`` instances of the query set (``bench/synth.py``,
mixed modalities, ~80 instances per study) go in through ``mosaic import`` (the real ingest path: files,
checksums, metadata, index rows); the index rows are then copied ``instances / real`` times with every unique
value (PatientID, UIDs) suffixed, so that the tables, their indexes and the query plans are those of an archive of
that size (the copies share the originals' blobs: nothing here reads pixel data). Then one server process (``mosaic
serve``, SQLite, its defaults) and, from this process, python-hl7's MLLP client, pynetdicom and http.client with
an API token (the access policy and audit trail on every request).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from servers import HOST, MOSAIC_BIN, SCU_AE, BenchError, MosaicServer, free_port
from synth import ensure_query_set

CACHE = Path(__file__).resolve().parent / ".cache"
COPY_OFFSET = 10_000_000
"""Added to the primary keys (and foreign keys) of each copy of the index rows."""
MODALITIES = ("CT", "MR", "US", "CR", "MG")
STATIONS = tuple(f"ST{number:02d}" for number in range(1, 21))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (f"p50 {percentile(values, 0.5) * 1e3:.1f} ms, p95 {percentile(values, 0.95) * 1e3:.1f} ms, "
            f"max {max(values) * 1e3:.1f} ms ({len(values)} requests)")


class WorkflowServer(MosaicServer):
    """Mosaic with an HL7 listener and a RIS/EHR allowed to send ADT and orders."""

    def __init__(self, work: Path | None = None) -> None:
        super().__init__(work)
        self.hl7_port = free_port()
        self.config_path.write_text(
            f'[dicom]\npeers = [{{ae_title = "{SCU_AE}", host = "{HOST}", port = {free_port()}}}]\n'
            '[hl7]\nsenders = [{application = "RIS", may_send = ["ADT", "ORM", "OMI"], issuer = "GENHOSP"}]\n'
            '[workflow]\nstudy_stable_seconds = 0\n')

    def command(self) -> list[str]:
        return [*super().command(), "--hl7-port", str(self.hl7_port)]

    @property
    def index_path(self) -> Path:
        return self.data_dir / "data" / "index.sqlite"


def load(server: WorkflowServer, real: int) -> None:
    folders = ensure_query_set(CACHE, real, cap=real)
    server.initialise()
    started = time.perf_counter()
    result = subprocess.run(server.import_command(folders), capture_output=True, text=True, check=False,
                            env=server.environment())
    if result.returncode != 0:
        raise BenchError(f"mosaic import failed: {result.stderr[-2000:] or result.stdout[-2000:]}")
    print(f"imported {real} instances in {time.perf_counter() - started:.0f} s", flush=True)


def _unique_text_columns(connection: sqlite3.Connection, table: str) -> set[str]:
    columns: set[str] = set()
    for _seq, name, unique, *_rest in connection.execute(f"PRAGMA index_list('{table}')"):
        if unique:
            columns |= {row[2] for row in connection.execute(f"PRAGMA index_info('{name}')")}
    types = {row[1]: row[2].upper() for row in connection.execute(f"PRAGMA table_info('{table}')")}
    return {column for column in columns if "CHAR" in types.get(column, "") or "TEXT" in types.get(column, "")}


def multiply(path: Path, copies: int) -> None:
    """Copy the patient, study, series and instance rows ``copies`` times (unique text values suffixed)."""
    foreign = {"study": ("patient_pk",), "series": ("study_pk",), "instance": ("series_pk",)}
    with sqlite3.connect(path) as connection:
        for table in ("patient", "study", "series", "instance"):
            names = [row[1] for row in connection.execute(f"PRAGMA table_info('{table}')")]
            unique = _unique_text_columns(connection, table) - {"IssuerOfPatientID"}
            for copy in range(1, copies):
                offset = copy * COPY_OFFSET
                values = []
                for name in names:
                    if name == "pk" or name in foreign.get(table, ()):
                        values.append(f'"{name}" + {offset}')
                    elif name in unique:
                        values.append(f"\"{name}\" || '.{copy}'")
                    else:
                        values.append(f'"{name}"')
                quoted = ", ".join(f'"{name}"' for name in names)
                connection.execute(f"INSERT INTO {table} ({quoted}) SELECT {', '.join(values)} FROM {table} "
                                   f"WHERE pk < {COPY_OFFSET}")
        connection.execute("ANALYZE")
        count = connection.execute("SELECT count(*) FROM instance").fetchone()[0]
    print(f"index multiplied to {count} instances", flush=True)


def make_big_patient(path: Path) -> tuple[int, int]:
    """File the ~100 studies whose sizes are nearest 100 instances under one new patient (BIGPATIENT) to be
    merged; returns (studies, instances)."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT study.pk, study.\"NumberOfStudyRelatedInstances\" FROM study "
            "ORDER BY abs(study.\"NumberOfStudyRelatedInstances\" - 100), study.pk LIMIT 100").fetchall()
        studies = [pk for pk, _count in rows]
        instances = sum(count for _pk, count in rows)
        series = connection.execute(
            f"SELECT count(*) FROM series WHERE study_pk IN ({','.join(map(str, studies))})").fetchone()[0]
        template = connection.execute("SELECT * FROM patient LIMIT 1").fetchone()
        names = [row[1] for row in connection.execute("PRAGMA table_info('patient')")]
        values = dict(zip(names, template, strict=True))
        values.update(pk=9 * COPY_OFFSET, PatientID="BIGPATIENT", IssuerOfPatientID="GENHOSP",
                      NumberOfPatientRelatedStudies=len(studies), NumberOfPatientRelatedSeries=series,
                      NumberOfPatientRelatedInstances=instances)
        connection.execute(f"INSERT INTO patient ({', '.join(chr(34) + n + chr(34) for n in names)}) "
                           f"VALUES ({', '.join('?' for _ in names)})", [values[name] for name in names])
        connection.execute(f"UPDATE study SET patient_pk = {9 * COPY_OFFSET} "
                           f"WHERE pk IN ({','.join(map(str, studies))})")
    return len(studies), instances


def orm(number: int) -> str:
    day = 20261210 + number % 10
    hour, minute = 7 + number % 12, (number * 7) % 60
    modality, station = MODALITIES[number % len(MODALITIES)], STATIONS[number % len(STATIONS)]
    accession = f"W{number:07d}"
    return "\r".join([
        f"MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261207||ORM^O01^ORM_O01|O{number}|P|2.5.1",
        f"PID|1||WL{number % 2000}^^^GENHOSP||Worklist{number % 2000}^Patient||19700101|F",
        "PV1|1|O||||||1234^Referring^Rita",
        f"ORC|NW|P{accession}|F{accession}||SC||^^^{day}{hour:02d}{minute:02d}^^R",
        f"OBR|1|P{accession}|F{accession}|{modality}X^{modality} exam^L||||||||||||||{accession}|"
        f"RP{accession}|SPS{accession}|{station}|||{modality}",
    ]) + "\r"


def adt(number: int, half: int) -> str:
    event = "A04" if number < half else "A08"
    return (f"MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261207||ADT^{event}^ADT_A01|A{number}|P|2.5.1\rEVN|{event}\r"
            f"PID|1||ADT{number % half}^^^GENHOSP||Name{number}^Given||19700101|F\r")


def send_all(server: WorkflowServer, messages: list[str]) -> tuple[float, int]:
    with MLLPClient(HOST, server.hl7_port) as client:
        started = time.perf_counter()
        answers = [client.send_message(message) for message in messages]
        elapsed = time.perf_counter() - started
    return elapsed, sum(b"MSA|AA" in answer for answer in answers)


def worklist_queries(server: WorkflowServer, count: int) -> dict[str, list[float]]:
    rng = random.Random("mwl")
    shapes = {
        "station + day": lambda: {"ScheduledStationAETitle": rng.choice(STATIONS),
                                  "ScheduledProcedureStepStartDate": f"{20261210 + rng.randrange(10)}"},
        "modality + 2 days": lambda: {"Modality": rng.choice(MODALITIES),
                                      "ScheduledProcedureStepStartDate":
                                          f"{20261210 + (day := rng.randrange(9))}-{20261211 + day}"},
        "accession": lambda: {"AccessionNumber": f"W{rng.randrange(10000):07d}"},
        "patient name prefix": lambda: {"PatientName": f"worklist{rng.randrange(10, 200)}*"},
    }
    timings: dict[str, list[float]] = {name: [] for name in shapes}
    matches: dict[str, int] = {name: 0 for name in shapes}
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(ModalityWorklistInformationFind)
    association = ae.associate(HOST, server.dicom_port, ae_title=server.ae_title)
    if not association.is_established:
        raise BenchError("the worklist association was refused")
    sock = getattr(association.dul.socket, "socket", None)
    if sock is not None:  # as a modality's dcmtk does: else each request waits for a delayed ACK (~40 ms)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for number in range(count):
            name = list(shapes)[number % len(shapes)]
            keys = shapes[name]()
            identifier = Dataset()
            identifier.PatientName = keys.pop("PatientName", "")
            identifier.PatientID = ""
            identifier.AccessionNumber = keys.pop("AccessionNumber", "")
            identifier.StudyInstanceUID = ""
            item = Dataset()
            for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                            "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID"):
                setattr(item, keyword, keys.get(keyword, ""))
            identifier.ScheduledProcedureStepSequence = [item]
            started = time.perf_counter()
            responses = [r for status, r in association.send_c_find(identifier, ModalityWorklistInformationFind)
                         if status and status.Status in (0xFF00, 0xFF01)]
            timings[name].append(time.perf_counter() - started)
            matches[name] += len(responses)
    finally:
        association.release()
    for name, values in timings.items():
        print(f"  MWL {name}: {summary(values)}, {matches[name] / max(len(values), 1):.0f} matches on average")
    return timings


def fhir_queries(server: WorkflowServer, count: int) -> list[float]:
    with sqlite3.connect(server.index_path) as connection:
        patients = [row[0] for row in connection.execute("SELECT DISTINCT patient_pk FROM study ORDER BY 1")]
    rng = random.Random("fhir")
    connection = http.client.HTTPConnection(HOST, server.http_port, timeout=30)
    headers = {**server.auth_headers(), "Accept": "application/fhir+json"}
    timings, entries = [], 0
    try:
        for _ in range(count):
            path = f"/fhir/ImagingStudy?patient=Patient/{rng.choice(patients)}"
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            timings.append(time.perf_counter() - started)
            if response.status != 200:
                raise BenchError(f"GET {path}: {response.status} {body[:300]!r}")
            entries += len(json.loads(body).get("entry", []))
    finally:
        connection.close()
    print(f"  FHIR ImagingStudy?patient=: {summary(timings)}, {entries / count:.1f} studies per answer "
          f"({len(patients)} patients)")
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=10_000, help="instances imported for real (a multiple of 1000)")
    parser.add_argument("--orders", type=int, default=10_000, help="ORM^O01 messages: the scheduled steps")
    parser.add_argument("--adt", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if not MOSAIC_BIN.exists():
        raise BenchError(f"{MOSAIC_BIN} is missing: run `make venv`")
    work = Path(tempfile.mkdtemp(prefix="bench-workflow-", dir=args.work))
    server = WorkflowServer(work)
    try:
        load(server, args.real)
        multiply(server.index_path, max(args.instances // args.real, 1))
        big_studies, big_instances = make_big_patient(server.index_path)
        server.start()
        print(f"Mosaic {server.version()} on SQLite, {args.instances} instances in the index", flush=True)

        elapsed, accepted = send_all(server, [orm(number) for number in range(args.orders)])
        print(f"ORM^O01: {args.orders} orders over one MLLP connection in {elapsed:.1f} s: "
              f"{args.orders / elapsed:.0f} messages/s, {accepted} answered AA", flush=True)
        half = args.adt // 2
        elapsed, accepted = send_all(server, [adt(number, half) for number in range(2 * half)])
        print(f"ADT: {2 * half} messages ({half} A04 creating, {half} A08 updating) in {elapsed:.1f} s: "
              f"{2 * half / elapsed:.0f} messages/s, {accepted} answered AA", flush=True)

        merge = ("MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261207||ADT^A40^ADT_A39|M1|P|2.5.1\rEVN|A40\r"
                 "PID|1||SURVIVOR^^^GENHOSP||Survivor^Sam||19700101|M\rMRG|BIGPATIENT^^^GENHOSP\r")
        elapsed, accepted = send_all(server, [merge])
        print(f"A40 merge of a patient with {big_studies} studies / {big_instances} instances: "
              f"{elapsed * 1e3:.0f} ms from send to ACK, answered {'AA' if accepted else 'not AA'}", flush=True)

        timings = worklist_queries(server, args.queries)
        print(f"MWL C-FIND with {args.orders} scheduled steps: "
              f"{summary([value for values in timings.values() for value in values])}", flush=True)
        fhir = fhir_queries(server, args.queries)
        print(f"FHIR ImagingStudy?patient= at {args.instances} instances: {summary(fhir)}")
        print(f"(median of all MWL: {statistics.median(v for vs in timings.values() for v in vs) * 1e3:.1f} ms)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
