"""Signed checkpoints of the audit chain, kept outside the index: what anchors the chain against its own database.

The hash chain alone proves nothing to someone who can write the index: they can cut records off the end and move
the head back, or edit a record and recompute every later hash. So each audit writer signs, with an Ed25519 key
that is not in the index, a checkpoint of the last record it appended (its ``seq`` and ``hash``, when, which
process) and appends it as one JSON line to an append-only file (``O_APPEND``, one ``write``, ``fsync``), and to
the syslog collector when one is configured. ``AuditTrail.verify`` then checks every checkpoint's signature and
that the record it names is in the chain with that hash: a rewrite with recomputed hashes, or a truncation below
the newest checkpoint, no longer passes. Several processes and nodes append their own lines; lines are
independent. The threat model (what this does and does not protect against) is in docs/audit.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from mosaic.config import Settings

log = logging.getLogger("mosaic.audit")

VERSION = 1
_SIGNED = ("v", "seq", "hash", "at", "node", "key")
"""The fields a checkpoint's signature covers, in this order."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key (SHA-256 of its raw bytes), so a checkpoint says which key signed it."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _payload(values: dict[str, object]) -> bytes:
    return json.dumps([values.get(name) for name in _SIGNED], ensure_ascii=False, separators=(",", ":")).encode()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``; made (mode 0600, and its public half next to it) if there is none yet.
    Processes starting together race safely: the key is written aside and linked into place once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, pem)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            verify_path = path.with_name(path.stem + ".pub.pem")
            if not verify_path.exists():
                verify_path.write_bytes(public_pem(key.public_key()))
            log.warning("audit: made the checkpoint signing key %s (public half: %s). In production keep it "
                        "out of the data directory, where the index's database and its administrators cannot "
                        "read it (security.audit_signing_key_file, docs/audit.md)", path, verify_path)
        finally:
            aside.unlink(missing_ok=True)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"audit signing key {path} is not an Ed25519 private key")
    return loaded


def load_verify_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Every public key in the PEM file ``path`` (one per node that signs), by :func:`key_id`."""
    keys: dict[str, Ed25519PublicKey] = {}
    text = path.read_text(encoding="ascii")
    marker = "-----END PUBLIC KEY-----"
    for block in text.split(marker)[:-1]:
        key = serialization.load_pem_public_key((block.strip() + "\n" + marker + "\n").encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"audit verify key file {path} holds a key that is not Ed25519")
        keys[key_id(key)] = key
    if not keys:
        raise ValueError(f"audit verify key file {path} holds no public key")
    return keys


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement: "record ``seq`` of the chain had hash ``hash`` when ``node`` wrote it"."""

    seq: int
    hash: str
    at: str
    node: str
    key: str
    line: int = 0
    """Where it was read in the anchor file (1-based)."""


@dataclass
class AnchorReading:
    """The checkpoints of an anchor file whose signatures hold, or the first line that is not one."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    bad_line: int | None = None
    reason: str = ""


def sign(key: Ed25519PrivateKey, seq: int, digest: str, node: str, at: datetime | None = None) -> bytes:
    """The anchor-file line (JSON, newline-terminated) of a checkpoint of record ``seq`` with hash ``digest``."""
    values: dict[str, object] = {"v": VERSION, "seq": seq, "hash": digest,
                                 "at": (at or datetime.now(UTC)).isoformat(timespec="microseconds"),
                                 "node": node, "key": key_id(key.public_key())}
    values["sig"] = base64.b64encode(key.sign(_payload(values))).decode()
    return (json.dumps(values, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def read_anchor_file(path: Path, keys: dict[str, Ed25519PublicKey] | None) -> AnchorReading:
    """Every checkpoint in ``path``, each signature checked against ``keys``; stops at the first line that is not a
    well-formed checkpoint signed by one of them. A last line cut short (a crash during its write) is ignored."""
    reading = AnchorReading()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return reading
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            values = json.loads(raw)
            checkpoint = Checkpoint(seq=int(values["seq"]), hash=str(values["hash"]), at=str(values["at"]),
                                    node=str(values["node"]), key=str(values["key"]), line=number)
            signature = base64.b64decode(values["sig"], validate=True)
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # no newline after it: the write was cut short
                log.warning("audit: ignoring the unfinished last line %d of %s", number, path)
                break
            return _bad(reading, number, f"line {number} of {path} is not a checkpoint")
        if keys is None:
            return _bad(reading, number, f"the checkpoints in {path} cannot be checked: no verify key "
                                         "(security.audit_verify_key_file)")
        public = keys.get(checkpoint.key)
        if public is None:
            return _bad(reading, number, f"the checkpoint on line {number} of {path} is signed by key "
                                         f"{checkpoint.key}, which is not a verify key")
        try:
            public.verify(signature, _payload(values))
        except InvalidSignature:
            return _bad(reading, number, f"the checkpoint on line {number} of {path} (record {checkpoint.seq}) "
                                         "has a signature that does not match it: forged or altered")
        reading.checkpoints.append(checkpoint)
    return reading


def _bad(reading: AnchorReading, line: int, reason: str) -> AnchorReading:
    reading.bad_line, reading.reason = line, reason
    return reading


class AuditAnchor:
    """Signs and appends checkpoints of what this process's audit writer committed, at most ``interval`` seconds
    after each commit (0: after every one); reads them back for verification."""

    def __init__(self, anchor_file: Path, signing_key_file: Path, verify_key_file: Path | None = None, *,
                 interval: float = 1.0) -> None:
        self.anchor_file = anchor_file
        self.signing_key_file = signing_key_file
        self.verify_key_file = verify_key_file
        self.interval = interval
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.listeners: list[Callable[[bytes], None]] = []
        """Called with each checkpoint line once it is in the file (the syslog forwarder sends it on)."""
        self._key: Ed25519PrivateKey | None = None
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None
        self._anchored: int = 0
        self._last = time.monotonic()

    def open(self) -> None:
        """Load (or make) the signing key now, so a missing or unreadable key shows at start, not at the first
        checkpoint."""
        with self._lock:
            self._signing_key()
            self.anchor_file.parent.mkdir(parents=True, exist_ok=True)

    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_signing_key(self.signing_key_file)
        return self._key

    def committed(self, seq: int, digest: str) -> None:
        """This process appended records up to ``seq``, the last with hash ``digest``."""
        with self._lock:
            if self._head is None or seq > self._head[0]:
                self._head = (seq, digest)

    def checkpoint_if_due(self) -> None:
        if self._head is not None and self._head[0] > self._anchored \
                and time.monotonic() - self._last >= self.interval:
            self.checkpoint()

    def checkpoint(self) -> bool:
        """Sign and append a checkpoint of the newest committed record not yet anchored; False if there is
        none or it could not be written (logged; tried again at the next one)."""
        with self._lock:
            head = self._head
            if head is None or head[0] <= self._anchored:
                return False
            try:
                line = sign(self._signing_key(), head[0], head[1], self.node)
                self.anchor_file.parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(self.anchor_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                try:
                    os.write(descriptor, line)  # one write per line: lines of several processes never mix
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
            except Exception:
                log.exception("audit: cannot write the checkpoint of record %d to %s; retrying", head[0],
                              self.anchor_file)
                return False
            self._anchored, self._last = head[0], time.monotonic()
        for listener in self.listeners:
            listener(line)
        return True

    # --- verification -----------------------------------------------------------------------

    def verify_keys(self) -> dict[str, Ed25519PublicKey] | None:
        """The keys checkpoints must be signed with: the verify key file, else the signing key's public half
        (None when there is neither; never makes a key)."""
        if self.verify_key_file is not None:
            return load_verify_keys(self.verify_key_file)
        if self._key is not None:
            return {key_id(self._key.public_key()): self._key.public_key()}
        if self.signing_key_file.exists():
            key = load_or_create_signing_key(self.signing_key_file)
            return {key_id(key.public_key()): key.public_key()}
        return None

    def read(self, extra: list[Path] | None = None) -> AnchorReading:
        """Every checkpoint of the anchor file (and of ``extra`` files, e.g. other nodes'), signatures checked."""
        keys = self.verify_keys()
        combined = AnchorReading()
        for path in [self.anchor_file, *(extra or [])]:
            reading = read_anchor_file(path, keys)
            combined.checkpoints.extend(reading.checkpoints)
            if reading.bad_line is not None:
                combined.bad_line, combined.reason = reading.bad_line, reading.reason
                return combined
        return combined


def anchor_for(settings: Settings) -> AuditAnchor:
    """The anchor of a node's audit trail, its files as configured (default: in the data directory)."""
    security = settings.security
    return AuditAnchor(security.audit_anchor_file or settings.data_dir / "audit-anchors.jsonl",
                       security.audit_signing_key_file or settings.data_dir / "audit-signing-key.pem",
                       security.audit_verify_key_file, interval=security.audit_checkpoint_seconds)
