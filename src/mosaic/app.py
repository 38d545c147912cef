"""The composition root: config → index → storage → services → listeners. Nothing else wires parts."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mosaic.config import Settings, StartupError
from mosaic.dimse.listener import DicomServer
from mosaic.governance.audit import AuditTrail
from mosaic.governance.audit_anchor import anchor_for
from mosaic.governance.audit_export import SyslogForwarder
from mosaic.governance.identity import IdentityService
from mosaic.governance.policy import AccessPolicy
from mosaic.hl7.door import Hl7Door
from mosaic.hl7.listener import Hl7Server
from mosaic.hl7.outbound import Hl7Notifier
from mosaic.http.protocol import GuardedH11Protocol
from mosaic.index.database import Database
from mosaic.jobs.runner import JobRunner
from mosaic.jobs.store import JobStore
from mosaic.services.availability import StudyAvailability
from mosaic.services.capturing import CaptureService
from mosaic.services.changes import ChangeFeed
from mosaic.services.commitment import CommitmentService
from mosaic.services.demographics import CurrentDemographics
from mosaic.services.ingest import IngestService
from mosaic.services.patients import PatientService
from mosaic.services.query import QueryService
from mosaic.services.reports import ReportService
from mosaic.services.retrieve import RetrieveService
from mosaic.services.shares import ShareService
from mosaic.services.subscriptions import SubscriptionService
from mosaic.services.sweep import LeftoverSweep
from mosaic.services.worklist import WorklistService
from mosaic.storage import BlobStore, open_blob_store
from mosaic.storage.spool import Spool

log = logging.getLogger("mosaic")


class Mosaic:
    """One Mosaic node: its index, blob store, services and (once started) its DICOM and HTTP listeners."""

    def __init__(self, settings: Settings, *, create: bool = True) -> None:
        """``create=False``: refuse (:class:`StartupError`) a data directory or index that is not set up yet,
        instead of silently starting a new, empty archive there."""
        self.settings = settings
        self.database = _open_index(settings, create=create)
        self.blobs: BlobStore = open_blob_store(settings)
        local = self.blobs.local_files()
        self.spool_folder = local.incoming if local is not None else settings.data_dir / "spool"
        """Where received data sets are spooled: on the blob file system (linked into place), else the data
        directory (S3), so the start-up sweep finds what a killed process left there."""
        self.policy = AccessPolicy(self.database, settings.security)
        self.audit = AuditTrail(self.database, linger=settings.security.audit_batch_seconds,
                                journal=settings.data_dir / "audit-journal", anchor=anchor_for(settings))
        self.ingest = IngestService(self.database, self.blobs, settings.ingest, policy=self.policy, audit=self.audit)
        self.query = QueryService(self.database, settings.dicom.ae_title)
        self.demographics = CurrentDemographics(self.database)
        self.retrieve = RetrieveService(self.database, self.blobs, coercion=self.demographics)
        self.commitments = CommitmentService(self.database, self.retrieve)
        self.patients = PatientService(self.database)
        self.worklist = WorklistService(self.database)
        self.reports = ReportService(self.database, self.ingest)
        self.captures = CaptureService(self.database, self.ingest, workdir=settings.data_dir / "capture",
                                       spool=Spool(self.spool_folder, self.blobs))
        """Photos, video and PDFs into patients' records (portal uploads, STOW-RS bulk data, import sidecars)."""
        self.changes = ChangeFeed(self.database)
        self.availability = StudyAvailability(self.database, settings.workflow)
        """Announces stable studies (``StudyAvailable`` events) once started; the outbound doors consume them."""
        self.subscriptions = SubscriptionService(self.database)
        self.identity = IdentityService(self.database, settings.security, self.policy)
        self.shares = ShareService(self.database, self.policy, self.retrieve, settings.sharing,
                                   cache_seconds=settings.security.credential_cache_seconds,
                                   creator=self.identity.account_now)
        """Share links: studies shared with people outside the hospital (``/shares``, ``/share/<token>``)."""
        self.jobs = JobStore(self.database, settings.jobs)
        self.job_runner = JobRunner(self.jobs, settings.jobs)
        """Runs queued jobs (exports, retention runs) on this node once started; the services register."""
        from mosaic.export.service import ExportService

        self.exports = ExportService(self.database, self.policy, self.retrieve, self.audit, self.jobs, self.job_runner,
                                     export=settings.export, dicom=settings.dicom)
        from mosaic.retention.holds import HoldService
        from mosaic.retention.scheduler import RetentionScheduler
        from mosaic.retention.service import RetentionService
        from mosaic.services.delete import DeleteService

        self.deleter = DeleteService(self.database, self.blobs)
        self.holds = HoldService(self.database)
        self.retention = RetentionService(self.database, settings.retention, self.holds, self.deleter, self.audit)
        from mosaic.retention.runs import RetentionRuns

        self.retention_runs = RetentionRuns(self.retention, self.jobs, self.job_runner)
        self._retention_schedule: RetentionScheduler | None = None
        self.initial_admin_password: str | None = None
        """Set only at the very first start (no account yet): the one time the `admin` password is said."""
        self._syslog: SyslogForwarder | None = None
        self._hl7_out: list[Hl7Notifier] = []
        self._notifier: Any = None
        """The FHIR Subscription notifier (``fhir.notifications.SubscriptionNotifier``) once started."""
        self.dicom: DicomServer | None = None
        self.hl7: Hl7Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._workers: list[Any] = []
        self._sweep: threading.Thread | None = None
        self._sweeper: LeftoverSweep | None = None
        self.swept = threading.Event()
        """Set once the start-up sweep is over (tests wait for it)."""

    def sweep_leftovers(self) -> None:
        """Remove what stopped processes left half-written (:mod:`mosaic.services.sweep`), in the background:
        only files last written ``storage.sweep_age_seconds`` before now, so never this process's own."""
        age = self.settings.storage.sweep_age_seconds
        written_before = time.time() - age
        self._sweeper = sweeper = LeftoverSweep(self.database, self.blobs, [self.spool_folder])

        def sweep() -> None:
            try:
                report = sweeper.run(written_before)
                log.info("start-up sweep: removed %d spool files and %d blob files no index row names, last "
                         "written before %s (storage.sweep_age_seconds = %d); %d younger ones left",
                         report.spool_files, report.blob_files,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(written_before)), age, report.kept_young)
            except Exception:
                log.exception("start-up sweep failed; leftovers stay until the next start")
            finally:
                self.swept.set()

        self._sweep = threading.Thread(target=sweep, name="sweep", daemon=True)
        self._sweep.start()

    def http_app(self) -> Any:
        return create_http_app(self)

    def _start_workers(self, port: int) -> None:
        """More processes on the same DICOM port (SO_REUSEPORT), each with its own services."""
        context = multiprocessing.get_context("spawn")
        settings = self.settings.model_copy(deep=True)
        settings.dicom.port = port
        ready = [context.Event() for _ in range(1, self.settings.dicom.workers)]
        for number, event in enumerate(ready, start=1):
            process = context.Process(target=_dicom_worker, args=(settings.model_dump_json(), os.getpid(), event),
                                      name=f"mosaic-dicom-{number}", daemon=True)
            process.start()
            self._workers.append(process)
        for process, event in zip(self._workers, ready, strict=True):
            if not event.wait(120):
                raise RuntimeError(f"DICOM worker {process.name} did not start (exit code {process.exitcode})")
        log.info("DICOM port %d served by %d processes", port, self.settings.dicom.workers)

    def start(self, *, dicom: bool = True, http: bool = True, workers: bool = True, sweep: bool = True) -> None:
        """Start the listeners; :class:`StartupError` (one line) when one cannot listen. The first ``admin``
        is created only once everything has started, so a failed first start leaves no unknown password.
        ``sweep``: remove what stopped processes left half-written (not in DICOM workers: their parent did)."""
        self.audit.start()
        self.spool_folder.mkdir(parents=True, exist_ok=True)
        self.captures.workdir.mkdir(parents=True, exist_ok=True)
        if sweep:
            self.sweep_leftovers()
        if http and self.settings.security.audit_syslog.host:
            # one forwarder per node, all on one cursor: nodes racing may each send a record (at least once)
            self._syslog = SyslogForwarder(self.database, self.settings.security.audit_syslog,
                                           self.settings.dicom.ae_title)
            self.audit.listeners.append(self._syslog.wake)
            if self.audit.anchor is not None:
                self.audit.anchor.listeners.append(self._syslog.send_checkpoint)
            self._syslog.start()
        if http and self.settings.retention.schedule_hours > 0:
            from mosaic.retention.scheduler import RetentionScheduler

            self._retention_schedule = RetentionScheduler(self.retention_runs.submit,
                                                          self.settings.retention.schedule_hours)
            self._retention_schedule.start()
        if http:
            self.job_runner.start()
            self._start_announcements()
        if dicom:
            self.dicom = DicomServer(self.settings.dicom, self.ingest, self.query, self.retrieve,
                                     spool=Spool(self.spool_folder, self.blobs), policy=self.policy,
                                     audit=self.audit, commitments=self.commitments, identity=self.identity,
                                     worklist=self.worklist)
            self._start_dicom(self.dicom)
            if self.settings.dicom.workers > 1 and workers:
                self._start_workers(self.dicom.port)
        if dicom and self.settings.hl7.senders:
            hl7 = self.settings.hl7
            try:
                self.hl7 = Hl7Server(hl7, Hl7Door(hl7, self.patients, self.audit, self.worklist,
                                                  self.reports))
            except OSError as exc:
                raise StartupError(f"cannot listen for HL7 v2 on {hl7.host}:{hl7.port}: {_reason(exc)}") from exc
            except (ValueError, ssl.SSLError) as exc:
                raise StartupError(f"the HL7 TLS settings cannot be used: {exc}") from exc
            self.hl7.start()
        if http:
            web = self.settings.http
            if web.https and web.tls_key_file is None:
                raise StartupError("http.tls_cert_file needs http.tls_key_file")
            listening = _listen(web.host, web.port, "HTTP")
            config = uvicorn.Config(self.http_app(), host=web.host, port=web.port, log_level="warning",
                                    access_log=False, lifespan="off",
                                    http=GuardedH11Protocol.configured(
                                        header_timeout=web.header_timeout_seconds,
                                        body_timeout=web.body_timeout_seconds, max_connections=web.max_connections,
                                        max_connections_per_address=web.max_connections_per_address,
                                        trusted_proxies=web.trusted_proxies),
                                    proxy_headers=False,  # uvicorn believes 127.0.0.1; http.trusted_proxies decides
                                    ssl_certfile=str(web.tls_cert_file) if web.https else None,
                                    ssl_keyfile=str(web.tls_key_file) if web.https else None)
            self._http = uvicorn.Server(config)
            self._http_thread = threading.Thread(target=self._http.run, kwargs={"sockets": [listening]}, name="http",
                                                 daemon=True)
            self._http_thread.start()
            deadline = time.monotonic() + 15
            while not self._http.started and time.monotonic() < deadline and self._http_thread.is_alive():
                time.sleep(0.02)
            if not self._http.started:
                listening.close()
                raise StartupError(f"the HTTP server did not start on {web.host}:{web.port} (see the log above)")
            self.initial_admin_password = self.identity.ensure_administrator()
        _settle_garbage_collector()

    def _start_announcements(self) -> None:
        """The outbox consumers of "study available" (one per HL7 receiver, one per FHIR Subscription), then the
        sweeper that writes the announcements (after the consumers' cursors exist, so none is missed)."""
        from mosaic.fhir.notifications import SubscriptionNotifier

        web = self.settings.http
        public = web.public_url.rstrip("/") if web.public_url else None
        for receiver in self.settings.hl7.receivers:
            if "study-available" not in receiver.events:
                continue
            notifier = Hl7Notifier(receiver, self.availability, self.audit,
                                   sending_application=self.settings.dicom.ae_title,
                                   wado_root=f"{public}/dicom-web" if public else None)
            notifier.start()
            self._hl7_out.append(notifier)
        self._notifier = SubscriptionNotifier(
            self.subscriptions, self.availability, self.identity, self.policy, self.query, self.audit,
            self.settings.fhir, base=lambda: f"{public or f'http://{web.host}:{self.http_port}'}/fhir")
        self._notifier.start()
        self.availability.start()

    def subscriptions_changed(self) -> None:
        """A FHIR Subscription was created or deleted here: its notifications start (or stop) at once."""
        if self._notifier is not None:
            self._notifier.refresh()

    def _start_dicom(self, server: DicomServer) -> None:
        """The DICOM listener(s), with a bind failure said in one line naming the address and the listener."""
        try:
            server.start()
        except OSError as exc:
            try:
                server.port  # noqa: B018 - raises while the plain listener is not up: it is the one that failed
            except RuntimeError:
                host, port, which = self.settings.dicom.host, self.settings.dicom.port, "DICOM"
            else:
                host, port, which = self.settings.dicom.host, self.settings.dicom.tls.port, "DICOM TLS"
            if exc.filename:
                raise StartupError(f"cannot read {exc.filename} ({which}): {_reason(exc)}") from exc
            raise StartupError(f"cannot listen on {host}:{port} ({which}): {_reason(exc)}") from exc

    @property
    def http_port(self) -> int:
        if self._http is None or not self._http.servers:
            raise RuntimeError("the HTTP listener is not running")
        return int(self._http.servers[0].sockets[0].getsockname()[1])

    @property
    def hl7_port(self) -> int:
        if self.hl7 is None:
            raise RuntimeError("the HL7 listener is not running (hl7.senders names no application)")
        return self.hl7.port

    @property
    def dicom_port(self) -> int:
        if self.dicom is None:
            raise RuntimeError("the DICOM listener is not running")
        return self.dicom.port

    def stop(self) -> None:
        if self._sweeper is not None and self._sweep is not None:
            self._sweeper.stopping.set()
            self._sweep.join(timeout=30)
            self._sweep = self._sweeper = None
        for process in self._workers:
            process.terminate()
        for process in self._workers:
            process.join(timeout=10)
        self._workers.clear()
        if self.dicom is not None:
            self.dicom.stop()
            self.dicom = None
        if self.hl7 is not None:
            self.hl7.stop()
            self.hl7 = None
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)
            self._http = None
        if self._retention_schedule is not None:
            self._retention_schedule.stop()
            self._retention_schedule = None
        self.job_runner.stop()
        self.availability.stop()
        for notifier in self._hl7_out:
            notifier.stop()
        self._hl7_out.clear()
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        self.audit.stop()
        if self._syslog is not None:
            self._syslog.stop()
            self._syslog = None
        self.database.dispose()


def create_http_app(node: Mosaic) -> Any:
    """The ASGI application: each router handed only the services it uses; the middleware outermost first
    (anti-framing on every answer, then authentication and the audit of every answer)."""
    from fastapi import Depends, FastAPI
    from fastapi.staticfiles import StaticFiles

    from mosaic import __version__
    from mosaic.dicomweb.guard import dicomweb_guard
    from mosaic.dicomweb.routes import create_router
    from mosaic.dicomweb.wado import create_wado_router
    from mosaic.export.routes import create_export_router
    from mosaic.fhir.routes import create_fhir_router
    from mosaic.fhir.subscriptions import create_subscription_router
    from mosaic.http.auth import AuthMiddleware
    from mosaic.http.errors import install_error_handlers
    from mosaic.http.headers import AntiFramingHeaders
    from mosaic.http.origin import trusted_hosts
    from mosaic.retention.routes import create_retention_router
    from mosaic.services.browse import BrowseService
    from mosaic.services.content import ContentService
    from mosaic.services.documents import DocumentService
    from mosaic.services.launch import LaunchService, LaunchTokens
    from mosaic.services.metadata import MetadataService
    from mosaic.services.portal import PortalService
    from mosaic.viewer import mount_viewer
    from mosaic.web import pages as web_pages
    from mosaic.web.account import create_account_router
    from mosaic.web.changes_routes import create_changes_router
    from mosaic.web.jobs_routes import create_jobs_router
    from mosaic.web.landing import create_landing_router
    from mosaic.web.launch import create_launch_router
    from mosaic.web.patients_routes import create_patients_router
    from mosaic.web.portal import create_portal_router
    from mosaic.web.share_routes import create_share_router
    from mosaic.web.status_routes import create_status_router
    from mosaic.web.users_routes import create_users_router

    settings = node.settings
    web = settings.http
    app = FastAPI(title="Mosaic", version=__version__)
    app.state.public_url = web.public_url
    app.state.trusted_hosts = trusted_hosts(web.host, web.public_url, web.trusted_hosts)
    app.add_middleware(AuthMiddleware, identity=node.identity, audit=node.audit,  # type: ignore[arg-type]
                       trusted_proxies=web.trusted_proxies, development_mode=settings.security.development_mode,
                       shares=node.shares)
    app.add_middleware(AntiFramingHeaders)  # outermost: refusals by the middleware get the headers too
    install_error_handlers(app, page=web_pages.error_page)
    web_pages.install(app, break_glass_openings=node.policy.break_glass_openings)
    if web.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=web.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"], expose_headers=["X-Total-Count", "ETag", "Content-Location"], max_age=600,
        )
    app.include_router(create_status_router(node.database, node.blobs,
                                            min_free_bytes=settings.storage.min_free_bytes))
    app.include_router(create_changes_router(node.changes, node.policy))
    app.include_router(create_landing_router(BrowseService(node.database), node.policy))
    portal = PortalService(node.database, node.query)
    content = ContentService(node.retrieve)
    app.include_router(create_portal_router(portal, content, node.policy, node.captures))
    app.include_router(create_share_router(node.shares, portal, content, https=web.https))
    app.include_router(create_launch_router(LaunchService(node.database),
                                            LaunchTokens(settings.launch, settings.security, node.identity),
                                            node.policy, node.identity, node.audit, settings.security,
                                            https=web.https))
    app.include_router(create_router(policy=node.policy, query_service=node.query,
                                     metadata_service=MetadataService(node.database), retrieve=node.retrieve,
                                     ingest=node.ingest, spool=Spool(node.spool_folder, node.blobs),
                                     demographics=node.demographics))
    # WADO-URI also at the site root: /wado?…
    app.include_router(create_wado_router(node.retrieve, rs=False),
                       dependencies=[Depends(dicomweb_guard(node.policy))])
    app.include_router(create_account_router(node.identity, node.policy, node.audit, settings.security,
                                             https=web.https, ae_title=settings.dicom.ae_title, query=node.query))
    app.include_router(create_export_router(node.exports, node.jobs, settings.export_path))
    app.include_router(create_users_router(node.identity, node.policy))
    app.include_router(create_retention_router(node.retention, node.retention_runs, node.holds, node.deleter,
                                               node.policy))
    app.include_router(create_jobs_router(node.jobs))
    app.include_router(create_patients_router(node.patients))
    app.include_router(create_fhir_router(policy=node.policy, query_service=node.query, patients=node.patients,
                                          worklist=node.worklist, reports=node.reports,
                                          documents=DocumentService(node.database), audit_trail=node.audit,
                                          observer=settings.dicom.ae_title))
    app.include_router(create_subscription_router(policy=node.policy, identity=node.identity,
                                                  subscriptions=node.subscriptions, settings=settings.fhir,
                                                  changed=node.subscriptions_changed))
    app.mount("/static", StaticFiles(directory=str(Path(web_pages.__file__).parent / "static")), name="static")
    mount_viewer(app, settings.viewer_path, dicomweb_root="/dicom-web")
    return app


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _listen(host: str, port: int, which: str) -> socket.socket:
    """A bound, listening socket for a server (a port in use or an unknown host said in one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio then sets TCP_NODELAY
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as exc:
        listening.close()
        raise StartupError(f"cannot listen on {host}:{port} ({which}): {_reason(exc)}") from exc
    return listening


def _open_index(settings: Settings, *, create: bool) -> Database:
    """The data directory checked (exists unless created here, a writable folder) and the index opened and
    migrated; every refusal a :class:`StartupError` naming the folder or index and the reason."""
    folder = settings.data_dir.resolve()
    try:
        url = make_url(settings.index_url)
    except ArgumentError as exc:
        raise StartupError("index.url is not a database URL (e.g. postgresql+psycopg://user@host/mosaic)") from exc
    shown = url.render_as_string(hide_password=True)
    missing = f"is not set up (no index {shown}): give the archive's data directory with --data-dir or " \
              "data_dir, or set up a new archive with `mosaic init`"
    in_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    sqlite_file = Path(str(url.database)) if in_file else None
    if folder.exists() and not folder.is_dir():
        raise StartupError(f"cannot use the data directory {folder}: not a directory")
    if not create and sqlite_file is not None and not sqlite_file.exists():
        raise StartupError(f"data directory {folder} {missing}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the data directory {folder}: {_reason(exc)}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"cannot use the data directory {folder}: not writable by this user")
    database = Database(settings.index_url, pool_size=settings.index.pool_size)
    try:
        if not create and not inspect(database.engine).has_table("alembic_version"):
            raise StartupError(f"data directory {folder} {missing}")
        database.migrate()
    except SQLAlchemyError as exc:
        database.dispose()
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(f"cannot open the index {shown}: {first}") from exc
    except StartupError:
        database.dispose()
        raise
    return database


def _settle_garbage_collector() -> None:
    """Move the start-up objects (pydicom's dictionaries, SQLAlchemy's metadata, …) out of the collector's
    reach and collect less eagerly: full collections over them paused requests by ~50 ms (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _dicom_worker(settings_json: str, parent_pid: int, ready: Any) -> None:
    """A DICOM worker process: the same services on the shared port, until its parent goes away."""
    from mosaic.logging_setup import configure_logging

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log)
    node = Mosaic(settings)
    node.start(http=False, workers=False, sweep=False)
    ready.set()
    try:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
    finally:
        node.stop()
