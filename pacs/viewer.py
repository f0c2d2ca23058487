"""The OHIF viewer: ``pacs viewer install`` fetches the prebuilt app from the npm registry;
:mod:`pacs.viewer_web` hosts it at ``/viewer``.

The ``@ohif/app`` package ships the production build in ``dist/``. We pin one version and
the Subresource Integrity string (sha512) of its tarball: a tarball that does not hash to
it is refused, whatever the registry or a mirror says. The dist is extracted under
``<viewer_dir>/dist`` (default ``<data_dir>/viewer``) with a record ``install.json``; the
files are never edited, so a reinstall is a plain replace. Serving under ``/viewer/``
needs a few absolute paths rebased (the build has ``PUBLIC_URL = '/'`` baked in):
the install records which files need it and :mod:`pacs.viewer_web` rewrites them in
memory when serving.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import PacsError
from .settings import Settings

log = logging.getLogger(__name__)

OHIF_PACKAGE = "@ohif/app"
#: Pinned (the registry's `latest` 3.x when chosen; 3.12.10 worked too), tested by tests/test_viewer.py.
OHIF_VERSION = "3.13.2"
#: ``npm view @ohif/app@3.13.2 dist.integrity``: sha512 of the tarball (Subresource Integrity form).
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
RECORD = "install.json"
DIST_PREFIX = "package/dist/"
#: Where the viewer is mounted (its ``routerBasename`` and public path).
PREFIX = "/viewer"

#: Absolute paths in the build that must move under PREFIX, by file suffix: the webpack
#: runtime's public path (chunks, workers, wasm), the font URLs of the CSS, the links of
#: index.html and the icons of manifest.json. ``(?!/)`` leaves ``//host`` URLs alone.
REBASE_RULES: dict[str, tuple[tuple[re.Pattern[bytes], bytes], ...]] = {
    ".js": ((re.compile(rb'(__webpack_require__\.p\s*=\s*)"/"'), rb'\1"' + PREFIX.encode() + rb'/"'),),
    ".css": ((re.compile(rb"url\(/(?!/)"), b"url(" + PREFIX.encode() + b"/"),),
    ".html": (
        (re.compile(rb"(window\.PUBLIC_URL\s*=\s*)(['\"])/\2"), rb"\1\2" + PREFIX.encode() + rb"/\2"),
        # The service worker would cache index.html across upgrades and load Workbox from a CDN.
        (re.compile(rb'<script[^>]*src="/init-service-worker\.js"[^>]*></script>'), b""),
        (re.compile(rb'((?:href|src|content)=")/(?!/)'), rb"\1" + PREFIX.encode() + rb"/"),
    ),
    ".json": ((re.compile(rb'("(?:src|start_url|scope)": ")/(?!/)'), rb"\1" + PREFIX.encode() + rb"/"),),
}


class ViewerInstallError(PacsError):
    """The viewer could not be fetched, verified or extracted."""

    http_status = 500


@dataclass(frozen=True)
class Installed:
    """An installed viewer: its dist folder and what ``install.json`` records."""

    root: Path
    version: str
    integrity: str
    rebase: frozenset[str]

    @property
    def dist(self) -> Path:
        return self.root / "dist"


def viewer_dir(settings: Settings) -> Path:
    """``PACS_VIEWER_DIR``, or ``viewer/`` in the data dir."""
    return Path(settings.viewer_dir) if settings.viewer_dir else settings.data_dir / "viewer"


def read_installed(root: Path) -> Installed | None:
    """The viewer installed in ``root``, or None when there is none (or a broken one)."""
    try:
        record = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not (root / "dist" / "index.html").is_file():
        return None
    return Installed(root, record["version"], record["integrity"], frozenset(record.get("rebase", ())))


def rebase(relative: str, body: bytes) -> bytes:
    """``body`` of dist file ``relative`` with its absolute paths moved under PREFIX."""
    for pattern, replacement in REBASE_RULES.get(Path(relative).suffix, ()):
        body = pattern.sub(replacement, body)
    return body


def sri(path: Path) -> str:
    """Subresource Integrity string (``sha512-<base64>``) of a file, as npm records it."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def npm_pack(dest: Path, npm: str = "npm") -> Path:
    """``npm pack @ohif/app@<pinned>`` into ``dest`` (npm checks the registry's integrity
    too); returns the tarball."""
    exe = shutil.which(npm)
    if exe is None:
        raise ViewerInstallError(
            "npm not found: install Node.js and npm (Debian: apt-get install npm), "
            "or give a tarball with --tarball")
    spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
    proc = subprocess.run(
        [exe, "pack", spec, "--json", "--ignore-scripts", "--pack-destination", str(dest)],
        cwd=dest, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise ViewerInstallError(f"npm pack {spec} failed: {proc.stderr.strip()[-500:]}")
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        raise ViewerInstallError(f"npm pack {spec}: unexpected output {proc.stdout[:200]!r}") from None
    return dest / filename.replace("@", "").replace("/", "-")


def extract_dist(tarball: Path, dest: Path) -> int:
    """Extract ``package/dist/`` of the npm tarball into ``dest`` (tarfile's ``data``
    filter: no absolute paths, no links out, no devices). Returns the file count."""
    count = 0
    with tarfile.open(tarball, "r|gz") as tar:
        for member in tar:
            if not member.name.startswith(DIST_PREFIX) or member.name == DIST_PREFIX:
                continue
            member.name = member.name[len(DIST_PREFIX):]
            tar.extract(member, dest, filter="data")
            count += member.isfile()
    if not (dest / "index.html").is_file():
        raise ViewerInstallError(f"{tarball.name} holds no dist/index.html: not a prebuilt OHIF app")
    return count


def files_to_rebase(dist: Path) -> list[str]:
    """Dist files (relative POSIX paths) in which a REBASE_RULES pattern occurs."""
    found = []
    for path in sorted(dist.rglob("*")):
        rules = REBASE_RULES.get(path.suffix)
        if rules and path.is_file():
            body = path.read_bytes()
            if any(pattern.search(body) for pattern, _ in rules):
                found.append(path.relative_to(dist).as_posix())
    return found


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    """One installer at a time per viewer dir (parallel test sessions share a cache)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _swap_in(staging: Path, root: Path) -> None:
    """Replace ``root`` with ``staging`` (two renames; the old tree is removed after)."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}-old-{os.getpid()}")
        os.rename(root, old)
    os.rename(staging, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def install(settings: Settings, *, force: bool = False, tarball: Path | None = None,
            npm: str = "npm") -> tuple[Installed, bool]:
    """Install the pinned OHIF viewer into :func:`viewer_dir`. Idempotent: returns
    ``(installed, False)`` when that version is already there, unless ``force``.
    ``tarball``: a local copy of the npm tarball instead of ``npm pack``."""
    root = viewer_dir(settings)
    with _install_lock(root):
        current = read_installed(root)
        if current is not None and current.version == OHIF_VERSION and not force:
            return current, False
        with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
            work = Path(tmp)
            packed = tarball or npm_pack(work, npm)
            integrity = sri(packed)
            if integrity != OHIF_INTEGRITY:
                raise ViewerInstallError(
                    f"{packed.name}: integrity {integrity[:24]}... is not the pinned "
                    f"{OHIF_PACKAGE}@{OHIF_VERSION} ({OHIF_INTEGRITY[:24]}...); refusing it")
            staging = work / "viewer"
            files = extract_dist(packed, staging / "dist")
            rebased = files_to_rebase(staging / "dist")
            record = {"package": OHIF_PACKAGE, "version": OHIF_VERSION, "integrity": integrity,
                      "files": files, "rebase": rebased}
            (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
            _swap_in(staging, root)
    log.info("OHIF viewer %s installed in %s (%d files)", OHIF_VERSION, root, files)
    installed = read_installed(root)
    assert installed is not None
    return installed, True
