"""Peers and data for the C-MOVE / C-GET tests: storage SCPs (pynetdicom, dcmtk storescp),
a loaded archive, and helpers to compare what a peer received with what was stored."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from pacs import aes
from pacs.index.models import Instance

from .dcmtk import dcmtk_tool
from .factory import dataset_part, make_ct, short_uid, to_bytes
from .servers import ThreadedServer, echo, free_port

SAMPLE_FILES = Path(__file__).resolve().parent.parent / "sample_data" / "files"
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass
class Received:
    transfer_syntax: str
    data: bytes  # the dataset bytes as received (no file meta)

    def dataset(self) -> Dataset:
        """The received object decoded, with a File Meta naming its transfer syntax."""
        from io import BytesIO

        from pydicom.dataset import FileMetaDataset
        from pydicom.filereader import read_dataset

        ts = self.transfer_syntax
        ds = read_dataset(BytesIO(self.data), ts == ImplicitVRLittleEndian, True)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        return ds


def received_from_event(event) -> tuple[str, Received]:  # type: ignore[no-untyped-def]
    """(SOP Instance UID, what arrived) of a C-STORE event, chunked (a file) or in memory."""
    if getattr(event, "dataset_path", None):
        part10 = Path(event.dataset_path).read_bytes()
    else:
        part10 = event.encoded_dataset()
    return str(event.request.AffectedSOPInstanceUID), Received(str(event.context.transfer_syntax), dataset_part(part10))


@dataclass
class StoreSCP:
    """A pynetdicom Storage SCP on an ephemeral port that keeps what it receives."""

    ae_title: str = "DEST"
    syntaxes: list[str] = field(default_factory=lambda: list(ALL_TRANSFER_SYNTAXES))
    #: Called before answering each C-STORE (with the count received so far).
    on_store: Callable[[int], None] | None = None
    #: Storage SOP classes accepted (default: every one pynetdicom knows).
    sop_classes: list[str] | None = None
    require_called_aet: bool = False
    received: dict[str, Received] = field(default_factory=dict)

    def start(self) -> "StoreSCP":
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        ae.add_supported_context(Verification)
        for sop_class in self.sop_classes or [c.abstract_syntax for c in AllStoragePresentationContexts]:
            ae.add_supported_context(sop_class, self.syntaxes)
        self._lock = threading.Lock()
        self._server = ae.start_server(("127.0.0.1", 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._handle)])
        self.port = self._server.server_address[1]
        return self

    def _handle(self, event) -> int:  # type: ignore[no-untyped-def]
        uid, received = received_from_event(event)
        with self._lock:
            self.received[uid] = received
            count = len(self.received)
        if self.on_store is not None:
            self.on_store(count)
        return 0x0000

    def register(self, server: ThreadedServer) -> "StoreSCP":
        aes.add_ae(server.archive.db, self.ae_title, "127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()


def failed_uids(identifier: Dataset | None) -> set[str]:
    """The Failed SOP Instance UID List of a response identifier, as a set."""
    value = identifier.get("FailedSOPInstanceUIDList", []) if identifier else []
    return {str(value)} if isinstance(value, str) else {str(v) for v in value}


class DcmtkStoreSCP:
    """dcmtk ``storescp`` writing what it receives, bit-preserving, into ``out_dir``."""

    def __init__(self, out_dir: Path, ae_title: str = "STORESCP", extra: list[str] | None = None) -> None:
        self.out_dir, self.ae_title = out_dir, ae_title
        out_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        tool = dcmtk_tool("storescp")
        assert tool is not None
        self.proc = subprocess.Popen(
            [tool, "-aet", ae_title, "+B", "-od", str(out_dir), *(extra or []), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30) -> "DcmtkStoreSCP":
        """Poll with C-ECHO until storescp answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "storescp exited"
            if echo(self.port, self.ae_title):
                return self
            threading.Event().wait(0.05)  # polling interval
        raise TimeoutError("storescp not ready")

    def files(self) -> dict[str, bytes]:
        """SOP Instance UID -> Part 10 bytes of every file written."""
        out = {}
        for path in self.out_dir.iterdir():
            data = path.read_bytes()
            out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


# -- data ---------------------------------------------------------------------------------
def store(server: ThreadedServer, ds: Dataset) -> bytes:
    """Ingest ``ds``; return its Part 10 bytes as stored."""
    data = to_bytes(ds)
    server.archive.ingest_bytes(data, source="test")
    return data


def store_file(server: ThreadedServer, path: Path) -> bytes:
    data = path.read_bytes()
    server.archive.ingest_bytes(data, source="test")
    return data


def stored_bytes(server: ThreadedServer, sop: str) -> bytes:
    with server.archive.db.read() as conn:
        key = conn.execute(select(Instance.blob_key).where(Instance.sop_instance_uid == sop)).scalar_one()
    with server.archive.store.open(key) as fp:
        return fp.read()


def sample(name_part: str) -> Path:
    """The committed sample file whose transfer syntax name contains ``name_part``."""
    for path in sorted(SAMPLE_FILES.glob("*.dcm")):
        if name_part in dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name:
            return path
    raise LookupError(name_part)


def jpeg_lossless_without_decoder(study: str) -> Dataset:
    """A CT whose pixel data claims JPEG Lossless SV1, for which no decoder is installed."""
    ds = make_ct(study=study)
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds


def study_of_cts(count: int, *, patient_id: str = "PID1") -> tuple[str, str, list[Dataset]]:
    """(study UID, series UID, datasets) of ``count`` small CT instances."""
    study = short_uid()
    series = f"{study}.1"
    datasets = []
    for i in range(count):
        ds = make_ct(study=study, series=series, patient_id=patient_id, seed=i)
        ds.InstanceNumber = i + 1
        datasets.append(ds)
    return study, series, datasets


def same_pixels(received: Dataset, original_part10: Path | bytes) -> bool:
    """The received (uncompressed) pixels equal pydicom's decoding of the original."""
    from io import BytesIO

    source = BytesIO(original_part10) if isinstance(original_part10, bytes) else original_part10
    original = dcmread(source)
    return np.array_equal(received.pixel_array, original.pixel_array)
