"""Where the data set of a received DIMSE message goes while its fragments arrive.

A C-STORE data set is written to a Part 10 file in the archive's incoming folder (which
for a local store lies on the blob folder's filesystem, so storing it is a rename):
memory stays flat whatever the object's size. Other data sets (identifiers, N-ACTION
information) are small and kept in memory, up to a limit.
"""

from __future__ import annotations

import hashlib
import os
import struct

from ..incoming import create_spool_file
from .pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, uid_value

_PREAMBLE = b"\x00" * 128 + b"DICM"


class DatasetTooLarge(Exception):
    """A data set held in memory outgrew its limit."""


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, "DICM" and the File Meta Information (PS3.10 7.1), Explicit VR LE.

    Written by hand: it is built for every received object, and pydicom's writer costs
    more than the rest of receiving a small one.
    """
    body = _meta_element(0x0001, b"OB", b"\x00\x01")
    body += _meta_element(0x0002, b"UI", uid_value(sop_class))
    body += _meta_element(0x0003, b"UI", uid_value(sop_instance))
    body += _meta_element(0x0010, b"UI", uid_value(transfer_syntax))
    body += _meta_element(0x0012, b"UI", uid_value(IMPLEMENTATION_CLASS_UID))
    version = IMPLEMENTATION_VERSION.encode()
    body += _meta_element(0x0013, b"SH", version + b" " * (len(version) % 2))
    if source_ae:
        title = source_ae.encode("ascii", "replace")[:16]
        body += _meta_element(0x0016, b"AE", title + b" " * (len(title) % 2))
    return _PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


class MemorySpool:
    """A data set kept in memory, refused beyond ``limit`` bytes."""

    path: str | None = None

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, chunk: memoryview | bytes) -> None:
        if len(self.data) + len(chunk) > self.limit:
            raise DatasetTooLarge(f"data set larger than {self.limit} bytes")
        self.data += chunk

    def close(self) -> None:
        return None

    def discard(self) -> None:
        self.data = bytearray()


def _write_all(fd: int, parts: list[memoryview | bytes]) -> None:
    """Write ``parts`` in order with ``writev``, resuming after short writes."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


#: A received object up to this size is also kept in memory (:attr:`FileSpool.content`).
KEEP_BYTES = 64 << 10


class FileSpool:
    """A C-STORE data set written after its File Meta Information to a file in ``folder``."""

    data = None

    #: Set when ingest took the file over: it then removes the file, or leaves it for the
    #: orphan sweep as the record of an object written but not indexed.
    consumed = False

    def __init__(self, folder: str, meta: bytes) -> None:
        self._fd, self.path = create_spool_file(folder)
        # Written with the first chunk, in one system call. The file is unbuffered: the
        # chunks are whole PDV values (kilobytes to megabytes), and a buffered writer's
        # extra copy of each cost more than the system calls it saves.
        self._meta: bytes | None = meta
        # Hashed as it arrives, so ingest need not read the object again for its key.
        self._digest = hashlib.sha256(meta)
        # A copy of a small object's bytes, so ingest need not read the file back either:
        # it parses them from memory (each system call spent there let another thread have
        # the interpreter lock, and took it back). None once the object outgrows KEEP_BYTES.
        self._kept: list[bytes] | None = [meta]
        self._kept_size = len(meta)

    def write(self, chunk: memoryview | bytes) -> None:
        parts = [chunk] if self._meta is None else [self._meta, chunk]
        self._meta = None
        _write_all(self._fd, parts)
        self._digest.update(chunk)
        if self._kept is not None:
            self._kept_size += len(chunk)
            if self._kept_size > KEEP_BYTES:
                self._kept = None
            else:  # chunk is a view of the receive buffer, which the next PDU overwrites
                self._kept.append(bytes(chunk))

    @property
    def content(self) -> bytes | None:
        """The file's bytes, for an object of at most :data:`KEEP_BYTES`; else None."""
        return None if self._kept is None else b"".join(self._kept)

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the file's bytes."""
        return self._digest.hexdigest()

    def close(self) -> None:
        """Close the file (the object is then read back by ingest)."""
        if self._fd < 0:
            return
        try:
            if self._meta is not None:  # a data set of no bytes: the file is its meta alone
                _write_all(self._fd, [self._meta])
        finally:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self.close()
        if self.consumed:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
