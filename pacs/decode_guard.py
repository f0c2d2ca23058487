"""Decompression-bomb guard: how much memory decoding a frame or an object would take,
checked before any decoder runs.

A compressed frame of a few kilobytes may claim to decode to gigabytes, in two places:
the object's Image Pixel module (Rows, Columns, Samples per Pixel, Bits Allocated, Number
of Frames; PS3.3 C.7.6.3) and the codestream's own header, which the JPEG family decoders
(pylibjpeg, pyjpegls) trust when they allocate their output: the JPEG / JPEG-LS frame
header (SOF, ISO/IEC 10918-1 B.2.2, ISO/IEC 14495-1 5.1) and the JPEG 2000 image and tile
size marker (SIZ, ISO/IEC 15444-1 A.5.1). The larger of the two is what decoding costs.

Limits (settings, docs/security.md): ``max_decoded_bytes`` for the decoded pixels of one
frame (WADO-RS frames, rendered, thumbnails) or of a whole object (transcoding on retrieve
or C-MOVE/C-GET/push), and ``render_max_pixels`` for the pixels one rendered image may
have (the display pipeline works in floating point, several bytes per pixel).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Iterable

from pydicom.pixels.utils import _get_jpg_parameters  # pydicom's own SOF / SOF55 parser

from .errors import PacsError

#: Bytes of a codestream searched for its header (SIZ follows SOC at once in J2K; a JP2
#: file puts a few small boxes first; JPEG may carry APP segments first).
HEADER_WINDOW = 65536
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ (ISO/IEC 15444-1 A.4.1, A.5.1)


class DecodeRefused(PacsError):
    """Decoding would exceed the configured memory limit: the representation that needs
    it cannot be produced (PS3.18 8.7.4: 406), nor a transcoded copy sent (PS3.4 C.4.2
    sub-operation failure)."""

    dimse_status = 0xC000
    http_status = 406


def codestream_size(data: bytes) -> tuple[int, int, int] | None:
    """``(rows, columns, components)`` from a JPEG, JPEG-LS or JPEG 2000 header, if found."""
    head = bytes(data[:HEADER_WINDOW])
    if head[:2] == b"\xff\xd8":
        info = _get_jpg_parameters(head)
        if info:
            return int(info["height"]), int(info["width"]), int(info["components"])
        return None
    at = head.find(_J2K_SIZ)
    start = at + 4  # Lsiz
    if at < 0 or len(head) < start + 38:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", head[start + 4:start + 20])
    (components,) = struct.unpack(">H", head[start + 36:start + 38])
    return max(0, ysiz - yosiz), max(0, xsiz - xosiz), components


def _bytes_per_sample(attrs: dict[str, Any]) -> int:
    return max(1, math.ceil(int(attrs.get("BitsAllocated", 8) or 8) / 8))


def frame_bytes(attrs: dict[str, Any], encoded: bytes | None = None) -> int:
    """Decoded size of one frame: the larger of what the Image Pixel attributes declare
    and what the codestream header of ``encoded`` (a compressed frame) claims."""
    rows, columns = int(attrs.get("Rows", 0) or 0), int(attrs.get("Columns", 0) or 0)
    samples = int(attrs.get("SamplesPerPixel", 1) or 1)
    size = rows * columns * samples
    if encoded is not None and (header := codestream_size(encoded)) is not None:
        size = max(size, header[0] * header[1] * max(1, header[2]))
    return size * _bytes_per_sample(attrs)


def _refuse(what: str, size: int, limit: int, setting: str) -> DecodeRefused:
    return DecodeRefused(f"{what} would decode to {size:,} bytes, above the limit of {limit:,} "
                         f"(setting {setting})")


def check_frame(attrs: dict[str, Any], encoded: bytes | None, limit: int) -> None:
    """Refuse decoding one frame above ``limit`` bytes (``max_decoded_bytes``)."""
    size = frame_bytes(attrs, encoded)
    if limit and size > limit:
        raise _refuse("this frame", size, limit, "PACS_MAX_DECODED_BYTES")


def check_object(attrs: dict[str, Any], encoded_frames: Iterable[bytes] | None, frames: int, limit: int) -> None:
    """Refuse decoding a whole object of ``frames`` frames above ``limit`` bytes; each
    encoded frame's header is read (not decoded) when the object is compressed."""
    if not limit:
        return
    if encoded_frames is None:
        total = frame_bytes(attrs) * max(1, frames)
    else:
        total = sum(frame_bytes(attrs, frame) for frame in encoded_frames)
        total = max(total, frame_bytes(attrs) * max(1, frames))
    if total > limit:
        raise _refuse("this object", total, limit, "PACS_MAX_DECODED_BYTES")


def check_render(rows: int, columns: int, limit: int) -> None:
    """Refuse rendering an image of more than ``limit`` pixels (``render_max_pixels``)."""
    if limit and rows * columns > limit:
        raise DecodeRefused(f"an image of {rows} x {columns} pixels is above the rendering limit of "
                            f"{limit:,} pixels (setting PACS_RENDER_MAX_PIXELS)")
