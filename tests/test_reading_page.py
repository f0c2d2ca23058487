"""The radiologist's page (/reading) in a real headless Chromium (Debian's, driven by
playwright): the worklist lists the study, claim, the viewer link, write and sign a
report; then the SR is retrievable by WADO-RS and the DiagnosticReport reached the EMR."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from dicomweb_client.api import DICOMwebClient

from pacs.consumers import consume
from worklist import reading

from .factory import make_ct, short_uid, to_bytes
from .test_reports import FhirReceiver, _content_texts, _wait, emr_server, receiver_app  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.fixture
def page(emr_server) -> Iterator:  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _open_as(page, base_url: str, radiologist: str, study: str):  # type: ignore[no-untyped-def]
    """Open /reading, type the radiologist's name, and wait for the study's row drawn for
    that name (the page's first load, before the name, may still be on screen)."""
    page.goto(f"{base_url}/reading")
    page.fill("#me", radiologist)
    page.dispatch_event("#me", "change")
    row = page.locator(f'tbody[data-radiologist="{radiologist}"] tr[data-study="{study}"]')
    row.wait_for(timeout=15_000)
    return row


def _enter_study(archive, study: str) -> None:  # type: ignore[no-untyped-def]
    """Hold a two-instance study and put it on the reading worklist."""
    series = short_uid()
    for i in range(2):
        ds = make_ct(study=study, series=series, patient_id="P9", patient_name="Poe^Edgar", seed=i)
        ds.StudyDescription = "CT CHEST"
        archive.ingest_bytes(to_bytes(ds), source="test")
    archive.sweep_stable(now=time.time() + 3600)
    consume(archive.db, reading.CONSUMER)  # the server's loop would too; now is quicker


def test_claim_write_sign(emr_server, page) -> None:  # type: ignore[no-untyped-def]
    server, receiver = emr_server
    archive = server.archive
    study = short_uid()
    _enter_study(archive, study)
    row = _open_as(page, server.base_url, "Dr Alice", study)
    assert "Poe Edgar" in row.inner_text() and "CT CHEST" in row.inner_text()
    assert row.locator(".state").inner_text() == "unread"
    href = row.get_by_role("link", name="Open in viewer").get_attribute("href")
    assert href == f"/viewer/viewer?StudyInstanceUIDs={study}"

    row.get_by_role("button", name="Claim").click()
    page.wait_for_function(
        f"""() => document.querySelector('tr[data-study="{study}"] .state')?.textContent === 'claimed'""",
        timeout=15_000)
    row.get_by_role("button", name="Report").click()
    page.fill("#findings", "No consolidation. No effusion.")
    page.fill("#impression", "Normal chest CT.")
    page.get_by_role("button", name="Sign report").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Report signed')",
                           timeout=15_000)
    assert "final, version 1" in page.inner_text("#status")
    page.wait_for_function(
        f"""() => document.querySelector('tr[data-study="{study}"] .state')?.textContent === 'final'""",
        timeout=15_000)

    client = DICOMwebClient(url=f"{server.base_url}/dicom-web")
    srs = client.search_for_instances(study_instance_uid=study, search_filters={"Modality": "SR"})
    assert len(srs) == 1
    sr = client.retrieve_instance(study, srs[0]["0020000E"]["Value"][0], srs[0]["00080018"]["Value"][0])
    assert _content_texts(sr) == {"Findings": "No consolidation. No effusion.", "Impressions": "Normal chest CT."}
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Dr^Alice"
    _wait(lambda: len(receiver.of("DiagnosticReport")) == 1)
    report = receiver.of("DiagnosticReport")[0]
    assert (report.status, report.conclusion, report.resultsInterpreter[0].display) == \
        ("final", "Normal chest CT.", "Dr Alice")


def test_refresh_without_change_keeps_a_click(emr_server, page) -> None:  # type: ignore[no-untyped-def]
    """The list refreshes by itself; a refresh that brings nothing new must not redraw,
    or a click pressed before it and released after it is lost (CI saw this once)."""
    server, _ = emr_server
    study = short_uid()
    _enter_study(server.archive, study)
    row = _open_as(page, server.base_url, "Dr Alice", study)
    box = row.get_by_role("button", name="Claim").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.evaluate("load()")  # what the 15-second timer does; returns once its answer is handled
    page.mouse.up()
    page.wait_for_function(
        f"""() => document.querySelector('tr[data-study="{study}"] .state')?.textContent === 'claimed'""",
        timeout=15_000)
    assert page.inner_text("#status") == "Study claimed."
