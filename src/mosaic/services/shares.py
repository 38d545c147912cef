"""Share links: studies of one patient shared with someone outside the hospital (an outside provider, the patient,
a tumour board) through ``/share/<token>``.

A link is created by a user with the ``share`` permission, for studies within their own scope, at most
``sharing.max_studies`` of them, valid ``sharing.default_days`` (at most ``sharing.max_days``). Its token is 256
random bits of which only the SHA-256 is stored; its optional PIN (8 digits, said once to the creator, to be sent
separately) only as an argon2id hash; ``sharing.pin_attempts`` wrong PINs lock it. The recipient has no account:
opening the link (with its PIN) starts a *share session* (a random identifier in the ``mosaic_share`` cookie, kept
as its SHA-256 in ``share_session``, at most ``sharing.session_minutes`` and never past the link's expiry). The
session is a :class:`~mosaic.governance.policy.Principal` of kind ``share`` whose scope is exactly the link's
studies (``break_glass_studies`` with no facility or department), so every scoped read — the portal's study view,
QIDO-RS, WADO-RS, the content service — gives it those studies and nothing else.

A de-identified link is download-only: its session has no permission at all (DICOMweb would send the stored,
identified objects); the recipient gets a zip whose every instance went through the PS3.15 Basic Profile
(:mod:`mosaic.governance.deid`, the link's own secret: the same pseudonyms at each download), instances that may
carry burned-in text left out and named in the README. Every download is an IHE Portable Data for Imaging file-set:
a ``DICOMDIR`` at the root (pydicom's :class:`~pydicom.fileset.FileSet`), the instances under ``DICOM/`` with
8-character names, a ``README.TXT``; written to a temporary folder an instance at a time and streamed as a zip.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydicom.filebase import DicomFileLike
from pydicom.fileset import FileSet
from sqlalchemy import delete, func, select, update

from mosaic.config import SharingSettings
from mosaic.core.times import as_utc
from mosaic.governance.deid import DeidentificationOptions, Deidentifier, burned_in_annotation_reason
from mosaic.governance.policy import AccessDenied, AccessPolicy, Permission, Principal
from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import Patient, ShareLink, ShareSession, Study
from mosaic.services.egress import EgressContext
from mosaic.services.retrieve import RetrieveService

RECIPIENT_KINDS = {"provider": "an outside provider", "patient": "the patient", "tumour-board": "a tumour board"}
"""Whom a link is for (``recipient_kind``) and how pages say it."""
PIN_DIGITS = 8
_UID = re.compile(r"^[0-9.]{1,64}$")
_CHUNK = 1 << 20
_hasher = PasswordHasher()


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ShareRefused(Exception):
    """A link cannot be created, opened or used; ``status`` is the HTTP answer (400, 403, 404, 410, 429) and the
    message says why in words a recipient may read (never patient data)."""

    def __init__(self, message: str, *, status: int, retry_after: float = 0.0, share: ShareView | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.share = share
        """The link refused, when the token named one (its id and creator go into the audit record)."""
        self.retry_after = max(1, math.ceil(retry_after)) if retry_after else 0


@dataclass(frozen=True)
class ShareView:
    id: int
    created_by: str
    created_at: datetime
    expires_at: datetime
    recipient_kind: str
    note: str
    PatientID: str
    IssuerOfPatientID: str
    studies: tuple[str, ...]
    has_pin: bool
    pin_failures: int
    deidentified: bool
    revoked_at: datetime | None
    revoked_by: str
    uses: int
    last_used_at: datetime | None
    locked: bool

    def state(self, now: datetime | None = None) -> str:
        """active, revoked, expired or locked (too many wrong PINs)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "locked" if self.locked else "active"

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "created_by": self.created_by, "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat(), "recipient": self.recipient_kind, "note": self.note,
                "PatientID": self.PatientID, "IssuerOfPatientID": self.IssuerOfPatientID,
                "studies": list(self.studies), "pin": self.has_pin, "deidentified": self.deidentified,
                "state": self.state(), "revoked_by": self.revoked_by, "uses": self.uses,
                "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None}


@dataclass(frozen=True)
class CreatedShare:
    """A new link: the token and PIN are said here once, and never again (only their hashes are kept)."""

    share: ShareView
    token: str
    pin: str


class RefusalThrottle:
    """Refused link openings per client address, in memory (a restart forgets them): at most ``per_minute`` in a
    sliding minute, then the address waits. ``clock`` is replaceable (tests)."""

    WINDOW = 60.0
    SIZE = 100_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._refused: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            moments = self._recent(address, now)
            if len(moments) >= self.per_minute:
                wait = moments[0] + self.WINDOW - now
                raise ShareRefused(f"too many refused attempts from this address: try again in {math.ceil(wait)} s",
                                   status=429, retry_after=wait)

    def refused(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            self._recent(address, now).append(now)
            if len(self._refused) > self.SIZE:
                self._refused = {key: value for key, value in self._refused.items()
                                 if value and now - value[-1] < self.WINDOW}

    def _recent(self, address: str, now: float) -> deque[float]:
        moments = self._refused.setdefault(address, deque())
        while moments and now - moments[0] >= self.WINDOW:
            moments.popleft()
        return moments


class ShareService:
    """Creates, lists, revokes and opens share links, and writes their downloads."""

    def __init__(self, database: Database, policy: AccessPolicy, retrieve: RetrieveService,
                 settings: SharingSettings, *, cache_seconds: float = 0.0,
                 creator: Callable[[str], Principal | bool | None] | None = None) -> None:
        self.creator = creator
        """The creator's account as it stands now (``IdentityService.account_now``): a Principal, False when it
        was disabled or removed, None when there is no local account to ask (a single sign-on user)."""
        self.database = database
        self.policy = policy
        self.retrieve = retrieve
        self.settings = settings
        self.throttle = RefusalThrottle(settings.refusals_per_minute)
        self.cache_seconds = cache_seconds
        """A session checked this long ago is trusted again without the index (a viewer's frame requests); a
        revocation on this node counts at once, on another node within this time."""
        self._sessions: dict[str, tuple[float, ShareView]] = {}
        self._lock = threading.Lock()

    # --- the creator's side -----------------------------------------------------------------

    def create(self, principal: Principal, studies: list[str], *, recipient_kind: str, note: str = "",
               days: int | None = None, pin: bool = False, deidentified: bool = False) -> CreatedShare:
        """A new link to ``studies`` (all of one patient, all within the creator's scope)."""
        try:
            AccessPolicy.require(principal, Permission.SHARE)
        except AccessDenied as exc:
            raise ShareRefused(str(exc), status=403) from None
        if principal.kind not in ("user", "token", "oidc"):
            raise ShareRefused("only a user may share studies", status=403)
        if recipient_kind not in RECIPIENT_KINDS:
            raise ShareRefused(f"recipient must be one of {', '.join(RECIPIENT_KINDS)}", status=400)
        wanted = list(dict.fromkeys(uid.strip() for uid in studies if uid and uid.strip()))
        if not wanted:
            raise ShareRefused("name at least one study to share", status=400)
        if len(wanted) > self.settings.max_studies:
            raise ShareRefused(f"a link carries at most {self.settings.max_studies} studies (sharing.max_studies); "
                               f"{len(wanted)} were named", status=400)
        if not all(_UID.match(uid) for uid in wanted):
            raise ShareRefused("a study is named by its Study Instance UID (digits and dots)", status=400)
        days = self.settings.default_days if days is None else days
        if not 1 <= days <= self.settings.max_days:
            raise ShareRefused(f"a link is valid 1 to {self.settings.max_days} days (sharing.max_days)", status=400)
        # the creator's own facilities and departments, never its break-glass openings: an emergency look at
        # another site's study is not a right to hand it on for weeks
        full = self.policy.scope(principal)
        scope = Scope(full.facilities, full.departments)
        with self.database.session() as session:
            rows = session.execute(select(Study.StudyInstanceUID, Study.patient_pk, Patient.PatientID,
                                          Patient.IssuerOfPatientID).join(Patient, Study.patient_pk == Patient.pk)
                                   .where(Study.StudyInstanceUID.in_(wanted), scope.study_condition())).all()
        found = {row[0]: row for row in rows}
        missing = [uid for uid in wanted if uid not in found]
        if missing:  # an unknown study and another facility's are refused alike
            raise ShareRefused(f"study {missing[0]} is not one you may share (not in your scope, or not in the "
                               "archive)", status=404)
        if len({row[1] for row in rows}) > 1:
            raise ShareRefused("a link shares studies of one patient: these are of several", status=400)
        token = secrets.token_urlsafe(32)
        pin_code = "".join(secrets.choice("0123456789") for _ in range(PIN_DIGITS)) if pin else ""
        now = datetime.now(UTC)
        first = rows[0]
        with self.database.session(write=True) as session:
            link = ShareLink(token_sha256=_sha256(token), created_by=principal.name[:128], created_at=now,
                             expires_at=now + timedelta(days=days), recipient_kind=recipient_kind,
                             note=note.strip()[:2000], PatientID=first[2], IssuerOfPatientID=first[3],
                             studies="\\".join(wanted), pin_hash=_hasher.hash(pin_code) if pin_code else "",
                             pin_failures=0, deidentified=deidentified,
                             deid_secret_hex=secrets.token_hex(32) if deidentified else "", revoked_by="", uses=0)
            session.add(link)
            session.flush()
            view = self._view(link)
        return CreatedShare(view, token, pin_code)

    def links(self, principal: Principal) -> list[ShareView]:
        """The principal's own links, newest first; an administrator's: everyone's."""
        statement = select(ShareLink).order_by(ShareLink.pk.desc()).limit(1000)
        if Permission.ADMINISTER not in principal.permissions:
            statement = statement.where(ShareLink.created_by == principal.name)
        with self.database.session() as session:
            return [self._view(row) for row in session.scalars(statement)]

    def get(self, principal: Principal, share_id: int) -> ShareView:
        """One link its creator (or an administrator) may see; 404 otherwise."""
        with self.database.session() as session:
            row = session.get(ShareLink, share_id)
            if row is None or not (row.created_by == principal.name
                                   or Permission.ADMINISTER in principal.permissions):
                raise ShareRefused(f"share link {share_id} is not one of yours (or does not exist)", status=404)
            return self._view(row)

    def revoke(self, principal: Principal, share_id: int) -> ShareView:
        """End a link at once (its creator or an administrator): its sessions are removed too."""
        self.get(principal, share_id)
        now = datetime.now(UTC)
        with self.database.session(write=True) as session:
            row = session.get(ShareLink, share_id)
            assert row is not None
            if row.revoked_at is None:
                row.revoked_at, row.revoked_by = now, principal.name[:128]
            session.execute(delete(ShareSession).where(ShareSession.share_pk == share_id))
            view = self._view(row)
        with self._lock:
            for key in [key for key, (_until, cached) in self._sessions.items() if cached.id == share_id]:
                del self._sessions[key]
        return view

    # --- the recipient's side ---------------------------------------------------------------

    def find(self, token: str, address: str) -> ShareView:
        """The link of ``token`` if it may be opened now; else :class:`ShareRefused` (counted against the
        address, as an unknown token is). The address must not be waiting after refusals."""
        self.throttle.check(address)
        view = None
        if 20 <= len(token) <= 128:
            with self.database.session() as session:
                row = session.scalar(select(ShareLink).where(ShareLink.token_sha256 == _sha256(token)))
                view = None if row is None else self._view(row)
        if view is None:
            self.throttle.refused(address)
            raise ShareRefused("this link is not known: check that it was copied whole", status=404)
        state = view.state()
        if state != "active":
            self.throttle.refused(address)
            raise ShareRefused(_REFUSALS[state], status=403 if state == "locked" else 410, share=view)
        if not self._creator_may_share(view):
            raise ShareRefused(_REFUSALS["creator"], status=410, share=view)
        return view

    def _creator_may_share(self, view: ShareView) -> bool:
        """A link lives on its creator's rights: a disabled account, or one that may no longer share or see these
        studies (its own facilities and departments), ends its links."""
        if self.creator is None:
            return True
        account = self.creator(view.created_by)
        if account is None:
            return True  # no local account to ask (single sign-on): the link's expiry bounds it
        if account is False or isinstance(account, bool) or Permission.SHARE not in account.permissions:
            return False
        scope = Scope(self.policy.scope(account).facilities, self.policy.scope(account).departments)
        with self.database.session() as session:
            found = session.scalar(select(func.count()).select_from(Study).where(
                Study.StudyInstanceUID.in_(list(view.studies)), scope.study_condition())) or 0
        return int(found) == len(set(view.studies))

    def check_pin(self, view: ShareView, pin: str, address: str) -> None:
        """The link's PIN, or :class:`ShareRefused` 403 (the link locks after ``sharing.pin_attempts`` wrong
        ones; each counts against the address too)."""
        with self.database.session() as session:
            stored = session.scalar(select(ShareLink.pin_hash).where(ShareLink.pk == view.id)) or ""
        try:
            right = bool(stored) and _hasher.verify(stored, pin.strip()[:64])
        except (VerificationError, InvalidHashError):
            right = False
        if right:
            return
        self.throttle.refused(address)
        with self.database.session(write=True) as session:
            session.execute(update(ShareLink).where(ShareLink.pk == view.id)
                            .values(pin_failures=ShareLink.pin_failures + 1))
            failures = session.scalar(select(ShareLink.pin_failures).where(ShareLink.pk == view.id)) or 0
        left = self.settings.pin_attempts - failures
        if left <= 0:
            raise ShareRefused(_REFUSALS["locked"], status=403, share=view)
        raise ShareRefused(f"that PIN is not this link's ({left} more {'try' if left == 1 else 'tries'} before it "
                           "locks)", status=403, share=view)

    def start_session(self, view: ShareView, address: str) -> tuple[str, datetime]:
        """A new recipient session of the link (the cookie's value, and when it ends); the use is counted."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        until = min(now + timedelta(minutes=self.settings.session_minutes), view.expires_at)
        with self.database.session(write=True) as session:
            session.execute(delete(ShareSession).where(ShareSession.expires_at <= now))
            session.add(ShareSession(session_sha256=_sha256(session_id), share_pk=view.id, created_at=now,
                                     expires_at=until, address=address[:64]))
            session.execute(update(ShareLink).where(ShareLink.pk == view.id)
                            .values(uses=ShareLink.uses + 1, last_used_at=now, pin_failures=0))
        return session_id, until

    def remembered(self, session_id: str) -> ShareView | None:
        """The link of a session checked within ``cache_seconds`` (no index lookup), else None."""
        key = _sha256(session_id)
        with self._lock:
            cached = self._sessions.get(key)
        if cached is not None and cached[0] > time.monotonic() and cached[1].state() == "active":
            return cached[1]
        return None

    def session(self, session_id: str) -> ShareView | None:
        """The link a recipient's session opens, if both are still valid; None otherwise."""
        if not session_id or len(session_id) > 128:
            return None
        found = self.remembered(session_id)
        if found is not None:
            return found
        now = datetime.now(UTC)
        with self.database.session() as session:
            row = session.execute(select(ShareSession.expires_at, ShareLink).join(
                ShareLink, ShareSession.share_pk == ShareLink.pk).where(
                ShareSession.session_sha256 == _sha256(session_id))).first()
            if row is None or as_utc(row[0]) <= now:
                return None
            view = self._view(row[1])
        if view.state(now) != "active" or not self._creator_may_share(view):
            return None
        if self.cache_seconds > 0:
            with self._lock:
                if len(self._sessions) > 10_000:
                    self._sessions.clear()
                self._sessions[_sha256(session_id)] = (time.monotonic() + self.cache_seconds, view)
        return view

    @staticmethod
    def principal(view: ShareView, *, address: str = "", interface: str = "http") -> Principal:
        """Whom a link's recipient acts as: named after the link and its creator (so every audit record of its
        reads says both), seeing exactly the link's studies; a de-identified link's may read nothing itself (its
        downloads are de-identified here)."""
        permissions = frozenset() if view.deidentified else frozenset({Permission.QUERY, Permission.READ})
        return Principal(name=f"share:{view.id}:{view.created_by}"[:128], kind="share",
                         roles=frozenset({f"share-{view.recipient_kind}"}), permissions=permissions,
                         facilities=frozenset(), departments=frozenset(),
                         break_glass_studies=frozenset(view.studies), address=address, interface=interface)

    @staticmethod
    def scope(view: ShareView) -> Scope:
        """Exactly the link's studies."""
        return Scope(frozenset(), frozenset(), frozenset(view.studies))

    # --- the download -----------------------------------------------------------------------

    def download(self, view: ShareView, *, address: str) -> tuple[Iterator[bytes], int]:
        """The link's studies as an IHE PDI zip (de-identified when the link says so), streamed, and the number
        of instances in it. The file-set is written to a temporary folder first (an instance at a time)."""
        folder = Path(tempfile.mkdtemp(prefix="mosaic-share-"))
        try:
            count, left_out = self._write_file_set(view, folder, address)
            (folder / "README.TXT").write_text(_readme(view, count, left_out), encoding="utf-8")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return _zipped(folder), count

    def _write_file_set(self, view: ShareView, folder: Path, address: str) -> tuple[int, list[str]]:
        scope = self.scope(view)
        context = EgressContext("share", address, f"share:{view.id}")
        deidentifier = None
        if view.deidentified:
            with self.database.session() as session:
                secret = session.scalar(select(ShareLink.deid_secret_hex).where(ShareLink.pk == view.id)) or ""
            deidentifier = Deidentifier(DeidentificationOptions(project_secret=bytes.fromhex(secret)))
        file_set = FileSet()
        left_out: list[str] = []
        try:
            for study in view.studies:
                for instance in self.retrieve.instances_in(study, scope=scope):
                    with self.retrieve.egress(instance, context) as path:
                        dataset: pydicom.Dataset = pydicom.dcmread(path, force=True)
                    if deidentifier is not None:
                        reason = burned_in_annotation_reason(dataset)
                        if reason is not None:
                            left_out.append(f"one instance: {reason}")
                            continue
                    try:
                        if deidentifier is not None:
                            dataset = deidentifier.deidentify(dataset)
                        file_set.add(_for_media(dataset))
                    except Exception as exc:  # pydicom raises many kinds on odd headers; one must not stop it
                        left_out.append(f"one instance could not be written ({type(exc).__name__})")
            if len(file_set) == 0:
                raise ShareRefused("nothing of these studies can be downloaded (see the page)", status=409)
            file_set.write(folder)
            _under_dicom_folder(file_set, folder)
            return len(file_set), left_out
        finally:
            file_set._stage["t"].cleanup()  # pydicom's staging folder: now, not at exit

    # --- rows -------------------------------------------------------------------------------

    def _view(self, row: ShareLink) -> ShareView:
        return ShareView(int(row.pk), row.created_by, as_utc(row.created_at), as_utc(row.expires_at),
                         row.recipient_kind, row.note, row.PatientID, row.IssuerOfPatientID,
                         tuple(uid for uid in row.studies.split("\\") if uid), bool(row.pin_hash),
                         int(row.pin_failures or 0), bool(row.deidentified),
                         as_utc(row.revoked_at) if row.revoked_at else None, row.revoked_by, int(row.uses or 0),
                         as_utc(row.last_used_at) if row.last_used_at else None,
                         bool(row.pin_hash) and int(row.pin_failures or 0) >= self.settings.pin_attempts)


_REFUSALS = {
    "creator": "the person who shared this link may no longer share these studies: ask them, or their hospital, "
               "for a new one",
    "revoked": "this link was withdrawn by the person who shared it: ask them for a new one",
    "expired": "this link has expired: ask the person who shared it for a new one",
    "locked": "this link is locked after too many wrong PINs: ask the person who shared it for a new one",
}


_MEDIA_KEYS = {"StudyDate": "19000101", "StudyTime": "000000", "StudyID": "0", "Modality": "OT", "SeriesNumber": 0,
               "InstanceNumber": 0}
"""What a DICOMDIR record needs (PS3.3 F.5: Type 1 there, Type 2 in the instance) and the value the copy on the
media gets when the instance has none (de-identification empties the Study ID, for one)."""


def _for_media(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for keyword, value in _MEDIA_KEYS.items():
        if dataset.get(keyword) in (None, ""):
            setattr(dataset, keyword, value)
    return dataset


def _under_dicom_folder(file_set: FileSet, root: Path) -> None:
    """Move the file-set's folders (``PT000000/…``) under ``DICOM/`` and write the DICOMDIR again, each record's
    Referenced File ID starting with ``DICOM`` (pydicom lays files out from the root; IHE PDI keeps the root for
    the DICOMDIR, the README and a viewer). The round trip is tested: ``FileSet(DICOMDIR)`` finds every file."""
    target = root / "DICOM"
    target.mkdir()
    for child in list(root.iterdir()):
        if child.is_dir() and child != target:
            shutil.move(os.fspath(child), os.fspath(target / child.name))
    for instance in file_set:
        instance.node._record.ReferencedFileID = ["DICOM", *Path(instance.FileID).parts]
    with open(root / "DICOMDIR", "wb") as handle:
        file_set._write_dicomdir(DicomFileLike(handle))  # the records as they are now


def _readme(view: ShareView, count: int, left_out: list[str]) -> str:
    lines = [
        "Studies shared through Mosaic",
        "",
        f"Shared by {view.created_by} on {view.created_at:%Y-%m-%d} for {RECIPIENT_KINDS[view.recipient_kind]}.",
        f"{len(view.studies)} {'study' if len(view.studies) == 1 else 'studies'}, {count} DICOM instances.",
        "",
        "This is an IHE Portable Data for Imaging (PDI) file-set: open DICOMDIR with any DICOM viewer;",
        "the instances are under DICOM/.",
    ]
    if view.deidentified:
        lines += ["", "The instances are de-identified (DICOM PS3.15 Annex E Basic Application Level Confidentiality",
                  "Profile, Clean Descriptors and Retain Longitudinal Temporal Information with Modified Dates):",
                  "names, identifiers and dates of the patient are replaced or removed, UIDs are new."]
    if left_out:
        lines += ["", "Left out:"] + [f"- {reason}" for reason in left_out]
    return "\r\n".join(lines) + "\r\n"


class _Sink(io.RawIOBase):
    """Where the zip writer writes; the generator hands on what gathered after each piece."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def _zipped(folder: Path) -> Iterator[bytes]:
    """The folder as a zip, a megabyte at a time (no file held whole); the folder is removed at the end."""
    sink = _Sink()
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            files = sorted(path for path in folder.rglob("*") if path.is_file())
            for path in files:
                with open(path, "rb") as source, archive.open(path.relative_to(folder).as_posix(), "w",
                                                              force_zip64=True) as target:
                    while chunk := source.read(_CHUNK):
                        target.write(chunk)
                        if data := sink.take():
                            yield data
                if data := sink.take():
                    yield data
        if data := sink.take():
            yield data
    finally:
        shutil.rmtree(folder, ignore_errors=True)
