"""``pacs import``: folders, files and zip archives through the one ingest path, in parallel."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from .archive import Archive
from .errors import PacsError
from .incoming import create_spool_file


@dataclass
class ImportSummary:
    stored: int = 0
    duplicate: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, status: str, reason: str = "") -> None:
        if status in ("stored", "replaced"):
            self.stored += 1
        elif status in ("duplicate", "kept"):
            self.duplicate += 1
        else:
            self.failed += 1
            self.reasons[reason] += 1


@dataclass(frozen=True)
class ImportItem:
    """A file to import; ``member`` names an entry of the zip archive at ``path``."""

    path: Path
    member: str = ""

    @property
    def label(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


def iter_items(paths: list[str]) -> Iterator[ImportItem]:
    """Every file under the given paths, zip members included (hidden files skipped)."""
    for raw in paths:
        path = Path(raw)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.name.startswith("."):
                continue
            if zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    for info in archive.infolist():
                        if not info.is_dir() and not Path(info.filename).name.startswith("."):
                            yield ImportItem(file, info.filename)
            else:
                yield ImportItem(file)


def _import_one(archive: Archive, item: ImportItem) -> tuple[str, str]:
    try:
        if item.member:
            fd, tmp = create_spool_file(archive.incoming_dir)
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(item.path) as zf, zf.open(item.member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            result = archive.ingest_file(tmp, source="import", consume=True)
        else:
            result = archive.ingest_file(item.path, source="import", consume=False)
        return result.status, ""
    except PacsError as exc:
        return "failed", exc.reason
    except OSError as exc:
        return "failed", f"cannot read file: {exc.strerror or exc}"


def import_paths(archive: Archive, paths: list[str], *, workers: int = 0, progress: bool = True) -> ImportSummary:
    """Import every file under ``paths``; returns counts and failure reasons."""
    items = list(iter_items(paths))
    summary = ImportSummary()
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(items), unit="file", disable=not progress
    ) as bar:
        for status, reason in pool.map(lambda it: _import_one(archive, it), items):
            summary.add(status, reason)
            bar.update()
    return summary
