"""Structural check of an encoded dataset: every element fits inside the object.

pydicom reads a truncated value or a partial trailing element header without an error
(it stops at end of file), so a dataset cut short in transit would parse. This walk over
the element headers (PS3.5 7.1, 7.5; encapsulated pixel data PS3.5 A.4) proves that
every length fits and every undefined-length sequence is delimited, without reading
values. Written by hand because pydicom exposes no such validation.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .errors import InvalidInstance

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 32


class _Walker:
    def __init__(self, fp: BinaryIO, size: int, explicit: bool, little: bool) -> None:
        self.fp, self.size = fp, size
        self.explicit, self.endian = explicit, "<" if little else ">"

    def _read(self, n: int) -> bytes:
        data = self.fp.read(n)
        if len(data) != n:
            raise InvalidInstance("dataset truncated inside an element header")
        return data

    def _skip(self, length: int) -> None:
        target = self.fp.tell() + length
        if target > self.size:
            raise InvalidInstance("dataset truncated: an element is longer than the object")
        self.fp.seek(target)

    def header(self, explicit: bool) -> tuple[int, bytes, int]:
        group, elem = struct.unpack(self.endian + "HH", self._read(4))
        tag = group << 16 | elem
        if group == 0xFFFE or not explicit:
            return tag, b"", struct.unpack(self.endian + "L", self._read(4))[0]
        vr = self._read(2)
        if vr in _LONG_VRS:
            self._read(2)
            return tag, vr, struct.unpack(self.endian + "L", self._read(4))[0]
        return tag, vr, struct.unpack(self.endian + "H", self._read(2))[0]

    def dataset(self, end: int | None, explicit: bool, depth: int) -> None:
        """Walk elements until ``end`` (defined length) or an item delimiter (undefined)."""
        if depth > MAX_DEPTH:
            raise InvalidInstance("sequences nested too deeply")
        while (end is None or self.fp.tell() < end) and self.fp.tell() < self.size:
            tag, vr, length = self.header(explicit)
            if tag == ITEM_END:
                return
            if length != UNDEFINED:
                self._skip(length)
            elif tag == 0x7FE00010 and depth == 0:
                self.fragments()
            else:
                self.sequence(explicit and vr != b"UN", depth + 1)
        if end is None and depth > 0:
            raise InvalidInstance("dataset truncated inside a sequence item")
        if end is not None and self.fp.tell() != end:
            raise InvalidInstance("item length does not match its elements")

    def sequence(self, explicit: bool, depth: int) -> None:
        while True:
            tag, _, length = self.header(False)
            if tag == SEQ_END:
                return
            if tag != ITEM:
                raise InvalidInstance("malformed sequence: expected an item")
            if length == UNDEFINED:
                self.dataset(None, explicit, depth)
            else:
                self.dataset(self.fp.tell() + length, explicit, depth)

    def fragments(self) -> None:
        while True:
            tag, _, length = self.header(False)
            if tag == SEQ_END:
                return
            if tag != ITEM or length == UNDEFINED:
                raise InvalidInstance("malformed encapsulated Pixel Data")
            self._skip(length)


def check_structure(fp: BinaryIO, start: int, size: int, *, explicit: bool, little: bool) -> None:
    """Raise :class:`InvalidInstance` unless the dataset from ``start`` to ``size`` is whole."""
    fp.seek(start)
    _Walker(fp, size, explicit, little).dataset(None, explicit, 0)


def dataset_start(fp: BinaryIO, size: int) -> int:
    """Offset of the dataset after the preamble and the File Meta group (PS3.10 7.1)."""
    fp.seek(128)
    pos = 132 if fp.read(4) == b"DICM" else 0
    fp.seek(pos)
    walker = _Walker(fp, size, explicit=True, little=True)
    while pos + 8 <= size:
        fp.seek(pos)
        (group,) = struct.unpack("<H", walker._read(2))
        if group != 0x0002:
            break
        fp.seek(pos)
        _, _, length = walker.header(True)
        walker._skip(length)
        pos = fp.tell()
    return pos
