"""Small objects made durable by their index commit, their files flushed afterwards
(pacs/staging.py), on SQLite and PostgreSQL: what a crash before the flush leaves is
restored at the next start, byte for byte."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from pacs.access import SYSTEM
from pacs.archive import Archive
from pacs.index.models import Instance, StagedObject
from pacs.settings import Settings
from pacs.staging import STAGE_BYTES, DeferredSync
from pacs.storage import FolderStore

from .factory import make_ct, to_bytes
from .servers import ThreadedServer


class HeldSync(DeferredSync):
    """The real deferred flush, except that it never runs: the state a crash leaves."""

    def __init__(self, archive: Archive) -> None:
        assert isinstance(archive.store, FolderStore)
        super().__init__(archive.db, archive.store)
        self.keys: list[str] = []

    def add(self, key: str) -> None:
        self.keys.append(key)


def _staged(archive: Archive) -> list[tuple[str, bytes]]:
    with archive.db.read() as conn:
        return [(key, bytes(content)) for key, content in
                conn.execute(select(StagedObject.blob_key, StagedObject.content))]


def _key(archive: Archive, sop: str) -> str:
    with archive.db.read() as conn:
        return conn.execute(select(Instance.blob_key).where(Instance.sop_instance_uid == sop)).scalar_one()


def _file(archive: Archive, key: str) -> Path:
    return Path(archive.settings.resolved_storage_url) / key


def _held(archive: Archive) -> HeldSync:
    held = HeldSync(archive)
    archive.__dict__["deferred_sync"] = held
    return held


def _small() -> bytes:
    data = to_bytes(make_ct(rows=32, columns=32))
    assert len(data) <= STAGE_BYTES
    return data


def test_small_object_is_staged_then_flushed_and_unstaged(archive: Archive) -> None:
    data = _small()
    result = archive.ingest_bytes(data, source="test")
    assert result.status == "stored"
    assert archive.deferred_sync.drain()
    assert _staged(archive) == []
    assert _file(archive, _key(archive, result.sop_instance_uid)).read_bytes() == data


def test_staged_row_holds_the_bytes_until_the_flush(archive: Archive) -> None:
    held = _held(archive)
    data = _small()
    result = archive.ingest_bytes(data, source="test")
    key = _key(archive, result.sop_instance_uid)
    assert held.keys == [key] and _staged(archive) == [(key, data)]
    assert _file(archive, key).read_bytes() == data  # readable at once
    again = archive.ingest_bytes(data, source="test")  # an identical re-send stages nothing
    assert again.status == "duplicate" and len(_staged(archive)) == 1


def test_large_object_is_not_staged(archive: Archive) -> None:
    held = _held(archive)
    data = to_bytes(make_ct(rows=256, columns=256))
    assert len(data) > STAGE_BYTES
    result = archive.ingest_bytes(data, source="test")
    assert held.keys == [] and _staged(archive) == []
    assert _file(archive, _key(archive, result.sop_instance_uid)).read_bytes() == data


def test_restart_restores_a_file_lost_before_its_flush(settings: Settings) -> None:
    first = Archive(settings)
    _held(first)
    data = _small()
    key = _key(first, first.ingest_bytes(data, source="test").sop_instance_uid)
    _file(first, key).write_bytes(data[:100])  # what a power loss may leave of an unflushed file
    first.close()
    second = Archive(settings)
    try:
        assert second.restore_staged() == 1
        assert _file(second, key).read_bytes() == data
        assert _staged(second) == []
        assert second.restore_staged() == 0
    finally:
        second.close()


def test_restart_drops_staged_rows_of_deleted_objects(settings: Settings) -> None:
    first = Archive(settings)
    _held(first)
    result = first.ingest_bytes(_small(), source="test")
    key = _key(first, result.sop_instance_uid)
    first.delete(result.study_uid, caller=SYSTEM)
    assert not _file(first, key).exists()
    first.close()
    second = Archive(settings)
    try:
        assert second.restore_staged() == 0
        assert _staged(second) == [] and not _file(second, key).exists()
    finally:
        second.close()


def test_flush_of_an_object_deleted_meanwhile_drops_its_row(archive: Archive) -> None:
    held = _held(archive)
    result = archive.ingest_bytes(_small(), source="test")
    archive.delete(result.study_uid, caller=SYSTEM)
    del archive.__dict__["deferred_sync"]
    for key in held.keys:  # the flush comes after the delete
        archive.deferred_sync.add(key)
    assert archive.deferred_sync.drain()
    assert _staged(archive) == []


def test_server_start_restores_before_serving(settings: Settings) -> None:
    first = Archive(settings)
    _held(first)
    data = _small()
    key = _key(first, first.ingest_bytes(data, source="test").sop_instance_uid)
    _file(first, key).unlink()  # the folder entry never reached the disk
    first.close()
    server = ThreadedServer(settings).start()
    try:
        assert server.archive is not None
        assert _file(server.archive, key).read_bytes() == data and _staged(server.archive) == []
    finally:
        server.stop()


def test_dimse_store_stages_exactly_the_stored_bytes(settings: Settings) -> None:
    """A C-STORE from a real client: the bytes staged are the object's file byte for byte
    (what a restart would write back), and the row's SHA-256 is theirs."""
    server = ThreadedServer(settings).start()
    try:
        assert server.archive is not None
        _held(server.archive)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        ds = make_ct(rows=32, columns=32)
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        with server.archive.db.read() as conn:
            key, sha = conn.execute(select(Instance.blob_key, Instance.sha256)
                                    .where(Instance.sop_instance_uid == ds.SOPInstanceUID)).one()
        [(staged_key, content)] = _staged(server.archive)
        assert staged_key == key and content == _file(server.archive, key).read_bytes()
        assert hashlib.sha256(content).hexdigest() == sha and dcmread(BytesIO(content)).SOPInstanceUID == ds.SOPInstanceUID
    finally:
        server.stop()


def test_stow_stages_small_parts_only(settings: Settings) -> None:
    """STOW-RS from dicomweb-client, one small and one large instance in one request: the
    small part, first and so ingested alone, has its bytes staged exactly as stored; the
    large one is flushed instead."""
    server = ThreadedServer(settings).start()
    try:
        assert server.archive is not None
        _held(server.archive)
        study = make_ct().StudyInstanceUID
        # as read from Part 10 files: with the preamble dcmwrite needs to write Part 10 again
        small, large = (dcmread(BytesIO(to_bytes(make_ct(study=study, rows=n, columns=n)))) for n in (32, 256))
        client = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        answer = client.store_instances([small, large])
        assert len(answer.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in answer
        [(staged_key, content)] = _staged(server.archive)
        assert staged_key == _key(server.archive, small.SOPInstanceUID)
        assert content == _file(server.archive, staged_key).read_bytes()
        assert dcmread(BytesIO(content)).SOPInstanceUID == small.SOPInstanceUID
        large_file = _file(server.archive, _key(server.archive, large.SOPInstanceUID))
        assert dcmread(large_file).SOPInstanceUID == large.SOPInstanceUID
    finally:
        server.stop()
