"""Folder import: every file under the given paths through the one ingest path, safe to re-run."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mosaic.core.errors import InvalidObject, StorageFailure
from mosaic.services.ingest import IngestService
from mosaic.services.origin import Door, IngestOrigin


@dataclass
class ImportSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) for every file that was not stored."""


def iter_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for filename in sorted(filenames):
                    yield Path(dirpath) / filename


def import_paths(ingest: IngestService, paths: list[Path], progress: Callable[[Path], None] | None = None, *,
                 origin: IngestOrigin | None = None) -> ImportSummary:
    """Store every file found, offered by ``origin`` (who runs the import: ingest checks and audits each store;
    by default nobody, unchecked and unaudited); an interrupted import re-run finds the stored ones already
    present."""
    origin = origin or IngestOrigin(door=Door.IMPORT)
    summary = ImportSummary()
    for file in iter_files(paths):
        try:
            result = ingest.store(file, origin)
            summary.outcomes[result.outcome.value] += 1
        except (InvalidObject, StorageFailure) as exc:
            summary.outcomes["rejected"] += 1
            summary.rejected.append((str(file), str(exc)))
        except OSError as exc:
            summary.outcomes["rejected"] += 1
            summary.rejected.append((str(file), f"cannot read: {exc}"))
        if progress:
            progress(file)
    return summary
