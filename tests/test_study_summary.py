"""The study summary (pacs/index/summary.py): written when a study is created, rewritten
after deletes and replacements, rebuilt at upgrade, used by study-level searches only
while it belongs to the representative instance, and never changing an answer."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import orjson
from sqlalchemy import delete, select, update

from pacs.access import SYSTEM
from pacs.archive import Archive
from pacs.index import migrate
from pacs.index.models import EventCounter, Instance, SchemaMeta, Series, Study
from pacs.index.summary import SUMMARY_TAGS, SUMMARY_VERSION, covers, study_summary
from pacs.query import Level, Query, make_matcher, search
from pacs.query import run
from pacs.settings import Settings

from .factory import make_ct, to_bytes

STUDY = "1.2.3.4242"
NAME, DESCRIPTION, SERIES_DESCRIPTION = "00100010", "00081030", "0008103E"
COVERED = ["00100010", "00100020", "00080020", "00080050", "00081030", "0020000D", "00201208", "00080061"]


def _store(archive: Archive, n: int, description: str = "HEAD", series: str = "1") -> None:
    ds = make_ct(study=STUDY, series=f"{STUDY}.{series}", sop=f"{STUDY}.{series}.{n}", seed=n)
    ds.StudyDescription = description
    ds.SeriesDescription = f"series {series}"
    ds.InstanceNumber = n
    assert archive.ingest_bytes(to_bytes(ds), source="test").status in ("stored", "replaced")


def _study_row(archive: Archive) -> Any:
    with archive.db.read() as conn:
        return conn.execute(select(Study).where(Study.study_uid == STUDY)).one()


def _first_instance(archive: Archive) -> Any:
    with archive.db.read() as conn:
        return conn.execute(
            select(Instance).join(Series, Series.id == Instance.series_fk)
            .join(Study, Study.id == Series.study_fk).where(Study.study_uid == STUDY).order_by(Instance.id)
        ).first()


def _assert_summary_of_first(archive: Archive) -> None:
    study, first = _study_row(archive), _first_instance(archive)
    assert study.summary_rep == first.id
    assert study.summary_sha == first.sha256
    assert study.summary_json == study_summary(first.dicom_json)
    kept = orjson.loads(study.summary_json)
    assert set(kept) <= SUMMARY_TAGS and kept[DESCRIPTION] == orjson.loads(first.dicom_json)[DESCRIPTION]


def _answer(archive: Archive, tags: list[str]) -> dict[str, Any]:
    size = run.SUBSETS.size
    run.SUBSETS.resize(0)  # read the stored values, not parsed subsets of an earlier search
    run.SUBSETS.resize(size)
    query = Query(Level.STUDY, [make_matcher("StudyInstanceUID", [STUDY])])
    (match,) = search(archive.db, query, tags)
    return match.json


def test_ingest_writes_the_summary_of_the_first_instance(archive: Archive) -> None:
    for n in (1, 2, 3):
        _store(archive, n, description=f"D{n}")
    _assert_summary_of_first(archive)
    assert orjson.loads(_study_row(archive).summary_json)[DESCRIPTION]["Value"] == ["D1"]


def test_a_search_answers_from_the_summary_when_it_holds_every_key(archive: Archive) -> None:
    _store(archive, 1)
    _store(archive, 2)
    expected = _answer(archive, COVERED)
    assert expected[DESCRIPTION]["Value"] == ["HEAD"] and expected["00201208"]["Value"] == [2]
    summary = _study_row(archive).summary_json
    with archive.db.write() as conn:  # the summary is read: a changed one shows
        conn.execute(update(Study).values(summary_json=orjson.dumps(
            {DESCRIPTION: {"vr": "LO", "Value": ["FROM SUMMARY"]}}).decode()))
    assert _answer(archive, COVERED)[DESCRIPTION]["Value"] == ["FROM SUMMARY"]
    # a key outside the summary: the whole answer comes from the instance JSON
    assert _answer(archive, [DESCRIPTION, SERIES_DESCRIPTION])[DESCRIPTION]["Value"] == ["HEAD"]
    with archive.db.write() as conn:  # no summary: the first instance is looked up
        conn.execute(update(Study).values(summary_json=None, summary_rep=None, summary_sha=None))
    assert _answer(archive, COVERED) == expected
    with archive.db.write() as conn:  # a summary without its instance id: the same
        conn.execute(update(Study).values(summary_json=summary))
    assert _answer(archive, COVERED) == expected


def test_summary_and_instance_json_give_the_same_answer(archive: Archive) -> None:
    for n in (1, 2):
        _store(archive, n, series=str(n))
    tags = sorted(SUMMARY_TAGS)
    from_summary = _answer(archive, tags)
    with archive.db.write() as conn:
        conn.execute(update(Study).values(summary_json=None, summary_rep=None, summary_sha=None))
    assert _answer(archive, tags) == from_summary
    assert from_summary[NAME]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_deleting_the_first_instance_moves_the_summary_to_the_next(archive: Archive) -> None:
    for n in (1, 2, 3):
        _store(archive, n, description=f"D{n}")
    archive.delete(STUDY, f"{STUDY}.1", f"{STUDY}.1.1", caller=SYSTEM)
    _assert_summary_of_first(archive)
    assert _answer(archive, COVERED)[DESCRIPTION]["Value"] == ["D2"]


def test_replacing_the_first_instance_rewrites_the_summary(settings: Settings) -> None:
    archive = Archive(replace(settings, duplicate_policy="overwrite"))
    try:
        _store(archive, 1, description="BEFORE")
        _store(archive, 2, description="BEFORE")
        _store(archive, 1, description="AFTER")
        _assert_summary_of_first(archive)
        assert _answer(archive, COVERED)[DESCRIPTION]["Value"] == ["AFTER"]
        _store(archive, 2, description="OTHER")  # not the first: the summary stays
        assert orjson.loads(_study_row(archive).summary_json)[DESCRIPTION]["Value"] == ["AFTER"]
    finally:
        archive.close()


def test_upgrade_rebuilds_summaries_of_another_version(archive: Archive) -> None:
    _store(archive, 1)
    _store(archive, 2)
    with archive.db.write() as conn:
        conn.execute(update(Study).values(summary_json=None, summary_rep=None, summary_sha=None))
        conn.execute(update(SchemaMeta).where(SchemaMeta.key == "study_summary").values(value="0"))
    migrate.upgrade(archive.db)
    _assert_summary_of_first(archive)
    with archive.db.read() as conn:
        assert conn.execute(select(SchemaMeta.value).where(SchemaMeta.key == "study_summary")).scalar() == \
            SUMMARY_VERSION
    with archive.db.write() as conn:  # a version never recorded (an index from before 0012)
        conn.execute(update(Study).values(summary_json=None, summary_rep=None, summary_sha=None))
        conn.execute(delete(SchemaMeta).where(SchemaMeta.key == "study_summary"))
    migrate.upgrade(archive.db)
    _assert_summary_of_first(archive)


def test_upgrade_while_others_write(archive: Archive) -> None:
    """``pacs db upgrade`` next to a running server (here: a thread writing all along, as
    the staged objects' flush did when CI failed): the upgrade queues with the other
    writers instead of failing with "database is locked" when its snapshot went stale."""
    _store(archive, 1)
    stop, written, failures = threading.Event(), [0], []

    def write_all_along() -> None:
        while not stop.is_set():
            try:
                with archive.db.write() as conn:
                    conn.execute(update(EventCounter).values(last_id=EventCounter.last_id))
                written[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

    writer = threading.Thread(target=write_all_along)
    writer.start()
    try:
        for _ in range(20):
            with archive.db.write() as conn:
                conn.execute(update(SchemaMeta).where(SchemaMeta.key == "study_summary").values(value="0"))
            migrate.upgrade(archive.db)
    finally:
        stop.set()
        writer.join()
    assert failures == [] and written[0] > 0
    _assert_summary_of_first(archive)


def test_the_usual_study_searches_are_answered_from_the_summary() -> None:
    """QIDO-RS study defaults with OHIF's includefield, ``includefield=all``, and the
    return keys of a workstation's study browser (bench/bigindex_cases.py) are kept."""
    from dicomweb.qido import return_tags
    from pydicom.datadict import tag_for_keyword

    assert covers(return_tags(Level.STUDY, {}, ["00081030", "00080060"], False))
    assert covers(return_tags(Level.STUDY, {}, [], True))
    browser = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
               "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyDescription", "PatientBirthDate",
               "PatientSex", "StudyTime", "ReferringPhysicianName", "StudyID", "NumberOfStudyRelatedSeries")
    assert covers(f"{tag_for_keyword(k):08X}" for k in browser)
