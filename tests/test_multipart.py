"""dicomweb.multipart.RelatedReader: the STOW-RS multipart/related reader (RFC 2046 5.1.1),
fed the same bodies in pieces of every size, so a delimiter split anywhere is found."""

from __future__ import annotations

import asyncio
import random

import pytest

from dicomweb.multipart import MAX_HEADER_BYTES, BodyPart, RelatedReader

BOUNDARY = "b0und4ry"


class Pieces:
    """A stream answering each read with the next piece of ``body``."""

    def __init__(self, body: bytes, size: int) -> None:
        self._pieces = [body[i:i + size] for i in range(0, len(body), size)]

    async def read(self, n: int = -1) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


def body_of(parts: list[tuple[str, bytes]], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for headers, data in parts:
        out += f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--".encode() + epilogue


async def read_body(part: BodyPart, chunk: int = 1 << 20) -> bytes:
    """The whole body of ``part`` (a chunk is what has arrived: maybe a few bytes)."""
    data = bytearray()
    while not part.at_eof():
        data += await part.read_chunk(chunk)
    return bytes(data)


async def read_all(body: bytes, piece: int, chunk: int = 1 << 20) -> list[tuple[dict[str, str], bytes]]:
    reader, found = RelatedReader(Pieces(body, piece), BOUNDARY), []
    while (part := await reader.next()) is not None:
        found.append((dict(part.headers), await read_body(part, chunk)))
    return found


TRICKY = b"\r\n--b0und\r\r\n-\r\n--B0UND4RY\r\n--b0und4r" + bytes(range(256)) * 3 + b"\r"


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 11, 13, 64, 4096, 1 << 20])
def test_parts_and_headers_whatever_the_pieces(piece: int) -> None:
    parts = [("Content-Type: application/dicom\r\n", b"first"),
             ("content-type: application/dicom\r\nContent-Location:  x/1 \r\n", TRICKY),
             ("", b""),  # no header fields, empty body
             ("Content-Type: application/octet-stream\r\n", random.Random(1).randbytes(70_000))]
    body = body_of(parts, preamble=b"ignored preamble\r\n", epilogue=b"\r\nignored epilogue")
    found = asyncio.run(read_all(body, piece, chunk=777))
    assert [data for _, data in found] == [data for _, data in parts]
    assert found[0][0] == {"Content-Type": "application/dicom"}
    assert found[1][0] == {"content-type": "application/dicom", "Content-Location": "x/1"}
    assert found[2][0] == {}


def test_headers_are_case_insensitive_and_padding_after_a_boundary_is_allowed() -> None:
    body = f"--{BOUNDARY} \t\r\nCONTENT-TYPE: a/b\r\n\r\nxy\r\n--{BOUNDARY}--\r\n".encode()

    async def first() -> tuple[str, bytes]:
        part = await RelatedReader(Pieces(body, 3), BOUNDARY).next()
        assert part is not None
        return part.headers["content-type"], await read_body(part)

    assert asyncio.run(first()) == ("a/b", b"xy")


def test_an_unread_part_is_skipped() -> None:
    body = body_of([("", b"a" * 5000), ("X: 1\r\n", b"second")])

    async def second() -> bytes:
        reader = RelatedReader(Pieces(body, 100), BOUNDARY)
        await reader.next()
        part = await reader.next()
        assert part is not None and part.headers["X"] == "1"
        return await read_body(part)

    assert asyncio.run(second()) == b"second"


@pytest.mark.parametrize("body", [
    b"",  # no body
    b"no boundary at all",
    f"--{BOUNDARY}\r\nContent-Type: a/b\r\n\r\ncut in the middle".encode(),  # no closing delimiter
    f"--{BOUNDARY}\r\nContent-Type: a/b\r\n".encode(),  # cut in the headers
    f"--{BOUNDARY}".encode(),  # cut after the boundary
    f"--{BOUNDARY}garbage\r\n\r\nx\r\n--{BOUNDARY}--".encode(),  # text after a boundary
    f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(),  # malformed header line
    f"--{BOUNDARY}\r\nX: {'y' * MAX_HEADER_BYTES}\r\n\r\nx\r\n--{BOUNDARY}--".encode(),  # headers too long
    b"--other\r\n\r\nx\r\n--other--",  # another boundary
])
def test_malformed_framing_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="multipart body"):
        asyncio.run(read_all(body, 7))
