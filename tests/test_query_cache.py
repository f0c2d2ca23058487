"""The search's cache of parsed return keys (pacs/query/run.py): a repeated query is
answered from it, and a replaced object (same SOP Instance UID, other content) is never
answered from the old entry."""

from __future__ import annotations

from dataclasses import replace

from pacs.archive import Archive
from pacs.query import Level, Query, make_matcher, search
from pacs.query import run
from pacs.settings import Settings

from .factory import make_ct, to_bytes

DESCRIPTION, PATIENT_ID = "00081030", "00100020"


def _descriptions(archive: Archive, study: str) -> list[str]:
    query = Query(Level.STUDY, [make_matcher("StudyInstanceUID", [study])])
    return [m.json[DESCRIPTION]["Value"][0] for m in search(archive.db, query, [DESCRIPTION, PATIENT_ID])]


def test_replaced_object_is_not_answered_from_the_cache(settings: Settings) -> None:
    archive = Archive(replace(settings, duplicate_policy="overwrite"))
    try:
        ds = make_ct(study="1.2.3.777", series="1.2.3.777.1", sop="1.2.3.777.1.1")
        ds.StudyDescription = "FIRST"
        archive.ingest_bytes(to_bytes(ds), source="test")
        assert _descriptions(archive, "1.2.3.777") == ["FIRST"]
        before = len(run.SUBSETS._data)
        assert _descriptions(archive, "1.2.3.777") == ["FIRST"]  # from the cache
        assert len(run.SUBSETS._data) == before
        ds.StudyDescription = "SECOND"
        assert archive.ingest_bytes(to_bytes(ds), source="test").status == "replaced"
        assert _descriptions(archive, "1.2.3.777") == ["SECOND"]
    finally:
        archive.close()


def test_cached_answers_are_copies(archive: Archive) -> None:
    ds = make_ct(study="1.2.3.778")
    ds.StudyDescription = "KEEP"
    archive.ingest_bytes(to_bytes(ds), source="test")
    query = Query(Level.STUDY, [make_matcher("StudyInstanceUID", ["1.2.3.778"])])
    first = next(search(archive.db, query, [DESCRIPTION]))
    first.json["00081190"] = {"vr": "UR", "Value": ["added by a caller"]}
    again = next(search(archive.db, query, [DESCRIPTION]))
    assert set(again.json) == {DESCRIPTION} and again.json[DESCRIPTION]["Value"] == ["KEEP"]
