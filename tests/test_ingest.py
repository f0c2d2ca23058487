"""The one ingest path, at the archive-service level, on SQLite or PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from sqlalchemy import func, insert, select, update

from pacs.archive import Archive
from pacs.errors import Conflict, DuplicateConflict, InvalidInstance, StorageUnavailable
from pacs.index.models import Event, Instance, Patient, PendingWrite, Series, Study
from pacs.storage.keys import instance_key, sop_uid_candidates

from .factory import make_ct, to_bytes


def _instance(archive: Archive, sop: str):
    with archive.db.read() as conn:
        return conn.execute(select(Instance).where(Instance.sop_instance_uid == sop)).one()


def _study(archive: Archive, uid: str):
    with archive.db.read() as conn:
        return conn.execute(select(Study).where(Study.study_uid == uid)).one()


def _read_blob(archive: Archive, key: str) -> bytes:
    with archive.store.open(key) as fp:
        return fp.read()


def test_stored_bytes_equal_bytes_in(archive: Archive) -> None:
    data = to_bytes(make_ct())
    result = archive.ingest_bytes(data, source="test")
    assert result.status == "stored"
    row = _instance(archive, result.sop_instance_uid)
    assert _read_blob(archive, row.blob_key) == data
    assert row.size == len(data)


def test_identical_resend_is_success_and_duplicates_nothing(archive: Archive) -> None:
    data = to_bytes(make_ct())
    first = archive.ingest_bytes(data, source="test")
    again = archive.ingest_bytes(data, source="test")
    assert (first.status, again.status) == ("stored", "duplicate")
    objects = Path(archive.settings.resolved_storage_url)
    assert len(list(objects.rglob("*.dcm"))) == 1 and not list(Path(archive.incoming_dir).glob("*.dcm"))
    study = _study(archive, first.study_uid)
    assert (study.num_instances, study.num_series) == (1, 1)
    with archive.db.read() as conn:
        assert conn.execute(select(func.count(Event.id))).scalar() == 1


def test_different_object_same_sop_rejected_by_default(archive: Archive) -> None:
    ds = make_ct(seed=1)
    archive.ingest_bytes(to_bytes(ds), source="test")
    other = make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=2)
    with pytest.raises(DuplicateConflict):
        archive.ingest_bytes(to_bytes(other), source="test")
    row = _instance(archive, ds.SOPInstanceUID)
    assert _read_blob(archive, row.blob_key) == to_bytes(ds)
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))


def test_overwrite_policy_replaces_object(settings, tmp_path) -> None:
    archive = Archive(settings.replace(duplicate_policy="overwrite"))
    ds = make_ct(seed=1)
    first = archive.ingest_bytes(to_bytes(ds), source="test")
    old_key = _instance(archive, ds.SOPInstanceUID).blob_key
    other = make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=2)
    result = archive.ingest_bytes(to_bytes(other), source="test")
    assert (first.status, result.status) == ("stored", "replaced")
    row = _instance(archive, ds.SOPInstanceUID)
    assert _read_blob(archive, row.blob_key) == to_bytes(other)
    assert not archive.store.exists(old_key)
    assert _study(archive, ds.StudyInstanceUID).num_instances == 1
    archive.close()


def test_keep_policy_keeps_first(settings) -> None:
    archive = Archive(settings.replace(duplicate_policy="keep"))
    ds = make_ct(seed=1)
    archive.ingest_bytes(to_bytes(ds), source="test")
    other = make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=2)
    assert archive.ingest_bytes(to_bytes(other), source="test").status == "kept"
    key = _instance(archive, ds.SOPInstanceUID).blob_key
    assert _read_blob(archive, key) == to_bytes(ds)
    # the new copy, written before the index found the held one, is gone again
    objects = Path(archive.settings.resolved_storage_url)
    assert [p.relative_to(objects).as_posix() for p in objects.rglob("*.dcm")] == [key]
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))
    archive.close()


def test_study_under_another_patient_refused(archive: Archive) -> None:
    ds = make_ct(patient_id="A")
    archive.ingest_bytes(to_bytes(ds), source="test")
    intruder = make_ct(study=ds.StudyInstanceUID, patient_id="B")
    with pytest.raises(Conflict, match="another patient"):
        archive.ingest_bytes(to_bytes(intruder), source="test")
    with archive.db.read() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar() == 1
        assert conn.execute(select(func.count(PendingWrite.id))).scalar() == 0


@pytest.mark.parametrize(
    "attr, value, reason",
    [
        ("StudyInstanceUID", None, "StudyInstanceUID missing"),
        ("SeriesInstanceUID", None, "SeriesInstanceUID missing"),
        ("SOPInstanceUID", None, "SOPInstanceUID missing"),
        ("StudyInstanceUID", "../../x", "not a valid UID"),
        ("SeriesInstanceUID", "1.2.3/../4", "not a valid UID"),
        ("SOPInstanceUID", "1." * 40 + "1", "not a valid UID"),
    ],
)
def test_bad_uids_refused_nothing_stored(archive: Archive, attr: str, value, reason: str) -> None:
    ds = make_ct()
    if value is None:
        delattr(ds, attr)
    else:
        setattr(ds, attr, value)
        if attr == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    with pytest.raises(InvalidInstance, match=reason):
        archive.ingest_bytes(to_bytes(ds), source="test")
    _assert_nothing_stored(archive)


def _assert_nothing_stored(archive: Archive) -> None:
    with archive.db.read() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar() == 0
        assert conn.execute(select(func.count(Study.id))).scalar() == 0
        assert conn.execute(select(func.count(Event.id))).scalar() == 0
    objects = Path(archive.settings.resolved_storage_url)
    assert not [p for p in objects.rglob("*") if p.is_file()]


@pytest.mark.parametrize("cut", [100, 140, 400, -100])
def test_truncated_object_refused(archive: Archive, cut: int) -> None:
    data = to_bytes(make_ct(rows=32, columns=32))
    with pytest.raises(InvalidInstance):
        archive.ingest_bytes(data[:cut], source="test")
    _assert_nothing_stored(archive)


def test_not_dicom_refused(archive: Archive) -> None:
    with pytest.raises(InvalidInstance, match="not a DICOM"):
        archive.ingest_bytes(b"hello world" * 50, source="test")
    _assert_nothing_stored(archive)


def test_aggregates_exact(archive: Archive) -> None:
    study = "1.2.826.0.1.3680043.10.1234.7"
    series = ["1.2.826.0.1.3680043.10.1234.7.1", "1.2.826.0.1.3680043.10.1234.7.2"]
    for i in range(5):
        ds = make_ct(study=study, series=series[i % 2], seed=i)
        if i % 2:
            ds.Modality = "PT"
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        archive.ingest_bytes(to_bytes(ds), source="test")
    row = _study(archive, study)
    assert (row.num_series, row.num_instances) == (2, 5)
    assert row.modalities == "CT\\PT"
    assert row.sop_classes == "1.2.840.10008.5.1.4.1.1.128\\1.2.840.10008.5.1.4.1.1.2"
    with archive.db.read() as conn:
        counts = dict(conn.execute(select(Series.series_uid, Series.num_instances)).all())
    assert counts == {series[0]: 3, series[1]: 2}


def test_events_in_order(archive: Archive) -> None:
    sops = [archive.ingest_bytes(to_bytes(make_ct(seed=i)), source="test").sop_instance_uid for i in range(3)]
    changes = archive.changes(0, 10)
    assert [c.id for c in changes] == [1, 2, 3]
    assert [c.sop_instance_uid for c in changes] == sops
    assert all(c.type == "InstanceStored" for c in changes)
    assert [c.id for c in archive.changes(2, 10)] == [3]


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"]
)
def test_frame_ranges_match_pydicom(archive: Archive, name: str) -> None:
    path = get_testdata_file(name)
    result = archive.ingest_file(path, source="test")
    row = _instance(archive, result.sop_instance_uid)
    data = Path(path).read_bytes()
    ds = dcmread(path)
    frames = json.loads(row.frame_ranges)
    got = [b"".join(data[o:o + n] for o, n in frame) for frame in frames]
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
        # fragments may carry a trailing pad byte; pydicom keeps it as well
        assert got == expected
    else:
        assert got == [ds.PixelData]


def test_dicom_json_has_bulk_uri_and_names(archive: Archive) -> None:
    result = archive.ingest_file(get_testdata_file("CT_small.dcm"), source="test")
    body = json.loads(_instance(archive, result.sop_instance_uid).dicom_json)
    assert body["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk:pixeldata"}
    assert body["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert body["0020000D"]["Value"] == [result.study_uid]


def test_orphan_from_crash_is_swept(archive: Archive) -> None:
    # The state a crash leaves between the object write and the index commit.
    key = "studies/1.2.3/series/1.2.3.4/1.2.3.4.5.00aa.dcm"
    archive.store.put_bytes(key, b"orphan")
    with archive.db.write() as conn:
        conn.execute(insert(PendingWrite).values(blob_key=key, created_at=time.time() - 10))
    assert archive.sweep_orphans(grace_seconds=60) == 0
    assert archive.store.exists(key)
    assert archive.sweep_orphans(grace_seconds=5) == 1
    assert not archive.store.exists(key)
    with archive.db.read() as conn:
        assert conn.execute(select(func.count(PendingWrite.id))).scalar() == 0


def test_sweep_keeps_indexed_object(archive: Archive) -> None:
    result = archive.ingest_bytes(to_bytes(make_ct()), source="test")
    key = _instance(archive, result.sop_instance_uid).blob_key
    with archive.db.write() as conn:
        conn.execute(insert(PendingWrite).values(blob_key=key, created_at=time.time() - 100))
    assert archive.sweep_orphans(grace_seconds=5) == 0
    assert archive.store.exists(key)


@pytest.mark.parametrize("version", ["", "1234567890123456", "0a1b2c3d4e5f6789"])
def test_sweep_finds_the_row_of_any_key(archive: Archive, version: str) -> None:
    """A recorded failed write knows only its key; the sweep reads the SOP Instance UID back
    from it, also when an all-digit version makes the key read as a longer UID."""
    result = archive.ingest_bytes(to_bytes(make_ct()), source="test")
    key = instance_key(result.study_uid, result.series_uid, result.sop_instance_uid, version)
    archive.store.put_bytes(key, b"in use")
    with archive.db.write() as conn:
        conn.execute(update(Instance).where(Instance.sop_instance_uid == result.sop_instance_uid)
                     .values(blob_key=key))
        conn.execute(insert(PendingWrite).values(blob_key=key, created_at=time.time() - 100))
    assert archive.sweep_orphans(grace_seconds=5) == 0
    with archive.store.open(key) as fp:
        assert fp.read() == b"in use"


def test_sop_uid_candidates() -> None:
    assert sop_uid_candidates("studies/1.2/series/1.3/1.2.3.4.dcm") == ("1.2.3.4", "1.2.3")
    assert sop_uid_candidates("studies/1.2/series/1.3/1.2.3.4.0a1b.dcm") == ("1.2.3.4.0a1b", "1.2.3.4")
    assert sop_uid_candidates("studies/1.2/series/1.3/4.dcm") == ("4",)
    assert sop_uid_candidates("other/1.2.3.dcm") == ()


def _spool(archive: Archive, data: bytes, age: float) -> Path:
    """A spooled object as a crash leaves it in the incoming folder, ``age`` seconds old."""
    import os

    path = Path(archive.incoming_dir) / f"crashed-{len(data)}-{time.time_ns()}.dcm"
    path.write_bytes(data)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def _key_of(data: bytes) -> str:
    import hashlib

    from pacs.storage import instance_key

    ds = dcmread(__import__("io").BytesIO(data), stop_before_pixels=True)
    return instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                        hashlib.sha256(data).hexdigest()[:16])


def test_crash_after_object_write_is_swept_from_the_spool(archive: Archive) -> None:
    # The state a crash leaves between the object write and the index commit: the spool
    # in the incoming folder and the object under its key, no index row.
    data = to_bytes(make_ct(seed=7))
    key = _key_of(data)
    archive.store.put_bytes(key, data)
    spool = _spool(archive, data, age=10)
    assert archive.sweep_orphans(grace_seconds=60) == 0  # too young: maybe still ingesting
    assert archive.store.exists(key) and spool.exists()
    assert archive.sweep_orphans(grace_seconds=5) == 1
    assert not archive.store.exists(key) and not spool.exists()


def test_spool_sweep_keeps_an_indexed_object(archive: Archive) -> None:
    data = to_bytes(make_ct(seed=8))
    result = archive.ingest_bytes(data, source="test")
    key = _instance(archive, result.sop_instance_uid).blob_key
    spool = _spool(archive, data, age=100)  # crash after the commit, before the spool went
    assert archive.sweep_orphans(grace_seconds=5) == 0
    assert archive.store.exists(key) and not spool.exists()


def test_failed_index_transaction_leaves_nothing_after_the_sweep(archive: Archive, monkeypatch) -> None:
    import pacs.ingest

    data = to_bytes(make_ct(seed=9))
    key = _key_of(data)

    def broken(*args, **kwargs):
        raise RuntimeError("index write failed")

    monkeypatch.setattr(pacs.ingest, "_write_rows", broken)
    with pytest.raises(RuntimeError):
        archive.ingest_bytes(data, source="test")
    assert archive.store.exists(key)  # written, not indexed: the spool stays for the sweep
    assert len(list(Path(archive.incoming_dir).glob("*.dcm"))) == 1
    monkeypatch.undo()
    assert archive.sweep_orphans(grace_seconds=0) == 1
    assert not archive.store.exists(key)
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))
    assert archive.ingest_bytes(data, source="test").status == "stored"  # and it can come again
    assert archive.store.exists(key)


@pytest.mark.parametrize("rows, background", [(16, True), (512, True), (512, False)],
                         ids=["small", "large-in-background", "large-inline"])
def test_failed_flush_of_the_received_object_is_storage_unavailable(
    archive: Archive, monkeypatch, rows: int, background: bool,
) -> None:
    import errno
    import threading

    import pacs.ingest

    data = to_bytes(make_ct(seed=12, rows=rows, columns=rows))
    assert (len(data) > pacs.ingest.INLINE_FLUSH_BYTES) == (rows == 512)
    flushed_by: list[str] = []

    def failing(path: str) -> None:
        flushed_by.append(threading.current_thread().name)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(pacs.ingest, "fsync_file", failing)
    spool = Path(archive.incoming_dir) / "received.dcm"
    spool.write_bytes(data)
    with pytest.raises(StorageUnavailable, match="cannot flush the received object"):
        archive.ingest_file(spool, source="test", consume=True, flush_in_background=background)
    in_background = rows == 512 and background
    assert len(flushed_by) == 1
    assert flushed_by[0].startswith("ingest-fsync") if in_background else flushed_by == [threading.current_thread().name]
    with archive.db.read() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar() == 0
        pending = conn.execute(select(func.count(PendingWrite.id))).scalar()
    objects = list(Path(archive.settings.resolved_storage_url).rglob("*.dcm"))
    if not in_background:  # refused before anything was written: nothing to sweep
        assert objects == [] and pending == 0 and not spool.exists()
    monkeypatch.undo()
    archive.sweep_orphans(grace_seconds=0)  # a background failure comes after the link: it goes
    assert not list(Path(archive.settings.resolved_storage_url).rglob("*.dcm"))
    assert archive.ingest_bytes(data, source="test").status == "stored"


def test_image_cut_before_its_pixel_data_is_refused(archive: Archive) -> None:
    data = to_bytes(make_ct(seed=11))
    cut = data[:data.rindex(b"\xe0\x7f\x10\x00")]  # whole elements, but no Pixel Data
    with pytest.raises(InvalidInstance, match="image without Pixel Data"):
        archive.ingest_bytes(cut, source="test")
    with archive.db.read() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar() == 0


@pytest.mark.parametrize("mode", ["full", "normal"])
def test_sqlite_synchronous_setting(settings, mode: str) -> None:
    """PACS_SQLITE_SYNCHRONOUS: connections run NORMAL (1) either way; `full` adds our own
    WAL flush after every write commit (pacs/index/wal_sync.py, tests/test_wal_sync.py)."""
    archive = Archive(settings.replace(sqlite_synchronous=mode))
    if not archive.db.is_sqlite:
        pytest.skip("SQLite only")
    with archive.db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    assert (archive.db._wal is not None) is (mode == "full")
    archive.close()


def test_conflict_found_after_the_object_write_leaves_no_object(archive: Archive) -> None:
    """Regression (fuzz run): a different object under a held SOP Instance UID is found
    by the index insert, after the object was written (ingest reads nothing first) and is
    refused; its object and spool go at once, not at the orphan sweep."""
    ds = make_ct(seed=1)
    held = archive.ingest_bytes(to_bytes(ds), source="test")
    other = to_bytes(make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=2))
    with pytest.raises(DuplicateConflict, match="already stored with other content"):
        archive.ingest_bytes(other, source="test")
    key = _instance(archive, held.sop_instance_uid).blob_key
    objects = Path(archive.settings.resolved_storage_url)
    assert [p.relative_to(objects).as_posix() for p in objects.rglob("*.dcm")] == [key]
    assert _read_blob(archive, key) == to_bytes(ds)
    assert not archive.store.exists(_key_of(other))
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))


@pytest.mark.parametrize("uid", ["1.2.3.4.5.6.7.8.9.10", "1.2.840.10008.1.1"])  # unknown; Verification
def test_unknown_transfer_syntax_refused_with_reason(archive: Archive, uid: str) -> None:
    """Regression (fuzz run): a file meta naming no known transfer syntax was a
    ValueError from pydicom (answered "internal error"); it is an invalid instance."""
    explicit = b"1.2.840.10008.1.2.1\x00"  # pydicom writes no unknown one: same length in place
    data = to_bytes(make_ct()).replace(explicit, uid.encode().ljust(len(explicit), b"\x00"), 1)
    with pytest.raises(InvalidInstance, match="TransferSyntaxUID is not a transfer syntax known"):
        archive.ingest_bytes(data, source="test")
    _assert_nothing_stored(archive)
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))


@pytest.mark.parametrize("clash, reason", [("patient", "another patient"), ("study", "another study")])
def test_index_conflict_leaves_no_object_or_spool(archive: Archive, clash: str, reason: str) -> None:
    """Regression (fuzz run): a study held under another patient, or a series under another
    study, is found by the index transaction after the object was written; the refused
    object must not stay in the store (nor its spool in the incoming folder)."""
    ds = make_ct(patient_id="A")
    held = archive.ingest_bytes(to_bytes(ds), source="test")
    intruder = (make_ct(study=ds.StudyInstanceUID, patient_id="B") if clash == "patient"
                else make_ct(series=ds.SeriesInstanceUID, patient_id="A"))
    with pytest.raises(Conflict, match=reason):
        archive.ingest_bytes(to_bytes(intruder), source="test")
    objects = Path(archive.settings.resolved_storage_url)
    assert [p.relative_to(objects).as_posix() for p in objects.rglob("*.dcm")] == [
        _instance(archive, held.sop_instance_uid).blob_key]
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))


def test_many_long_modalities_fit_the_study_aggregate(archive: Archive) -> None:
    """Regression (fuzz run, PostgreSQL): the 16th series with a new 16-character modality
    overflowed study.modalities (256) and every later one failed as "internal error". The
    set keeps what fits; ModalitiesInStudy still matches every series."""
    from pacs.delete import delete_objects
    from pacs.query import Level, Query, make_matcher, search

    first = make_ct(seed=0)
    modalities = [f"M{i:02d}" + "X" * 13 for i in range(20)]
    for i, modality in enumerate(modalities):
        ds = make_ct(study=first.StudyInstanceUID, series=first.SeriesInstanceUID if i == 0 else None, seed=i)
        ds.Modality = modality
        assert archive.ingest_bytes(to_bytes(ds), source="test").status == "stored"
    row = _study(archive, first.StudyInstanceUID)
    held = row.modalities.split("\\")
    assert (row.num_series, row.num_instances) == (20, 20)
    assert len(row.modalities) <= 256 and held == modalities[:len(held)] and len(held) == 15
    query = Query(Level.STUDY)
    query.matchers.append(make_matcher("ModalitiesInStudy", [modalities[-1]]))
    assert [m.json["0020000D"]["Value"][0] for m in search(archive.db, query, ["0020000D"])] == [first.StudyInstanceUID]
    delete_objects(archive, first.StudyInstanceUID, first.SeriesInstanceUID)  # recomputed: what fits, in order
    assert _study(archive, first.StudyInstanceUID).modalities.split("\\") == modalities[1:16]


def test_nul_in_indexed_text_is_left_out_of_the_index(archive: Archive) -> None:
    """Regression (fuzz run, PostgreSQL): a NUL inside an indexed value (PatientID,
    StudyDescription, ...) made the index transaction fail ("internal error", 0x0110) on
    PostgreSQL, whose text refuses NUL; the object is stored, the index value without it."""
    ds = make_ct(patient_id="P\x00ID")
    ds.StudyDescription, ds.Modality = "CT\x00 HEAD", "C\x00T"
    data = to_bytes(ds)
    result = archive.ingest_bytes(data, source="test")
    assert result.status == "stored"
    row = _instance(archive, result.sop_instance_uid)
    assert _read_blob(archive, row.blob_key) == data
    study = _study(archive, ds.StudyInstanceUID)
    assert (study.study_description, study.modalities) == ("CT HEAD", "CT")
    with archive.db.read() as conn:
        assert conn.execute(select(Patient.patient_id)).scalars().all() == ["PID"]


def test_series_deleted_behind_the_series_cache_is_created_again(
    archive: Archive, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The series cache still names a series another writer deleted: the cached path
    finds the study but not the series, its writes are undone, and the instance is
    stored through the look-ups, in a series created again."""
    import pacs.ingest
    from pacs.delete import delete_objects
    from pacs.index.writer import StaleEntry, bump_cached

    stale = []

    def watched(conn, entry, now):  # type: ignore[no-untyped-def]
        try:
            return bump_cached(conn, entry, now)
        except StaleEntry:
            stale.append(entry.series_pk)
            raise

    monkeypatch.setattr(pacs.ingest, "bump_cached", watched)
    study = "1.2.826.0.1.3680043.10.543.1"
    kept, gone = study + ".2", study + ".3"
    archive.ingest_bytes(to_bytes(make_ct(study=study, series=kept, sop=kept + ".1")), source="test")
    archive.ingest_bytes(to_bytes(make_ct(study=study, series=gone, sop=gone + ".1")), source="test")
    delete_objects(archive, study, gone)  # the series cache is not told
    result = archive.ingest_bytes(to_bytes(make_ct(study=study, series=gone, sop=gone + ".2", seed=2)), source="test")
    assert result.status == "stored"
    assert len(stale) == 1
    with archive.db.read() as conn:
        series = conn.execute(select(Series).where(Series.series_uid == gone)).one()
        sops = conn.execute(select(Instance.sop_instance_uid).where(Instance.series_fk == series.id)).scalars().all()
    assert sops == [gone + ".2"]
    assert series.num_instances == 1
    assert _study(archive, study).num_instances == 2


def test_spool_files_get_new_names_and_skip_leftovers(tmp_path: Path, monkeypatch) -> None:
    import itertools
    import os
    import stat

    from pacs import incoming

    monkeypatch.setattr(incoming, "_numbers", itertools.count(5))
    leftover = tmp_path / f"{os.getpid()}-5.dcm"  # an earlier process with this pid left it
    leftover.write_bytes(b"old")
    made = [incoming.create_spool_file(tmp_path) for _ in range(3)]
    for fd, _ in made:
        os.write(fd, b"new")
        os.close(fd)
    paths = [Path(path) for _, path in made]
    assert [p.name for p in paths] == [f"{os.getpid()}-{n}.dcm" for n in (6, 7, 8)]
    assert leftover.read_bytes() == b"old" and all(p.read_bytes() == b"new" for p in paths)
    assert stat.S_IMODE(paths[0].stat().st_mode) == 0o600
