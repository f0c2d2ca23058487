"""C-ECHO and C-STORE against the real server, with pynetdicom and dcmtk as the modality."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from pacs.index.models import Instance

from .dcmtk import dcmtk_tool, needs_dcmtk
from .factory import dataset_part, make_ct, to_bytes
from .servers import ThreadedServer


def _associate(server: ThreadedServer, contexts=None):
    ae = AE(ae_title="MODALITY")
    for cx in contexts or [(CTImageStorage, [ExplicitVRLittleEndian])]:
        ae.add_requested_context(*cx)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
    assert assoc.is_established
    return assoc


def _stored_bytes(server: ThreadedServer, sop: str) -> bytes:
    archive = server.archive
    with archive.db.read() as conn:
        key = conn.execute(select(Instance.blob_key).where(Instance.sop_instance_uid == sop)).scalar_one()
    with archive.store.open(key) as fp:
        return fp.read()


def _count(server: ThreadedServer) -> int:
    with server.archive.db.read() as conn:
        return conn.execute(select(func.count(Instance.id))).scalar()


def test_echo(server: ThreadedServer) -> None:
    assoc = _associate(server, [(Verification,)])
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_store_bytes_back_identical(server: ThreadedServer, tmp_path: Path) -> None:
    ds = make_ct(rows=64, columns=64)
    path = tmp_path / "ct.dcm"
    path.write_bytes(to_bytes(ds))
    assoc = _associate(server, [(CTImageStorage, [ExplicitVRLittleEndian])])
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0x0000
    stored = _stored_bytes(server, ds.SOPInstanceUID)
    assert dataset_part(stored) == dataset_part(path.read_bytes())
    meta = dcmread(__import__("io").BytesIO(stored), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_dataset_sop_class_differs_from_context(server: ThreadedServer, tmp_path: Path) -> None:
    ds = make_ct()
    data = to_bytes(ds)
    # Rewrite the dataset's SOP Class UID to MR while the command says CT.
    patched = data.replace(CTImageStorage.encode() + b"\x00", MRImageStorage.encode() + b"\x00", 2)
    body = dataset_part(patched)
    assert MRImageStorage.encode() in body
    assoc = _associate(server)
    rsp = _send_raw(assoc, CTImageStorage, ds.SOPInstanceUID, body)
    assoc.release()
    assert rsp.Status == 0xA900
    assert "SOP class" in str(rsp.ErrorComment)
    assert _count(server) == 0


def _send_raw(assoc, sop_class: str, sop_instance: str, body: bytes):
    """Send an already-encoded dataset (explicit VR LE) unchanged, in a C-STORE request.

    pynetdicom streams a file's dataset bytes without decoding them when
    STORE_SEND_CHUNKED_DATASET is set; only the file meta is read.
    """
    import tempfile
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import _config

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(buf.getvalue() + body)
        tmp.flush()
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            return assoc.send_c_store(tmp.name)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False


@pytest.mark.parametrize(
    "mutate, status_family",
    [
        (lambda body: body[: len(body) // 3], 0xC000),  # truncated
        (lambda body: body.replace(b"1.2.826.0.1.3680043.10.1234.", b"../../x/../..1.2.3.4.", 1), 0xC000),
        (lambda body: b"\x08\x00\x16\x00UI\x03\x00abc", 0xC000),  # garbage element
    ],
)
def test_bad_datasets_refused_server_keeps_serving(server: ThreadedServer, mutate, status_family) -> None:
    ds = make_ct()
    body = mutate(dataset_part(to_bytes(ds)))
    assoc = _associate(server)
    rsp = _send_raw(assoc, CTImageStorage, ds.SOPInstanceUID, body)
    assert rsp.Status & 0xF000 == status_family & 0xF000
    assert rsp.Status != 0x0000
    assert str(rsp.ErrorComment)
    # the same association keeps working
    good = make_ct()
    assert assoc.send_c_store(good).Status == 0x0000
    assoc.release()
    assert _count(server) == 1


def _pydicom_test_files() -> list[Path]:
    import pydicom.data

    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def _read_for_sending(path: Path):
    """The dataset and its transfer syntax, also for files without File Meta."""
    from pydicom.uid import ExplicitVRBigEndian

    ds = dcmread(path, force=True)
    ts = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
    if ts is None:
        implicit, little = ds.original_encoding
        ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds, ts


def test_every_pydicom_test_file(server: ThreadedServer, settings) -> None:
    """Each bundled pydicom file is stored byte-identical or refused with a reason."""
    server.archive.settings = settings.replace(duplicate_policy="overwrite")
    ae = AE(ae_title="MODALITY")
    refused, stored = {}, 0
    for path in _pydicom_test_files():
        try:
            ds, ts = _read_for_sending(path)
            sop_class, sop = ds.SOPClassUID, ds.SOPInstanceUID
        except Exception as exc:
            refused[path.name] = f"unreadable locally: {type(exc).__name__}"
            continue
        ae.requested_contexts = []
        ae.add_requested_context(sop_class, [ts])
        assoc = ae.associate("127.0.0.1", server.dimse_port)
        if not assoc.is_established or not assoc.accepted_contexts:
            refused[path.name] = "no presentation context accepted"
            assoc.release() if assoc.is_established else None
            continue
        try:
            rsp = assoc.send_c_store(ds)
        except Exception as exc:  # the SCU cannot encode it: not a storable instance
            refused[path.name] = f"SCU cannot send: {type(exc).__name__}"
            assoc.abort()
            continue
        assoc.release()
        if rsp.Status == 0x0000:
            stored += 1
            got = _stored_bytes(server, str(sop).rstrip("\x00 "))
            assert dcmread(__import__("io").BytesIO(got)).SOPInstanceUID == sop
        else:
            assert str(rsp.get("ErrorComment", "")), path.name
            refused[path.name] = f"0x{rsp.Status:04X} {rsp.ErrorComment}"
    for name, reason in sorted(refused.items()):
        print(f"refused {name}: {reason}")
    print(f"stored {stored}, refused {len(refused)}")
    # every file was either stored (checked above) or refused with a reason
    assert stored + len(refused) == len(_pydicom_test_files())
    assert stored >= 60


@needs_dcmtk("storescu")
@pytest.mark.dcmtk
def test_dcmtk_storescu(server: ThreadedServer, tmp_path: Path) -> None:
    files = []
    study = "1.2.826.0.1.3680043.10.1234.99"
    for i in range(5):
        ds = make_ct(study=study, series=study + ".1", seed=i, rows=32, columns=32)
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(to_bytes(ds))
        files.append((path, ds.SOPInstanceUID))
    proc = subprocess.run(
        [dcmtk_tool("storescu"), "-aec", "PACS", "-aet", "STORESCU", "127.0.0.1", str(server.dimse_port),
         *[str(p) for p, _ in files]],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for path, sop in files:
        assert dataset_part(_stored_bytes(server, sop)) == dataset_part(path.read_bytes())


@needs_dcmtk("echoscu")
@pytest.mark.dcmtk
def test_dcmtk_echoscu(server: ThreadedServer) -> None:
    proc = subprocess.run([dcmtk_tool("echoscu"), "-aec", "PACS", "127.0.0.1", str(server.dimse_port)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_index_failure_after_the_object_write_is_cleaned_by_the_sweep(server: ThreadedServer, monkeypatch) -> None:
    """C-STORE answers a failure; the written object is not indexed and the spool stays in
    the incoming folder as its record, so the orphan sweep removes it."""
    import pacs.ingest

    def broken(*args, **kwargs):
        raise RuntimeError("index write failed")

    monkeypatch.setattr(pacs.ingest, "_write_rows", broken)
    archive = server.archive
    assoc = _associate(server, [(CTImageStorage, [ExplicitVRLittleEndian])])
    status = assoc.send_c_store(make_ct(seed=5))
    assoc.release()
    assert status.Status == 0x0110
    assert _count(server) == 0
    objects = [p for p in Path(archive.store.root).rglob("*.dcm") if ".tmp" not in p.parts]
    assert len(objects) == 1 and len(list(Path(archive.incoming_dir).glob("*.dcm"))) == 1
    monkeypatch.undo()
    assert archive.sweep_orphans(grace_seconds=0) == 1
    assert not [p for p in Path(archive.store.root).rglob("*.dcm") if ".tmp" not in p.parts]
    assert not list(Path(archive.incoming_dir).glob("*.dcm"))


@pytest.mark.parametrize("size", [100, (64 << 10) - 400, 300 << 10])
def test_file_spool_keeps_a_small_object_in_memory(tmp_path, size: int) -> None:
    """What FileSpool.content gives ingest (parsed from memory) equals the file written;
    above KEEP_BYTES it is None (the file is read instead)."""
    from pacs.dimse.spool import KEEP_BYTES, FileSpool

    meta = b"\0" * 128 + b"DICM" + bytes(range(200))
    data = bytes(i % 251 for i in range(size))
    spool = FileSpool(str(tmp_path), meta)
    receive_buffer = bytearray(16 << 10)
    for start in range(0, size, len(receive_buffer)):  # views of one reused buffer, as received
        piece = data[start:start + len(receive_buffer)]
        receive_buffer[:len(piece)] = piece
        spool.write(memoryview(receive_buffer)[:len(piece)])
    spool.close()
    written = Path(spool.path).read_bytes()
    assert written == meta + data
    assert spool.content == (written if len(written) <= KEEP_BYTES else None)
