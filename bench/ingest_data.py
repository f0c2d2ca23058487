"""Benchmark data sets for ``bench/ingest.py``: generated once, cached, split into groups.

A data set lives in ``bench/work/<dataset>-<count>/``: ``files/*.dcm`` plus a
``manifest.json`` written only after every file is on disk, so an interrupted
generation is detected (no manifest) and redone instead of silently reused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

DATASETS = {
    "ct": "512x512 16-bit CT slices, ~514 kB each (sample_data.generator.generate_ct_series)",
    "tiny": "64x64 16-bit CT-like instances, ~10 kB each (sample_data.generator.generate_tiny_series)",
}


@dataclass(frozen=True)
class DataSet:
    """A cached, complete data set on disk."""

    name: str
    count: int
    root: Path
    files: list[Path]

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(p.stat().st_size for p in self.files)


def _sample_data() -> ModuleType:
    """The project's ``sample_data.generator`` module."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import sample_data.generator

    return sample_data.generator


def _generator(name: str, count: int, seed: int) -> Iterator:
    """The pydicom Datasets of data set ``name`` from the project's sample-data generator."""
    if name == "ct":
        return _sample_data().generate_ct_series(count, seed=seed, rows=512, columns=512)
    if name == "tiny":
        return _sample_data().generate_tiny_series(count, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")


def _load_manifest(root: Path, name: str, count: int, seed: int) -> list[Path] | None:
    """The file list of a complete cached data set, or None when it must be (re)generated."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    expected = {"version": MANIFEST_VERSION, "dataset": name, "count": count, "seed": seed}
    if any(manifest.get(k) != v for k, v in expected.items()):
        return None
    files = [root / "files" / f for f in manifest.get("files", [])]
    if len(files) != count or not all(p.is_file() for p in files):
        return None
    return files


def ensure_dataset(name: str, count: int, seed: int = 0, work_dir: Path = WORK_DIR) -> DataSet:
    """Return the cached data set, generating it first when missing or incomplete."""
    root = work_dir / f"{name}-{count}" if seed == 0 else work_dir / f"{name}-{count}-seed{seed}"
    files = _load_manifest(root, name, count, seed)
    if files is not None:
        return DataSet(name, count, root, files)
    write_series = _sample_data().write_series  # fail before removing anything
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    if root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    print(f"generating {count} '{name}' instances into {root} ...", file=sys.stderr, flush=True)
    files = write_series(_generator(name, count, seed), root / "files")
    distinct = len({p.name for p in files})
    if distinct != count:
        raise RuntimeError(f"generator produced {distinct} distinct files, expected {count}")
    manifest = {"version": MANIFEST_VERSION, "dataset": name, "count": count, "seed": seed,
                "files": [p.name for p in files]}
    (root / MANIFEST).write_text(json.dumps(manifest))
    print(f"generated in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return DataSet(name, count, root, files)


def split_evenly(items: list[Path], groups: int) -> list[list[Path]]:
    """Split ``items`` into ``groups`` contiguous chunks whose sizes differ by at most one."""
    if groups < 1:
        raise ValueError("groups must be >= 1")
    base, extra = divmod(len(items), groups)
    chunks, start = [], 0
    for i in range(groups):
        size = base + (1 if i < extra else 0)
        chunks.append(items[start:start + size])
        start += size
    return chunks


def link_groups(files: list[Path], groups: int, dest: Path) -> list[Path]:
    """Hard-link ``files`` into ``dest/group-<i>/`` (one folder per client); return the folders.

    Hard links cost nothing and keep every storescu command line short (``+sd <folder>``)
    whatever the file count. Falls back to copying across filesystems.
    """
    folders = []
    for i, chunk in enumerate(split_evenly(files, groups)):
        folder = dest / f"group-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in chunk:
            target = folder / path.name
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
        folders.append(folder)
    return folders
