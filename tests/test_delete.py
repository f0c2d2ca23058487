"""Deleting studies, series and instances: rows, aggregates, events, objects."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from pacs.access import SYSTEM
from pacs.archive import Archive
from pacs.errors import NotFound
from pacs.index.models import Instance, Patient, PendingWrite, Series, Study

from .factory import make_ct, short_uid, to_bytes


def _study(archive: Archive) -> tuple[str, list[str], list[str]]:
    study = short_uid()
    series = [f"{study}.1", f"{study}.2"]
    sops = []
    for i in range(5):
        ds = make_ct(study=study, series=series[i % 2], seed=i)
        if i % 2:
            ds.Modality = "PT"
        sops.append(archive.ingest_bytes(to_bytes(ds), source="test").sop_instance_uid)
    return study, series, sops


def _keys(archive: Archive) -> set[str]:
    with archive.db.read() as conn:
        return set(conn.execute(select(Instance.blob_key)).scalars())


def _count(archive: Archive, model) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count(model.id))).scalar())


def test_delete_instance_keeps_aggregates_exact(archive: Archive) -> None:
    study, series, sops = _study(archive)
    keys_before = _keys(archive)
    result = archive.delete(study, series[0], sops[0], caller=SYSTEM)
    assert (result.instances, result.series_removed, result.study_removed) == (1, [], False)
    with archive.db.read() as conn:
        row = conn.execute(select(Study).where(Study.study_uid == study)).one()
        counts = dict(conn.execute(select(Series.series_uid, Series.num_instances)).all())
    assert (row.num_series, row.num_instances, row.modalities) == (2, 4, "CT\\PT")
    assert counts == {series[0]: 2, series[1]: 2}
    gone = keys_before - _keys(archive)
    assert len(gone) == 1 and not archive.store.exists(gone.pop())
    assert archive.changes(0, 100)[-1].type == "InstanceDeleted"
    assert _count(archive, PendingWrite) == 0


def test_delete_series_updates_modalities(archive: Archive) -> None:
    study, series, _ = _study(archive)
    result = archive.delete(study, series[1], caller=SYSTEM)
    assert (result.instances, result.series_removed) == (2, [series[1]])
    with archive.db.read() as conn:
        row = conn.execute(select(Study).where(Study.study_uid == study)).one()
    assert (row.num_series, row.num_instances, row.modalities) == (1, 3, "CT")
    assert [c.type for c in archive.changes(0, 100)][-1] == "SeriesDeleted"


def test_delete_study_removes_everything(archive: Archive) -> None:
    study, series, _ = _study(archive)
    keys = _keys(archive)
    result = archive.delete(study, caller=SYSTEM)
    assert (result.instances, result.study_removed) == (5, True)
    for model in (Instance, Series, Study, Patient):
        assert _count(archive, model) == 0
    assert not any(archive.store.exists(k) for k in keys)
    events = [c for c in archive.changes(0, 100) if c.type.endswith("Deleted")]
    assert [c.type for c in events] == ["SeriesDeleted", "SeriesDeleted", "StudyDeleted"]
    assert events[-1].study_uid == study and events[-1].payload == {"instances": 5}


def test_delete_unknown_raises_not_found(archive: Archive) -> None:
    study, series, _ = _study(archive)
    with pytest.raises(NotFound):
        archive.delete("1.2.3.4", caller=SYSTEM)
    with pytest.raises(NotFound):
        archive.delete(study, series[0], "1.2.3.4", caller=SYSTEM)
    assert _count(archive, Instance) == 5


def test_failed_object_delete_is_left_to_the_sweep(archive: Archive, monkeypatch) -> None:
    study, _, _ = _study(archive)
    keys = _keys(archive)
    monkeypatch.setattr(archive.store, "delete", lambda key: (_ for _ in ()).throw(OSError("disk gone")))
    archive.delete(study, caller=SYSTEM)
    assert _count(archive, Instance) == 0
    assert _count(archive, PendingWrite) == 5  # recorded, not lost
    monkeypatch.undo()
    assert archive.sweep_orphans(grace_seconds=0) == 5
    assert not any(archive.store.exists(k) for k in keys)


def test_cli_delete(archive: Archive, monkeypatch, capsys) -> None:
    from pacs.cli import main

    study, series, _ = _study(archive)
    monkeypatch.setenv("PACS_DATA_DIR", str(archive.settings.data_dir))
    monkeypatch.setenv("PACS_DATABASE_URL", archive.settings.resolved_database_url)
    assert main(["delete", study, series[1]]) == 0
    assert "deleted 2 instances, 1 series" in capsys.readouterr().out
    assert main(["delete", study, "1.2.3"]) == 2
    assert main(["delete", study]) == 0
    assert _count(archive, Study) == 0


def _aggregates(archive: Archive, study: str) -> tuple:
    with archive.db.read() as conn:
        row = conn.execute(select(Study).where(Study.study_uid == study)).one()
        series = dict(conn.execute(select(Series.series_uid, Series.num_instances)
                                   .where(Series.study_fk == row.id)).all())
    return row.num_series, row.num_instances, row.modalities, series


@pytest.mark.parametrize("what", ["series", "study", "other-series-modality"])
def test_ingest_after_delete_keeps_aggregates_exact(archive: Archive, what: str) -> None:
    """Ingest remembers each series' keys (pacs.index.writer.SeriesCache); a delete in
    between must not make the next instance miscount or land on a deleted row."""
    study, series, _ = _study(archive)  # series[0]: 3 CT, series[1]: 2 PT; the cache knows both
    if what == "series":
        archive.delete(study, series[0], caller=SYSTEM)
    elif what == "study":
        archive.delete(study, caller=SYSTEM)
    else:  # the PT series goes: the study's modalities shrink to CT
        archive.delete(study, series[1], caller=SYSTEM)
    archive.ingest_bytes(to_bytes(make_ct(study=study, series=series[0], seed=99)), source="test")
    archive.ingest_bytes(to_bytes(make_ct(study=study, series=series[1], seed=98)), source="test")  # CT now
    expected = {
        "series": (2, 4, "CT\\PT", {series[0]: 1, series[1]: 2 + 1}),
        "study": (2, 2, "CT", {series[0]: 1, series[1]: 1}),
        "other-series-modality": (2, 5, "CT", {series[0]: 4, series[1]: 1}),
    }[what]
    assert _aggregates(archive, study) == expected
