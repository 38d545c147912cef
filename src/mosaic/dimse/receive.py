"""Where pynetdicom spools incoming C-STORE data sets (STORE_RECV_CHUNKED_DATASET).

Spooling into a folder on the blob store's own file system lets the filesystem backend hard-link
the received file into place instead of copying it.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from pynetdicom import dimse_messages


def spool_into(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined,assignment]
        tempfile.NamedTemporaryFile, dir=str(folder)
    )
