"""The composition root: config → index → storage → services → listeners. Nothing else wires parts."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from mosaic.config import Settings
from mosaic.dimse.fast_store import Spool
from mosaic.dimse.receive import spool_into
from mosaic.dimse.scp import DicomServer
from mosaic.index.database import Database
from mosaic.services.changes import ChangeFeed
from mosaic.services.ingest import IngestService
from mosaic.services.query import QueryService
from mosaic.services.retrieve import RetrieveService
from mosaic.storage import BlobStore, open_blob_store

log = logging.getLogger("mosaic")


class Mosaic:
    """One Mosaic node: its index, blob store, services and (once started) its DICOM and HTTP listeners."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = Database(settings.index_url, pool_size=settings.index.pool_size)
        self.database.migrate()
        self.blobs: BlobStore = open_blob_store(settings)
        self.ingest = IngestService(self.database, self.blobs, settings.ingest)
        self.query = QueryService(self.database, settings.dicom.ae_title)
        self.retrieve = RetrieveService(self.database, self.blobs)
        self.changes = ChangeFeed(self.database)
        self.dicom: DicomServer | None = None
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None

    def http_app(self) -> Any:
        from mosaic.web.app import create_app

        return create_app(self)

    def start(self, *, dicom: bool = True, http: bool = True) -> None:
        if dicom:
            incoming = getattr(self.blobs, "incoming", None)
            if incoming is not None:
                spool_into(incoming)
            self.dicom = DicomServer(self.settings.dicom, self.ingest, self.query, self.retrieve,
                                     spool=Spool(incoming, self.blobs))
            self.dicom.start()
        if http:
            config = uvicorn.Config(self.http_app(), host=self.settings.http.host, port=self.settings.http.port,
                                    log_level="warning", access_log=False, lifespan="off")
            self._http = uvicorn.Server(config)
            self._http_thread = threading.Thread(target=self._http.run, name="http", daemon=True)
            self._http_thread.start()
            deadline = time.monotonic() + 15
            while not self._http.started and time.monotonic() < deadline and self._http_thread.is_alive():
                time.sleep(0.02)
            if not self._http.started:
                raise RuntimeError(f"HTTP server did not start on {self.settings.http.host}:"
                                   f"{self.settings.http.port}")

    @property
    def http_port(self) -> int:
        if self._http is None or not self._http.servers:
            raise RuntimeError("the HTTP listener is not running")
        return int(self._http.servers[0].sockets[0].getsockname()[1])

    @property
    def dicom_port(self) -> int:
        if self.dicom is None:
            raise RuntimeError("the DICOM listener is not running")
        return self.dicom.port

    def stop(self) -> None:
        if self.dicom is not None:
            self.dicom.stop()
            self.dicom = None
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)
            self._http = None
        self.database.dispose()
