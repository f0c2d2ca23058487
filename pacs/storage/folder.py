"""A blob store on a local (or mounted) folder.

Layout::

    <root>/studies/<study>/series/<series>/<sop>.dcm   objects, one file per key
    <root>/.tmp/<random>.part                          writes in progress

Every write goes to a ``.part`` file in ``<root>/.tmp``, is flushed and fsynced, and is
then renamed into place with :func:`os.replace` (atomic on POSIX), after which the
parent directory is fsynced. Readers therefore see either the old object or the whole
new one, and an object is durable once ``put_*`` returns. Leftover ``.part`` files of
interrupted writes are removed by :meth:`FolderStore.sweep_temporary`.

Errors: a missing object raises :class:`BlobNotFound`; a failing file system (full,
read-only, I/O error, permissions) raises :class:`StorageUnavailable` whose reason names
the errno but never a path.
"""

from __future__ import annotations

import ctypes
import errno
import filecmp
import os
import secrets
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import StorageUnavailable
from ._keycheck import check_key
from .base import BlobNotFound

TEMP_DIR_NAME = ".tmp"
TEMP_SUFFIX = ".part"
_COPY_CHUNK = 1 << 20


def _reason(action: str, exc: OSError) -> str:
    """A path-free description of an OSError."""
    code = errno.errorcode.get(exc.errno or 0, "unknown error")
    text = exc.strerror or type(exc).__name__
    return f"blob folder {action} failed: {code} ({text})"


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), which Python's os module lacks (hence ctypes), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes, syncfs.restype = [ctypes.c_int], ctypes.c_int
    return syncfs


_syncfs = _load_syncfs() if sys.platform.startswith("linux") else None


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync the file at ``path`` (its data and size)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or a new entry in it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _link_if_absent(src: str, dest: Path) -> None:
    """Link ``src`` at ``dest``; an object already there is kept when it holds the same
    bytes (keys are content-addressed), else replaced atomically: a power loss may have
    left a file whose folder entry reached the disk before its data did (a large object's
    data flush overlaps the folder's, pacs/ingest.py)."""
    try:
        os.link(src, dest)
    except FileExistsError:
        if not _same_content(src, dest):
            tmp = f"{src}.relink{TEMP_SUFFIX}"  # a leftover is swept with the temporary files
            os.link(src, tmp)
            os.replace(tmp, dest)


def _same_content(a: str | Path, b: str | Path) -> bool:
    """Whether two files hold the same bytes: hard links of one file at once, else sizes,
    then bytes (filecmp)."""
    return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)


#: Checked folders remembered per store before the set starts again.
MAX_CHECKED_DIRS = 65536


class FolderStore:
    """:class:`~pacs.storage.base.BlobStore` on a directory tree."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root_path = Path(root).expanduser()
        try:
            root_path.mkdir(parents=True, exist_ok=True)
            self._root = root_path.resolve(strict=True)
            self._tmp = self._root / TEMP_DIR_NAME
            self._tmp.mkdir(exist_ok=True)
            self._dev = self._root.stat().st_dev
        except OSError as exc:
            raise StorageUnavailable(_reason("creation", exc)) from exc
        self._root_str = str(self._root)
        #: Folders whose real path was checked to lie inside the root (they are created
        #: by the store, never replaced by it).
        self._checked_dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"FolderStore({self._root_str!r})"

    @property
    def root(self) -> Path:
        """The folder that holds the objects."""
        return self._root

    @property
    def temp_dir(self) -> Path:
        """``<root>/.tmp``: create incoming files here so :meth:`put_file` can move them.

        Name them ``*.part`` so :meth:`sweep_temporary` cleans them up after a crash.
        """
        return self._tmp

    # -- keys -------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """Absolute path of ``key``; ``ValueError`` for keys that are unsafe or reserved."""
        check_key(key)
        if key.split("/", 1)[0] == TEMP_DIR_NAME:
            raise ValueError("blob key uses the reserved temporary folder")
        path = self._root / key
        parent = os.path.dirname(os.fspath(path))
        if parent not in self._checked_dirs:  # realpath costs an lstat per component
            real = os.path.realpath(parent)
            if real != self._root_str and not real.startswith(self._root_str + os.sep):
                raise ValueError("blob key resolves outside the store")
            if len(self._checked_dirs) >= MAX_CHECKED_DIRS:
                self._checked_dirs.clear()
            self._checked_dirs.add(parent)
        if os.path.islink(path):  # the object itself must be a file inside the store too
            raise ValueError("blob key resolves outside the store")
        return path

    # -- writing ----------------------------------------------------------------------

    def _new_temp(self) -> tuple[int, Path]:
        """Create and open (write-only) a fresh ``.part`` file in the temporary folder."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for attempt in range(2):
            tmp = self._tmp / (secrets.token_hex(16) + TEMP_SUFFIX)
            try:
                return os.open(tmp, flags, 0o644), tmp
            except FileNotFoundError:
                if attempt:
                    raise
                self._tmp.mkdir(parents=True, exist_ok=True)  # someone removed .tmp
        raise AssertionError("unreachable")

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` (inside root) and make each new entry durable."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                pass
            _fsync_dir(new.parent)

    def _commit(self, tmp: Path, dest: Path) -> None:
        """Rename a complete, fsynced file into place and make the rename durable."""
        self._ensure_dir(dest.parent)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)

    @staticmethod
    def _write_error(exc: OSError) -> Exception:
        if exc.errno in (errno.ENOTDIR, errno.EISDIR):
            return ValueError("blob key collides with an existing object or folder")
        return StorageUnavailable(_reason("write", exc))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; atomic and durable when this returns."""
        dest = self._path(key)
        tmp: Path | None = None
        try:
            fd, tmp = self._new_temp()
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            self._commit(tmp, dest)
            tmp = None
        except OSError as exc:
            raise self._write_error(exc) from exc
        finally:
            if tmp is not None:
                _unlink_quietly(tmp)

    def put_file(self, key: str, path: str | os.PathLike[str], *, synced: bool = False,
                 keep_source: bool = False, defer_sync: bool = False) -> None:
        """Store the file at ``path`` under ``key``.

        On the same file system as the root, the file is fsynced and renamed into place
        (it is gone from ``path`` afterwards), or with ``keep_source`` hard-linked into
        place (an existing object under ``key`` is kept: keys of ingested objects are
        content-addressed, so it holds the same bytes). Otherwise it is copied into a
        temporary file first and the source is left alone. ``FileNotFoundError`` when
        ``path`` does not exist. ``defer_sync`` (with ``synced`` and ``keep_source``): link
        without flushing the folder; the caller keeps the object durable elsewhere until
        :meth:`sync_objects` (pacs/staging.py).
        """
        dest = self._path(key)
        src = os.fspath(path)
        st = os.lstat(src)  # FileNotFoundError is the caller's mistake, not an outage
        if stat.S_ISREG(st.st_mode) and st.st_dev == self._dev:
            try:
                if not synced:
                    fsync_file(src)
                self._ensure_dir(dest.parent)
                if keep_source:
                    _link_if_absent(src, dest)
                else:
                    os.replace(src, dest)
                if not defer_sync:
                    _fsync_dir(dest.parent)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:  # EXDEV: another mount after all; copy
                    raise self._write_error(exc) from exc
        self._put_copy(dest, src)

    def sync_objects(self, keys: list[str]) -> None:
        """Make the objects under ``keys``, stored with ``defer_sync``, durable: one
        ``syncfs`` of the store's file system where Linux offers it (one device flush for
        the whole batch, instead of one per file and per folder: each flush waits for the
        device, the index's WAL flushes too); otherwise each file, then each folder once.
        Deleted objects are skipped."""
        if _syncfs is not None:
            fd = os.open(self._root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                if _syncfs(fd) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, os.strerror(error))
            finally:
                os.close(fd)
            return
        folders = set()
        for key in keys:
            path = self._path(key)
            try:
                fsync_file(path)
            except FileNotFoundError:
                continue
            folders.add(path.parent)
        for folder in folders:
            try:
                _fsync_dir(folder)
            except FileNotFoundError:
                pass

    def _put_copy(self, dest: Path, src: str) -> None:
        tmp: Path | None = None
        try:
            with open(src, "rb") as source:
                fd, tmp = self._new_temp()
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, _COPY_CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
            self._commit(tmp, dest)
            tmp = None
        except FileNotFoundError:
            if tmp is None:  # the source vanished before we opened it
                raise
            raise StorageUnavailable("blob folder write failed: temporary file vanished") from None
        except OSError as exc:
            raise self._write_error(exc) from exc
        finally:
            if tmp is not None:
                _unlink_quietly(tmp)

    # -- reading ----------------------------------------------------------------------

    def _read_error(self, key: str, exc: OSError) -> Exception:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            return BlobNotFound(key)
        return StorageUnavailable(_reason("read", exc))

    def open(self, key: str) -> BinaryIO:
        """A buffered binary file object of the object; the caller closes it."""
        path = self._path(key)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise self._read_error(key, exc) from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start`` (fewer at the end of the object)."""
        if start < 0 or length < 0:
            raise ValueError("start and length must not be negative")
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._read_error(key, exc) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BlobNotFound(key)
            parts: list[bytes] = []
            offset, remaining = start, length
            while remaining > 0:
                block = os.pread(fd, min(remaining, 1 << 30), offset)
                if not block:
                    break
                parts.append(block)
                offset += len(block)
                remaining -= len(block)
            return b"".join(parts)
        except OSError as exc:
            raise self._read_error(key, exc) from None
        finally:
            os.close(fd)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object in chunks of ``chunk_size``; :class:`BlobNotFound` is raised here, eagerly."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        handle = self.open(key)

        def chunks() -> Iterator[bytes]:
            with handle:
                while True:
                    try:
                        block = handle.read(chunk_size)
                    except OSError as exc:
                        raise StorageUnavailable(_reason("read", exc)) from None
                    if not block:
                        return
                    yield block

        return chunks()

    def size(self, key: str) -> int:
        """Size in bytes."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise self._read_error(key, exc) from None
        if not stat.S_ISREG(st.st_mode):
            raise BlobNotFound(key)
        return st.st_size

    def exists(self, key: str) -> bool:
        """True when a file is stored under ``key``."""
        path = self._path(key)
        try:
            return stat.S_ISREG(os.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StorageUnavailable(_reason("stat", exc)) from None

    def delete(self, key: str) -> None:
        """Remove the object (empty folders stay); no error when it is absent."""
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a folder of other objects, not an object
        except OSError as exc:
            raise StorageUnavailable(_reason("delete", exc)) from None
        try:
            _fsync_dir(path.parent)
        except OSError:
            pass  # the unlink happened; durability of a delete is best effort

    # -- maintenance ------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` unless the root is a writable directory."""
        if not self._root.is_dir():
            raise StorageUnavailable("blob folder is missing or not a directory")
        tmp: Path | None = None
        try:
            fd, tmp = self._new_temp()
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailable(_reason("health check", exc)) from None
        finally:
            if tmp is not None:
                _unlink_quietly(tmp)

    def sweep_temporary(self, older_than: float) -> int:
        """Delete ``.tmp/*.part`` files last modified more than ``older_than`` seconds ago."""
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageUnavailable(_reason("sweep", exc)) from None
        for entry in entries:
            if not entry.name.endswith(TEMP_SUFFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue  # finished or swept concurrently
            except OSError as exc:
                raise StorageUnavailable(_reason("sweep", exc)) from None
        return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
