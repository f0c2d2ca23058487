"""The OHIF viewer at /viewer: install (pinned @ohif/app, integrity checked), static hosting
(media types, cache headers, SPA fallback, rebased paths, generated app-config.js), and a
real headless Chromium (Debian's /usr/bin/chromium driven by playwright) that lists the
sample studies and draws images of uncompressed, JPEG-LS, JPEG 2000 and multi-frame RGB
studies from our DICOMweb door.

The viewer is fetched once into pytest's cache (``.pytest_cache/d/pacs-viewer``) and
reused by later runs; it needs npm. The browser tests are marked ``browser``.
"""

from __future__ import annotations

import base64
import http.client
import io
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from pydicom import dcmread

from pacs.archive import Archive
from pacs.importer import import_paths
from pacs.settings import Settings, load_settings
from pacs.viewer import OHIF_VERSION, ViewerInstallError, install, sri, viewer_dir

from .servers import ThreadedServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "files"
TIMEOUT_MS = 30_000
#: Polled in the page until the cornerstone viewport has drawn something: its canvas
#: holds at least 16 grey levels (a blank or cleared canvas has one).
DRAWN = """() => {
  const c = document.querySelector('.cornerstone-viewport-element canvas, canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return false;
  const ctx = c.getContext('2d');
  if (!ctx) return false;
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 17) seen.add(d[i] + 256 * d[i + 1] + 65536 * d[i + 2]);
  return seen.size >= 16;
}"""
PUBLIC_URL_VIEWER = re.compile(r"window\.PUBLIC_URL\s*=\s*(['\"])/viewer/\1")
PUBLIC_URL_ROOT = re.compile(r"PUBLIC_URL\s*=\s*(['\"])/\1")
CANVAS_PNG = "() => document.querySelector('.cornerstone-viewport-element canvas, canvas.cornerstone-canvas').toDataURL('image/png')"


@pytest.fixture(scope="session")
def viewer_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned viewer, installed once into pytest's cache dir (kept across runs; a
    session temp dir when the cache plugin is off)."""
    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("pacs-viewer")) if cache is not None else tmp_path_factory.mktemp("pacs-viewer")
    root = base / "viewer"
    if not (root / "install.json").exists() and shutil.which("npm") is None:
        pytest.skip("npm is needed to fetch the OHIF viewer (.ci/run installs it)")
    install(load_settings(env={}, viewer_dir=str(root)))
    return root


@pytest.fixture(scope="module")
def hosted(viewer_cache: Path, module_database_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """The real server with the committed sample files ingested and the viewer installed."""
    settings = load_settings(env={}, data_dir=tmp_path_factory.mktemp("viewer-data"),
                             database_url=module_database_url, dimse_port=0, http_port=0, shutdown_timeout=5, viewer_dir=str(viewer_cache))
    archive = Archive(settings)
    summary = import_paths(archive, [str(SAMPLES)], progress=False)
    assert summary.stored == len(list(SAMPLES.glob("*.dcm"))) and not summary.failed
    server = ThreadedServer(settings, archive).start()
    yield server
    server.stop()


def get(server: ThreadedServer, path: str, **headers: str) -> requests.Response:
    return requests.get(server.base_url + path, headers=headers, allow_redirects=False, timeout=30)


def raw_get(server: ThreadedServer, path: str) -> tuple[int, bytes]:
    """GET with the path sent as written (no client-side dot-segment removal)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


# -- install ---------------------------------------------------------------------------------


def test_install_is_idempotent_and_records_the_pinned_integrity(viewer_cache: Path) -> None:
    settings = load_settings(env={}, viewer_dir=str(viewer_cache))
    installed, fetched = install(settings)
    assert not fetched and installed.version == OHIF_VERSION
    assert installed.root == viewer_dir(settings) == viewer_cache
    assert (installed.dist / "index.html").is_file() and (installed.dist / "app-config.js").is_file()
    assert "index.html" in installed.rebase and any(p.startswith("app.bundle.") for p in installed.rebase)


def test_a_tarball_that_is_not_the_pinned_one_is_refused(settings: Settings, tmp_path: Path) -> None:
    fake = tmp_path / "ohif-app-evil.tgz"
    fake.write_bytes(b"\x1f\x8b not the package")
    with pytest.raises(ViewerInstallError, match="integrity"):
        install(settings, tarball=fake)
    assert not viewer_dir(settings).exists()
    assert sri(fake).startswith("sha512-")


def test_not_installed_answers_404_with_what_to_run(server: ThreadedServer) -> None:
    for path in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/app-config.js"):
        answer = get(server, path)
        assert answer.status_code == 404, path
        assert "pacs viewer install" in answer.json()["error"]
    assert get(server, "/").headers["Location"] == "/viewer/"
    assert get(server, "/viewer").headers["Location"] == "/viewer/"


def test_cli_install_is_idempotent(viewer_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pacs.cli import main

    monkeypatch.setenv("PACS_VIEWER_DIR", str(viewer_cache))
    assert main(["viewer", "install"]) == 0
    assert capsys.readouterr().out == (f"@ohif/app@{OHIF_VERSION} already installed in {viewer_cache}; "
                                       "`pacs serve` hosts it at /viewer/\n")


def test_a_running_server_picks_up_an_install(settings: Settings, viewer_cache: Path, tmp_path: Path) -> None:
    root = tmp_path / "viewer"
    server = ThreadedServer(settings.replace(viewer_dir=str(root))).start()
    try:
        assert get(server, "/viewer/").status_code == 404
        root.mkdir()
        (root / "dist").symlink_to(viewer_cache / "dist")  # the installed tree, without a second download
        shutil.copy(viewer_cache / "install.json", root / "install.json")
        answer = get(server, "/viewer/")
        assert answer.status_code == 200 and PUBLIC_URL_VIEWER.search(answer.text)
        (root / "install.json").unlink()
        assert get(server, "/viewer/").status_code == 404
    finally:
        server.stop()


# -- hosting ---------------------------------------------------------------------------------


def test_index_and_client_routes_get_the_rebased_index(hosted: ThreadedServer, viewer_cache: Path) -> None:
    index = get(hosted, "/viewer/")
    assert index.status_code == 200
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert index.headers["Cache-Control"] == "no-cache"
    assert index.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    body = index.text
    assert PUBLIC_URL_VIEWER.search(body) and not PUBLIC_URL_ROOT.search(body)
    assert 'src="/viewer/app-config.js"' in body and "init-service-worker" not in body
    assert not re.search(r'(src|href)="/(?!viewer/)', body)
    for route in ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/segmentation", "/viewer/local"):
        assert get(hosted, route).text == body, route
    assert get(hosted, "/viewer/no-such-chunk.js").status_code == 404
    for escape in ("/viewer/..%2Finstall.json", "/viewer/%2e%2e/install.json", "/viewer/assets/..%2F..%2Finstall.json"):
        assert raw_get(hosted, escape)[0] == 404, escape


def test_assets_media_types_cache_and_rebased_public_path(hosted: ThreadedServer, viewer_cache: Path) -> None:
    dist = viewer_cache / "dist"
    wasm = sorted(dist.glob("*.wasm"))[0].name
    answer = get(hosted, f"/viewer/{wasm}")
    assert answer.headers["Content-Type"] == "application/wasm"
    assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert answer.content == (dist / wasm).read_bytes()
    bundle = next(p.name for p in dist.glob("app.bundle.*.js"))
    js = get(hosted, f"/viewer/{bundle}", **{"Accept-Encoding": "gzip"})
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert js.headers["Content-Encoding"] == "gzip" and js.headers["Cache-Control"].endswith("immutable")
    assert re.search(r'__webpack_require__\.p\s*=\s*"/viewer/"', js.text)
    assert not re.search(r'__webpack_require__\.p\s*=\s*"/"', js.text)
    manifest = get(hosted, "/viewer/manifest.json")
    assert manifest.headers["Content-Type"] == "application/json"
    assert all(icon["src"].startswith("/viewer/assets/") for icon in manifest.json()["icons"])
    assert get(hosted, "/viewer/assets/favicon.ico").content == (dist / "assets" / "favicon.ico").read_bytes()
    assert "url(/viewer/" in get(hosted, "/viewer/app.bundle.css").text


def test_generated_app_config_points_at_our_dicomweb(hosted: ThreadedServer) -> None:
    config = get(hosted, "/viewer/app-config.js")
    assert config.status_code == 200 and config.headers["Content-Type"].startswith("text/javascript")
    for needle in ("routerBasename: '/viewer'", "window.location.origin + '/dicom-web'", "qidoRoot: root",
                   "wadoRoot: root", "imageRendering: 'wadors'", "defaultDataSourceName: 'pacs'",
                   "omitQuotationForMultipartRequest: true"):
        assert needle in config.text, needle
    assert "cloudfront" not in config.text


def test_app_config_uses_the_public_base_url(settings: Settings, viewer_cache: Path) -> None:
    behind_proxy = settings.replace(viewer_dir=str(viewer_cache),
                                    public_base_url="https://pacs.example.org/dicom-web/")
    server = ThreadedServer(behind_proxy).start()
    try:
        config = get(server, "/viewer/app-config.js").text
    finally:
        server.stop()
    assert 'var root = "https://pacs.example.org/dicom-web";' in config
    assert "window.location.origin" not in config


# -- the browser -----------------------------------------------------------------------------


@dataclass
class Traffic:
    """What the page did: console messages and every DICOMweb request with its answer."""

    console: list[str] = field(default_factory=list)
    dicomweb: list[tuple[int, str, str]] = field(default_factory=list)  # (status, path, Accept)
    failed: list[str] = field(default_factory=list)

    def unserved(self) -> list[tuple[int, str, str]]:
        return [entry for entry in self.dicomweb if entry[0] >= 400]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Traffic]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    traffic = Traffic()
    tab.on("console", lambda m: traffic.console.append(f"{m.type}: {m.text[:300]}"))
    tab.on("requestfailed", lambda r: traffic.failed.append(f"{r.url} {r.failure}"))

    def answered(response: Any) -> None:
        if "/dicom-web/" in response.url:
            path = response.url.split("/dicom-web", 1)[1]
            traffic.dicomweb.append((response.status, path, response.request.headers.get("accept", "")))

    tab.on("response", answered)
    yield tab, traffic
    context.close()


def _sample(modality: str, transfer_syntax_name: str) -> tuple[str, str]:
    """(StudyInstanceUID, SOPInstanceUID) of the committed sample of that modality and
    transfer syntax."""
    for path in sorted(SAMPLES.glob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        if ds.Modality == modality and ds.file_meta.TransferSyntaxUID.name == transfer_syntax_name:
            return ds.StudyInstanceUID, ds.SOPInstanceUID
    raise LookupError((modality, transfer_syntax_name))


@pytest.mark.browser
def test_study_list_shows_the_sample_studies(hosted: ThreadedServer, page: tuple[Any, Traffic]) -> None:
    tab, traffic = page
    tab.goto(hosted.base_url + "/viewer/")
    names = sorted({str(dcmread(p, stop_before_pixels=True).PatientName.family_name) for p in SAMPLES.glob("*.dcm")})
    descriptions = sorted({dcmread(p, stop_before_pixels=True).StudyDescription for p in SAMPLES.glob("*.dcm")})
    tab.wait_for_function("names => names.every(n => document.body.innerText.includes(n))",
                          arg=names, timeout=TIMEOUT_MS)
    shown = tab.evaluate("document.body.innerText")
    assert all(d in shown for d in descriptions), descriptions
    assert tab.evaluate("window.crossOriginIsolated") is True
    assert tab.evaluate("window.PUBLIC_URL") == "/viewer/"
    assert traffic.dicomweb and all(status == 200 for status, _, _ in traffic.dicomweb), traffic.dicomweb
    assert traffic.dicomweb[0][1].startswith("/studies?")
    assert not traffic.failed, traffic.failed


@pytest.mark.browser
def test_study_list_filter_becomes_a_qido_wildcard_search(hosted: ThreadedServer, page: tuple[Any, Traffic]) -> None:
    tab, traffic = page
    tab.goto(hosted.base_url + "/viewer/?patientName=M%C3%BCller")
    tab.wait_for_function("() => document.body.innerText.includes('CT CHEST WITH CONTRAST')"
                          " && !document.body.innerText.includes('XR CHEST PA')", timeout=TIMEOUT_MS)
    shown = tab.evaluate("document.body.innerText")
    assert "Müller" in shown and not any(name in shown for name in ("Wang", "Yamada", "Иванова"))
    searches = [path for status, path, _ in traffic.dicomweb if status == 200 and "PatientName=" in path]
    assert searches and "PatientName=*M%C3%BCller*" in searches[-1], traffic.dicomweb


@pytest.mark.browser
@pytest.mark.parametrize(("modality", "transfer_syntax"), [
    ("CT", "Explicit VR Little Endian"),
    ("CR", "JPEG-LS Lossless Image Compression"),
    ("CT", "JPEG 2000 Image Compression (Lossless Only)"),
    ("MR", "RLE Lossless"),
    ("US", "Explicit VR Little Endian"),  # multi-frame RGB
])
def test_opening_a_study_draws_its_image(hosted: ThreadedServer, page: tuple[Any, Traffic],
                                         modality: str, transfer_syntax: str) -> None:
    """The viewport canvas holds an image (many grey levels), fetched as WADO-RS frames of
    the sample of that transfer syntax (decoded in the browser: transfer-syntax=*)."""
    from PIL import Image

    tab, traffic = page
    study, sop = _sample(modality, transfer_syntax)
    tab.goto(f"{hosted.base_url}/viewer/viewer?StudyInstanceUIDs={study}")
    tab.wait_for_function(DRAWN, timeout=TIMEOUT_MS)
    data_url = tab.evaluate(CANVAS_PNG)
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L")
    low, high = image.getextrema()
    assert high - low > 100, (low, high)
    assert len(set(image.getdata())) > 32
    def fetched() -> bool:
        return any(f"/instances/{sop}/frames/" in path and status == 200 for status, path, _ in traffic.dicomweb)

    # Playwright hands response events to Python only inside its own calls, so the one
    # that fed the canvas can arrive after the canvas shows the image: poll, bounded.
    for _ in range(200):
        if fetched():
            break
        tab.wait_for_timeout(50)
    assert fetched(), traffic.dicomweb
    assert not traffic.unserved(), traffic.unserved()
