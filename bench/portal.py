#!/usr/bin/env python3
"""The patient portal and content capture (issue 12): a patient's timeline of 500 studies across specialties,
patient search (fuzzy names with wildcards, ID with issuer) at 100,000 studies, and a 500 MB video and a 50 MB PDF
uploaded through the portal's form and STOW-RS, with the server's peak memory and the disk's write rate.

    PYTHONPATH=$PWD/src .venv/bin/python bench/portal.py [--studies 100000] [--real 1000] [--requests 100]
        [--video-mb 500] [--pdf-mb 50] [--skip-upload]

Mosaic only: Debian's Orthanc has no patient portal, timeline or capture upload to compare with.

The code under test is this work tree's: the script puts ``src/`` beside it first on ``sys.path`` (the in-process
loading and the timing of ``PortalService.timeline``) and starts ``mosaic serve`` with ``PYTHONPATH`` set to that
``src/`` (``PortalServer.environment``), so the server imports it before the editable install the shared venv
points at.

How the index gets to 100,000 studies: ``--real`` studies (one CT instance each, ~2.5 studies per patient,
patients with realistic names, a fifth of them with accents) are stored for real through
``IngestService.store``; their patient, study, series and instance rows are then copied (as ``bench/workflow.py``
does: unique values suffixed, the copies share the originals' blobs) and every copied patient gets a new name
drawn from the same lists (its studies carry it too). Then the timeline's patient, with 500 studies of every
specialty (1-3 series each, departments and facilities as a capture or a sender labels them), and a patient for the
uploads are stored for real. One server process (``mosaic serve``, SQLite, its defaults); http.client with the
admin's API token (authentication, access policy and audit on every request).

Uploads: the client streams each body from its file (Content-Length known, 1 MiB writes); the server's peak RSS is
``VmHWM`` from ``/proc/<pid>/status`` before and after each upload; the disk's sequential write rate is measured in
the same run, in the server's data folder, with ``dd ... oflag=direct`` and with a Python write + fsync loop.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this work tree's code (and tests.factory), not the venv's

from servers import HOST, MOSAIC_BIN, BenchError, MosaicServer  # noqa: E402
from workflow import COPY_OFFSET, _unique_text_columns, summary  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
ISSUER = "GENHOSP"
FAMILY = ["Müller", "García", "Nguyễn", "Kowalski", "Dvořák", "Søren", "Öztürk", "Lefèvre", "Ångström", "Smith",
          "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Martínez", "Hernández", "López", "González",
          "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Pérez", "Thompson",
          "White", "Harris", "Sánchez", "Clark", "Ramírez", "Lewis", "Robinson", "Walker", "Young", "Allen",
          "King", "Wright", "Scott", "Torres", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
          "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Schröder", "Weiß", "Fischer", "Becker", "Wagner",
          "Rossi", "Bianchi", "Dubois", "Moreau", "Laurent", "Petit", "Jansen", "de Vries", "Novák", "Horváth",
          "Nowak", "Wiśniewski", "Ivanova", "O'Brien", "Murphy", "Kelly", "Sato", "Suzuki", "Kim", "Park", "Chen"]
GIVEN = ["Jürgen", "José", "François", "Zoë", "Łukasz", "Renée", "Søren", "Björn", "Inès", "Ana", "James", "Mary",
         "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William", "Elizabeth", "David", "Barbara",
         "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy",
         "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Margaret", "Paul", "Sandra", "Steven", "Ashley", "Andrew",
         "Emily", "Joshua", "Donna", "Kenneth", "Michelle", "Kevin", "Carol", "Brian", "Amanda", "George",
         "Melissa", "Hans", "Anna", "Peter", "Maria", "Luca", "Giulia", "Pierre", "Camille", "Jan", "Eva",
         "Antonín", "Zsófia", "Piotr", "Olga", "Seán", "Aoife", "Hiroshi", "Yuki", "Min-jun", "Wei", "Joao",
         "Mélanie", "Chloé", "Noël", "Raphaël", "Åsa"]
SPECIALTIES = [  # (modality, SOP Class, department label or "" for "by modality", share)
    ("CT", "1.2.840.10008.5.1.4.1.1.2", "", 18), ("MR", "1.2.840.10008.5.1.4.1.1.4", "", 12),
    ("CR", "1.2.840.10008.5.1.4.1.1.1", "", 10), ("US", "1.2.840.10008.5.1.4.1.1.6.1", "", 8),
    ("MG", "1.2.840.10008.5.1.4.1.1.1.2", "", 4), ("ECG", "1.2.840.10008.5.1.4.1.1.9.1.1", "cardiology", 10),
    ("IVUS", "1.2.840.10008.5.1.4.1.1.3.1", "", 3), ("OP", "1.2.840.10008.5.1.4.1.1.77.1.5.1", "", 8),
    ("ES", "1.2.840.10008.5.1.4.1.1.77.1.1.1", "endoscopy", 6),
    ("SM", "1.2.840.10008.5.1.4.1.1.77.1.6", "pathology", 4), ("IO", "1.2.840.10008.5.1.4.1.1.1.3", "", 4),
    ("XC", "1.2.840.10008.5.1.4.1.1.77.1.4", "dermatology", 8), ("DOC", "1.2.840.10008.5.1.4.1.1.104.1", "", 3),
    ("SR", "1.2.840.10008.5.1.4.1.1.88.33", "", 2)]
FACILITIES = ["GENHOSP", "NORTHCLINIC", "EYECENTRE", ""]
BODY_PARTS = ["CHEST", "ABDOMEN", "HEAD", "KNEE", "HAND", "SKIN", "EYE", "HEART", ""]


def random_name(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"


class PortalServer(MosaicServer):
    """``mosaic serve`` importing this work tree's code (``PYTHONPATH``), not the shared venv's editable one."""

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH", "")])])
        return env

    @property
    def index_path(self) -> Path:
        return self.data_dir / "data" / "index.sqlite"


# --- loading -------------------------------------------------------------------------------------------------

def open_node(server: PortalServer) -> Any:
    from mosaic.app import Mosaic
    from mosaic.config import Settings

    return Mosaic(Settings(data_dir=server.data_dir / "data"), create=False)


def load_population(server: PortalServer, real: int) -> None:
    """``real`` studies of ~real/2.5 patients, one small CT instance each, stored through ingest."""
    from tests.factory import make_bytes

    from mosaic.services.origin import IngestOrigin

    rng = random.Random("population")
    patients = max(real * 2 // 5, 1)
    names = [random_name(rng) for _ in range(patients)]
    node = open_node(server)
    started = time.perf_counter()
    for number in range(real):
        patient = number % patients
        data = make_bytes(patient_id=f"P{patient:06d}", issuer=ISSUER, patient_name=names[patient],
                          study_date=f"{2005 + number % 20}{1 + number % 12:02d}{1 + number % 28:02d}",
                          accession=f"A{number:07d}", rows=4, columns=4, charset="ISO_IR 192",
                          modality=rng.choice(["CT", "MR", "CR", "US", "XC", "ECG"]))
        node.ingest.store(data, IngestOrigin(door="test", facility=rng.choice(FACILITIES)))
    node.stop()
    print(f"stored {real} studies of {patients} patients in {time.perf_counter() - started:.0f} s", flush=True)


def multiply(path: Path, copies: int) -> None:
    """As ``bench/workflow.py``: the patient, study, series and instance rows copied ``copies`` times (unique text
    values suffixed); then each copied patient gets a new name (its studies too)."""
    from mosaic.core.names import fold_name

    foreign = {"study": ("patient_pk",), "series": ("study_pk",), "instance": ("series_pk",)}
    rng = random.Random("copies")
    with sqlite3.connect(path) as connection:
        for table in ("patient", "study", "series", "instance"):
            names = [row[1] for row in connection.execute(f"PRAGMA table_info('{table}')")]
            unique = _unique_text_columns(connection, table) - {"IssuerOfPatientID"}
            if table == "patient":
                unique |= {"PatientID"}  # unique with the issuer: a copy is another patient
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
        renamed = []
        for (pk,) in connection.execute(f"SELECT pk FROM patient WHERE pk >= {COPY_OFFSET}").fetchall():
            name = random_name(rng)
            renamed.append((name, name.upper(), fold_name(name), pk))
        connection.executemany('UPDATE patient SET "PatientName" = ?, "PatientNameUpper" = ?, '
                               '"PatientNameFuzzy" = ? WHERE pk = ?', renamed)
        connection.executemany('UPDATE study SET "PatientName" = ?, "PatientNameUpper" = ?, '
                               '"PatientNameFuzzy" = ? WHERE patient_pk = ?', renamed)
        count = connection.execute("SELECT count(*) FROM study").fetchone()[0]
        patients = connection.execute("SELECT count(*) FROM patient").fetchone()[0]
    print(f"index multiplied to {count} studies of {patients} patients", flush=True)


def load_big_patient(server: PortalServer, studies: int) -> int:
    """One patient with ``studies`` studies of every specialty; answers its primary key."""
    from pydicom.uid import generate_uid
    from tests.factory import PREFIX, make_bytes

    from mosaic.services.origin import IngestOrigin

    rng = random.Random("timeline")
    weights = [share for *_rest, share in SPECIALTIES]
    node = open_node(server)
    started = time.perf_counter()
    instances = 0
    for number in range(studies):
        modality, sop_class, department, _share = rng.choices(SPECIALTIES, weights)[0]
        study_uid = generate_uid(prefix=PREFIX)
        day = f"{2000 + number % 25}{1 + number % 12:02d}{1 + (number * 7) % 28:02d}"
        facility = rng.choice(FACILITIES)
        for series_number in range(1, 2 + rng.randrange(3)):
            data = make_bytes(patient_id="TIMELINE1", issuer=ISSUER, patient_name="Lefèvre^Zoë^Marie",
                              study_uid=study_uid, series_uid=generate_uid(prefix=PREFIX), modality=modality,
                              sop_class_uid=sop_class, study_date=day, study_time=f"{8 + number % 10:02d}3000",
                              accession=f"T{number:07d}", rows=4, columns=4, charset="ISO_IR 192",
                              SeriesNumber=series_number,
                              BodyPartExamined=rng.choice(BODY_PARTS), StudyDescription=f"{modality} study {number}")
            node.ingest.store(data, IngestOrigin(door="test", facility=facility, department=department))
            instances += 1
    # the uploads' patient
    node.ingest.store(make_bytes(patient_id="CAPTURE1", issuer=ISSUER, patient_name="Dvořák^Antonín", rows=4,
                                 columns=4, charset="ISO_IR 192"), IngestOrigin(door="test"))
    node.stop()
    with sqlite3.connect(server.index_path) as connection:
        [pk] = connection.execute("SELECT pk FROM patient WHERE \"PatientID\" = 'TIMELINE1'").fetchone()
        # an archive in service announced its studies long ago: else the server's availability worker spends
        # the whole run announcing 100,000 studies (a commit each) beside the requests measured
        connection.execute("UPDATE study SET available_at = updated_at WHERE available_at IS NULL")
        connection.execute("ANALYZE")
    print(f"stored the timeline's patient: {studies} studies, {instances} instances in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return int(pk)


def patient_pk(server: PortalServer, patient_id: str) -> int:
    with sqlite3.connect(server.index_path) as connection:
        return int(connection.execute("SELECT pk FROM patient WHERE \"PatientID\" = ?", (patient_id,)).fetchone()[0])


# --- reads ---------------------------------------------------------------------------------------------------

def timed_gets(server: PortalServer, paths: list[str], warmup: int = 10) -> tuple[list[float], int, int]:
    """GET each path (after ``warmup`` of them untimed); answers the timings, bytes of the last and 200s."""
    connection = http.client.HTTPConnection(HOST, server.http_port, timeout=60)
    headers = {**server.auth_headers(), "Accept": "text/html"}
    timings: list[float] = []
    size = ok = 0
    try:
        for number, path in enumerate(paths[:warmup] + paths):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise BenchError(f"GET {path}: {response.status} {body[:300]!r}")
            if number >= warmup:
                timings.append(elapsed)
                size, ok = len(body), ok + 1
    finally:
        connection.close()
    return timings, size, ok


def timeline_bench(server: PortalServer, pk: int, requests: int) -> None:
    from mosaic.index.query import Scope
    from mosaic.services.portal import PortalService

    timings, size, _ok = timed_gets(server, [f"/portal/patients/{pk}"] * requests)
    print(f"GET /portal/patients/{pk} (500 studies): {summary(timings)}, {size / 1024:.0f} KiB of HTML", flush=True)
    filtered, _size, _ok = timed_gets(server, [f"/portal/patients/{pk}?specialty=radiology&group=site"] * requests)
    print(f"  ?specialty=radiology&group=site: {summary(filtered)}", flush=True)
    node = open_node(server)
    try:
        portal = PortalService(node.database, node.query)
        inside = []
        for number in range(requests + 10):
            started = time.perf_counter()
            found = portal.timeline(pk, scope=Scope.everything())
            if number >= 10:
                inside.append(time.perf_counter() - started)
        assert found is not None
        print(f"  PortalService.timeline alone (in this process, {len(found.studies)} studies, "
              f"{len(found.specialties)} specialties): {summary(inside)}", flush=True)
    finally:
        node.stop()


def search_bench(server: PortalServer, requests: int) -> None:
    rng = random.Random("search")
    with sqlite3.connect(server.index_path) as connection:
        ids = [row[0] for row in connection.execute(
            "SELECT \"PatientID\" FROM patient WHERE \"PatientID\" LIKE 'P%' ORDER BY random() LIMIT 500")]
    shapes: dict[str, Any] = {
        "family name, no accents (muller → Müller)": lambda: "name=" + rng.choice(["muller", "garcia", "dvorak",
                                                                                   "lefevre", "nguyen", "ozturk"]),
        "given name prefix (zo → Zoë)": lambda: "name=" + rng.choice(["zo", "jur", "fran", "luk", "ren", "bjo"]),
        "wildcards (gar*a, m?ller, *ski)": lambda: "name=" + rng.choice(["gar*a", "m%3Fller", "%2Aski", "sm*th",
                                                                         "k%3Fm", "wi*ski"]),
        "family^given (garcia^jose)": lambda: "name=" + rng.choice(["garcia%5Ejose", "muller%5Ejurgen",
                                                                    "smith%5Ejohn", "lopez%5Eana"]),
        "id + issuer": lambda: f"id={rng.choice(ids)}&issuer={ISSUER}",
    }
    everything: list[float] = []
    for label, make in shapes.items():
        paths = [f"/portal?{make()}" for _ in range(requests)]
        timings, size, _ok = timed_gets(server, paths)
        everything += timings
        print(f"  GET /portal?{paths[0].split('?', 1)[1]} … [{label}]: {summary(timings)}, last {size // 1024} KiB",
              flush=True)
    print(f"patient search, all shapes: {summary(everything)}", flush=True)


# --- uploads -------------------------------------------------------------------------------------------------

def make_video(megabytes: int) -> Path:
    """An H.264 MP4 of about ``megabytes`` MB (1080p30, noise so that the encoder uses its 40 Mbit/s); cached."""
    target = CACHE / f"portal-video-{megabytes}mb.mp4"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.mp4")
    seconds = max(1, round(megabytes * 8 / 40))  # 40 Mbit/s
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=1920x1080:rate=30,noise=alls=60:allf=t", "-c:v", "libx264", "-preset",
                    "ultrafast", "-b:v", "40M", "-maxrate", "40M", "-bufsize", "40M", "-level", "4.1", "-pix_fmt",
                    "yuv420p", "-t", str(seconds), str(partial)], check=True)
    partial.rename(target)
    print(f"made {target.name} ({target.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")
    return target


def make_pdf(megabytes: int) -> Path:
    """A one-page PDF with a ``megabytes`` MB stream (random bytes) and a correct cross-reference table."""
    target = CACHE / f"portal-document-{megabytes}mb.pdf"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    size = megabytes * 1_000_000
    with target.open("wb") as out:
        out.write(b"%PDF-1.4\n")
        offsets = []
        for number, body in enumerate([b"<< /Type /Catalog /Pages 2 0 R >>",
                                       b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                       b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"], start=1):
            offsets.append(out.tell())
            out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
        offsets.append(out.tell())
        out.write(b"4 0 obj\n<< /Length %d >>\nstream\n" % size)
        for _ in range(size // (1 << 20)):
            out.write(os.urandom(1 << 20))
        out.write(os.urandom(size % (1 << 20)))
        out.write(b"\nendstream\nendobj\n")
        xref = out.tell()
        out.write(b"xref\n0 5\n0000000000 65535 f \n")
        for offset in offsets:
            out.write(b"%010d 00000 n \n" % offset)
        out.write(b"trailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return target


def disk_rate(folder: Path, megabytes: int = 1000) -> tuple[float, float]:
    """The file system's sequential write rate in MB/s: dd with O_DIRECT, and Python writes of 1 MiB + fsync."""
    target = folder / "dd-probe.bin"
    try:
        result = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={megabytes}",
                                 "oflag=direct"], capture_output=True, text=True, check=True)
        match = re.search(r"([\d.]+) s, ", result.stderr)
        dd = megabytes * (1 << 20) / float(match.group(1)) / 1e6 if match else 0.0
        target.unlink()
        block = os.urandom(1 << 20)
        started = time.perf_counter()
        with target.open("wb") as out:
            for _ in range(megabytes):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        python = megabytes * (1 << 20) / (time.perf_counter() - started) / 1e6
    finally:
        target.unlink(missing_ok=True)
    return dd, python


def hwm_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmHWM:", "VmRSS:")):
                values[line.split(":")[0]] = int(line.split()[1])
    return values["VmHWM"], values["VmRSS"]


def _post_streamed(server: PortalServer, path: str, content_type: str, pieces: list[bytes | Path],
                   headers: dict[str, str] | None = None) -> tuple[int, bytes, float, int]:
    """POST a body made of byte strings and files (each file read in 1 MiB chunks); answers the status, the
    answer, the seconds from the first byte sent to the answer read, and the body's length."""
    length = sum(piece.stat().st_size if isinstance(piece, Path) else len(piece) for piece in pieces)
    connection = http.client.HTTPConnection(HOST, server.http_port, timeout=900)
    try:
        started = time.perf_counter()
        connection.putrequest("POST", path)
        for key, value in {**server.auth_headers(), **(headers or {}), "Content-Type": content_type,
                           "Content-Length": str(length)}.items():
            connection.putheader(key, value)
        connection.endheaders()
        for piece in pieces:
            if isinstance(piece, Path):
                with piece.open("rb") as stream:
                    while chunk := stream.read(1 << 20):
                        connection.send(chunk)
            else:
                connection.send(piece)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - started, length
    finally:
        connection.close()


def portal_upload(server: PortalServer, pk: int, source: Path, media_type: str) -> tuple[int, bytes, float, int]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"specialty\"\r\n\r\ndermatology\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{source.name}\"\r\n"
            f"Content-Type: {media_type}\r\n\r\n").encode()
    return _post_streamed(server, f"/portal/patients/{pk}/captures", f"multipart/form-data; boundary={boundary}",
                          [head, source, f"\r\n--{boundary}--\r\n".encode()], {"Accept": "text/html"})


def stow_upload(server: PortalServer, source: Path, media_type: str, sop_class: str,
                tag: str) -> tuple[int, bytes, float, int]:
    from pydicom.uid import generate_uid

    study = generate_uid(prefix="1.2.826.0.1.3680043.10.1234.61.")[:50]
    document = [{"00080016": {"vr": "UI", "Value": [sop_class]}, "00080018": {"vr": "UI", "Value": [f"{study}.1.1"]},
                 "0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [f"{study}.1"]},
                 "00100020": {"vr": "LO", "Value": ["CAPTURE1"]}, "00100021": {"vr": "LO", "Value": [ISSUER]},
                 "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Dvořák^Antonín"}]},
                 "00081040": {"vr": "LO", "Value": ["endoscopy"]}, tag: {"vr": "OB", "BulkDataURI": "1"}}]
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n{json.dumps(document)}\r\n"
            f"--{boundary}\r\nContent-Type: {media_type}\r\nContent-Location: 1\r\n\r\n").encode()
    return _post_streamed(server, "/dicom-web/studies",
                          f'multipart/related; type="application/dicom+json"; boundary={boundary}',
                          [head, source, f"\r\n--{boundary}--\r\n".encode()], {"Accept": "application/dicom+json"})


def upload_bench(server: PortalServer, video_mb: int, pdf_mb: int, repeat: int) -> None:
    video, pdf = make_video(video_mb), make_pdf(pdf_mb)
    data = server.data_dir / "data"
    dd, python = disk_rate(data)
    print(f"disk (the data folder's file system): dd bs=1M count=1000 oflag=direct {dd:.0f} MB/s, "
          f"Python 1 MiB writes + fsync {python:.0f} MB/s", flush=True)
    pk = patient_pk(server, "CAPTURE1")
    runs = [("portal form, video", lambda: portal_upload(server, pk, video, "video/mp4")),
            ("portal form, PDF", lambda: portal_upload(server, pk, pdf, "application/pdf")),
            ("STOW-RS JSON + video/mp4", lambda: stow_upload(server, video, "video/mp4",
                                                             "1.2.840.10008.5.1.4.1.1.77.1.4.1", "7FE00010")),
            ("STOW-RS JSON + application/pdf", lambda: stow_upload(server, pdf, "application/pdf",
                                                                   "1.2.840.10008.5.1.4.1.1.104.1", "00420011"))]
    for label, run in runs:
        for attempt in range(repeat):
            before, rss_before = hwm_kib(server.pid)
            status, body, elapsed, length = run()
            after, rss_after = hwm_kib(server.pid)
            if status not in (200, 201):
                raise BenchError(f"{label}: {status} {body[:500]!r}")
            rate = length / elapsed / 1e6
            print(f"{label} ({length / 1e6:.0f} MB) #{attempt + 1}: {elapsed:.1f} s, {rate:.0f} MB/s "
                  f"({rate / dd * 100:.0f} % of dd), server VmHWM {before / 1024:.0f} → {after / 1024:.0f} MiB "
                  f"(+{(after - before) / 1024:.0f}), VmRSS {rss_before / 1024:.0f} → {rss_after / 1024:.0f} MiB",
                  flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=1000, help="studies stored for real, then copied")
    parser.add_argument("--timeline", type=int, default=500, help="studies of the timeline's patient")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--video-mb", type=int, default=500)
    parser.add_argument("--pdf-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=2, help="uploads of each kind")
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--skip-reads", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data folder (its path is printed)")
    args = parser.parse_args()
    if not MOSAIC_BIN.exists():
        raise BenchError(f"{MOSAIC_BIN} is missing: run `make venv`")
    work = Path(tempfile.mkdtemp(prefix="bench-portal-", dir=args.work))
    server = PortalServer(work)
    try:
        server.initialise()
        if not args.skip_reads:
            load_population(server, args.real)
            multiply(server.index_path, max(args.studies // args.real, 1))
        pk = load_big_patient(server, args.timeline)
        server.start()
        print(f"Mosaic {server.version()} on SQLite (server pid {server.pid}, code from {ROOT / 'src'})", flush=True)
        if not args.skip_reads:
            timeline_bench(server, pk, args.requests)
            search_bench(server, args.requests)
        if not args.skip_upload:
            upload_bench(server, args.video_mb, args.pdf_mb, args.repeat)
    finally:
        server.stop()
        if args.keep:
            print(f"kept {server.data_dir / 'data'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
