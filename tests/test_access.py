"""Authorisation inside the archive service (pacs/access.py): every service call carries
its caller, and the archive, not the door, decides what that caller may do. A real
archive on SQLite or PostgreSQL; refusals must leave nothing behind."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from pacs.access import ANONYMOUS, NOBODY, SYSTEM, Caller, Forbidden
from pacs.archive import Archive
from pacs.index.models import Instance
from pacs.query import Level, Query, make_matcher

from .factory import make_ct, short_uid, to_bytes

READER = Caller("viewer", "jwt", frozenset({"read"}))
WRITER = Caller("modality", "api-token", frozenset({"write"}))
RADIOLOGIST = Caller("dr", "jwt", frozenset({"report", "read"}))


def _two_studies(archive: Archive) -> dict[str, str]:
    """Two one-instance studies of two patients: study UID -> its SOP Instance UID."""
    sops = {}
    for patient in ("P1", "P2"):
        study = short_uid()
        sops[study] = archive.ingest_bytes(to_bytes(make_ct(study=study, patient_id=patient)),
                                           source="test").sop_instance_uid
    return sops


def _study_uids(matches: list) -> list[str]:  # type: ignore[type-arg]
    return sorted(m.json["0020000D"]["Value"][0] for m in matches)


def _instances(archive: Archive) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(Instance)).scalar_one())


def _files(archive: Archive) -> list[str]:
    root = archive.settings.data_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".db"
                  and not p.name.endswith(("-wal", "-shm")) and "audit" not in p.name)


def test_search_needs_read_and_a_study_token_sees_its_study_only(archive: Archive) -> None:
    first, second = _two_studies(archive)  # the keys, in order
    everything = Query(Level.STUDY)
    assert _study_uids(archive.search(everything, caller=READER)) == sorted([first, second])
    with pytest.raises(Forbidden, match="needs the read scope"):
        archive.search(everything, caller=WRITER)
    with pytest.raises(Forbidden):
        archive.search(everything, caller=NOBODY)
    confined = Caller("engine", "study-token", frozenset({"read", "ai"}), study=first)
    assert _study_uids(archive.search(everything, caller=confined)) == [first]
    other = Query(Level.STUDY, [make_matcher("StudyInstanceUID", [second])])
    assert archive.search(other, caller=confined) == []
    with pytest.raises(Forbidden, match="patient-level"):
        archive.search(Query(Level.PATIENT), caller=confined)


def test_retrieve_and_pixel_access_are_confined(archive: Archive) -> None:
    sops = _two_studies(archive)
    first, second = sops
    confined = Caller("engine", "study-token", frozenset({"read"}), study=first)
    planned = archive.plan_retrieve(Query(Level.IMAGE), caller=confined)
    assert [item.sop_instance_uid for item in planned] == [sops[first]]
    rows = archive.instance_metadata(Query(Level.IMAGE), caller=confined)
    assert {row.study_uid for row in rows} == {first}
    held = archive.instance_metadata(Query(Level.IMAGE, [make_matcher("StudyInstanceUID", [second])]),
                                     caller=READER)
    assert [row.sop_uid for row in held] == [sops[second]]
    with pytest.raises(Forbidden, match="one other study"):
        archive.locate(second, held[0].series_uid, held[0].sop_uid, caller=confined)
    with pytest.raises(Forbidden, match="one other study"):
        archive.instances_of(second, caller=confined)
    assert archive.locate(second, held[0].series_uid, held[0].sop_uid, caller=READER).study_uid == second


def test_delete_needs_the_delete_scope_and_its_study(archive: Archive) -> None:
    first, second = _two_studies(archive)  # the keys, in order
    with pytest.raises(Forbidden, match="needs the delete scope"):
        archive.delete(first, caller=READER)
    confined = Caller("x", "study-token", frozenset({"delete"}), study=second)
    with pytest.raises(Forbidden):
        archive.delete(first, caller=confined)
    assert _instances(archive) == 2  # nothing went
    archive.delete(first, caller=Caller("admin", "jwt", frozenset({"delete"})))
    assert _study_uids(archive.search(Query(Level.STUDY), caller=SYSTEM)) == [second]


def test_store_needs_the_scope_of_its_source_and_leaves_nothing_when_refused(archive: Archive) -> None:
    study = short_uid()
    data = to_bytes(make_ct(study=study))
    with pytest.raises(Forbidden, match="needs the write scope"):
        archive.ingest_bytes(data, source="stow", caller=READER)
    with pytest.raises(Forbidden, match="needs the write scope"):
        archive.ingest_bytes(data, source="stow", caller=RADIOLOGIST)
    confined = Caller("engine", "study-token", frozenset({"write"}), study=short_uid())
    with pytest.raises(Forbidden, match="one other study"):
        archive.ingest_bytes(data, source="stow", caller=confined)
    assert _instances(archive) == 0
    assert _files(archive) == []  # no object, no spool left
    assert archive.ingest_bytes(data, source="stow", caller=WRITER).status == "stored"
    sr = make_ct(study=study)
    assert archive.ingest_bytes(to_bytes(sr), source="report", caller=RADIOLOGIST).status == "stored"
    with pytest.raises(Forbidden, match="needs the ai scope"):
        archive.ingest_bytes(to_bytes(make_ct(study=study)), source="ai", caller=WRITER)
    assert _instances(archive) == 2


def test_anonymous_and_system_callers_hold_every_scope(archive: Archive) -> None:
    first, _ = _two_studies(archive)
    for caller in (ANONYMOUS, SYSTEM):
        assert len(archive.search(Query(Level.IMAGE), caller=caller)) == 2
    archive.delete(first, caller=ANONYMOUS)
    assert _instances(archive) == 1
