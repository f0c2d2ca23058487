"""The blob-store seam: put, open, read a byte range, delete (after Orthanc's IStorageArea).

Keys look like ``studies/<study>/series/<series>/<sop>.dcm`` and are built only from
validated UIDs (:func:`pacs.storage.keys.instance_key`).
"""

from __future__ import annotations

from typing import BinaryIO, Iterator, Protocol, runtime_checkable


class BlobNotFound(KeyError):
    """No object under this key."""


@runtime_checkable
class BlobStore(Protocol):
    """Where the archive keeps the bytes of every object."""

    def put_file(self, key: str, path: str, *, synced: bool = False, keep_source: bool = False) -> None:
        """Store the file at ``path`` under ``key`` atomically; the file may be moved away.

        When this returns, the object is durable. Readers never see a partial object.
        ``synced``: the caller has already fsynced the file's data. ``keep_source``: the
        file must stay at ``path`` (a folder store links instead of renaming).
        """

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically and durably."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the whole object. Raises :class:`BlobNotFound`."""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start``. Raises :class:`BlobNotFound`."""

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object as a stream of chunks."""

    def size(self, key: str) -> int:
        """Size of the object in bytes. Raises :class:`BlobNotFound`."""

    def exists(self, key: str) -> bool:
        """True when an object is stored under ``key``."""

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is absent."""

    def check(self) -> None:
        """Raise when the store is unreachable (for /healthz)."""

    def sweep_temporary(self, older_than: float) -> int:
        """Remove leftovers of interrupted writes older than ``older_than`` seconds."""
