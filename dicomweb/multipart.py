"""A streaming reader of ``multipart/related`` bodies (RFC 2046 5.1.1, RFC 2387) for STOW-RS.

Written here instead of using aiohttp's ``MultipartReader`` for speed: for a part without
a Content-Length (what STOW-RS clients send) aiohttp looks for the boundary by joining
every piece read to the previous one and pushing what follows the boundary back into the
stream; on 526 kB CT slices that was 30 % of the server's busy time (docs/performance.md).
This reader scans each piece of the body once for the delimiter (``bytes.find``) and
hands out the part's data as ``memoryview`` slices of the pieces aiohttp read: no copy.

Only what STOW-RS needs: parts in order, each with its headers and its body read in
chunks; a preamble is skipped and the epilogue ignored, as RFC 2046 says. Malformed
framing raises ``ValueError`` (the door answers 400), never reads past the body.
"""

from __future__ import annotations

from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

#: Largest header block of one part, and longest boundary line (with padding).
MAX_HEADER_BYTES = 16 << 10
#: Bytes asked of the stream at a time (it answers with what it holds, up to this).
READ_BYTES = 1 << 20
_CRLF = b"\r\n"


class Stream(Protocol):
    """What is read: aiohttp's ``StreamReader`` (``request.content``)."""

    async def read(self, n: int = -1) -> bytes: ...


class RelatedReader:
    """The parts of one body, in order (:meth:`next`). Unread bytes are ``_data[_pos:]``."""

    def __init__(self, content: Stream, boundary: str) -> None:
        self._content = content
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._data = _CRLF  # the first delimiter may open the body, with no CRLF before it
        self._pos = 0
        self._eof = False
        self._done = False
        self._current: BodyPart | None = None

    async def _more(self) -> bool:
        """Read the stream's next piece behind the unread bytes; False at the body's end.
        The unread rest is copied (small: at most a delimiter's start, or a header block)."""
        if self._eof:
            return False
        piece = await self._content.read(READ_BYTES)
        if not piece:
            self._eof = True
            return False
        rest = self._data[self._pos:]
        self._data, self._pos = (rest + piece if rest else piece), 0
        return True

    async def _find(self, needle: bytes, what: str) -> int:
        """Where ``needle`` starts among the unread bytes, reading on until it comes;
        ``ValueError`` unless within :data:`MAX_HEADER_BYTES` and before the body ends."""
        while True:
            index = self._data.find(needle, self._pos, self._pos + MAX_HEADER_BYTES + len(needle))
            if index >= 0:
                return index
            if len(self._data) - self._pos > MAX_HEADER_BYTES or not await self._more():
                raise ValueError(f"multipart body: {what} not found")

    async def _need(self, count: int, what: str) -> None:
        while len(self._data) - self._pos < count:
            if not await self._more():
                raise ValueError(f"multipart body ends {what}")

    async def next(self) -> BodyPart | None:
        """The next part, or None after the close delimiter."""
        if self._done:
            return None
        if self._current is not None:
            await self._current.skip()  # an unread rest, up to the next delimiter
        await self._skip_to_delimiter()
        await self._need(2, "after a boundary")
        if self._data.startswith(b"--", self._pos):  # the close delimiter; then the epilogue
            self._done, self._current = True, None
            return None
        line_end = await self._find(_CRLF, "end of the boundary line")
        if self._data[self._pos:line_end].strip(b" \t"):  # only transport padding may follow
            raise ValueError("multipart body: text after a boundary")
        self._pos = line_end + 2
        self._current = BodyPart(self, await self._headers())
        return self._current

    async def _skip_to_delimiter(self) -> None:
        """Drop what precedes the next delimiter (the preamble), and the delimiter."""
        keep = len(self._delimiter) - 1
        while (index := self._data.find(self._delimiter, self._pos)) < 0:
            self._pos = max(self._pos, len(self._data) - keep)
            if not await self._more():
                raise ValueError("multipart body: boundary not found")
        self._pos = index + len(self._delimiter)

    async def _headers(self) -> CIMultiDictProxy[str]:
        """A part's header fields, up to and with the blank line that ends them."""
        headers: CIMultiDict[str] = CIMultiDict()
        await self._need(2, "in a part's headers")
        if self._data.startswith(_CRLF, self._pos):  # no header fields
            self._pos += 2
            return CIMultiDictProxy(headers)
        end = await self._find(b"\r\n\r\n", "end of a part's headers")
        for line in self._data[self._pos:end].decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ValueError("multipart body: malformed header line in a part")
            headers.add(name, value.strip(" \t"))
        self._pos = end + 4
        return CIMultiDictProxy(headers)

    async def read_body(self, size: int) -> tuple[memoryview, bool]:
        """Up to ``size`` bytes of the current part's body, as a view of what was read, and
        whether the part's delimiter follows them; ``ValueError`` when the body ends first."""
        while True:
            data, start = self._data, self._pos
            index = data.find(self._delimiter, start)
            end = index if index >= 0 else self._safe_end()
            if end > start or index >= 0:
                end = min(end, start + size)
                self._pos = end
                return memoryview(data)[start:end], end == index
            if not await self._more():
                raise ValueError("multipart body: a part is truncated (no closing delimiter)")

    def _safe_end(self) -> int:
        """Where the unread bytes stop being certainly data: at the start of a trailing
        piece that could begin the delimiter. Only its first byte is CR (a boundary holds
        none, RFC 2046 5.1.1), so only the last CR near the end can start one."""
        data, delimiter = self._data, self._delimiter
        cr = data.rfind(b"\r", max(self._pos, len(data) - len(delimiter) + 1))
        return cr if cr >= 0 and delimiter.startswith(data[cr:]) else len(data)


class BodyPart:
    """One part: its ``headers`` and its body, read with :meth:`read_chunk`."""

    def __init__(self, reader: RelatedReader, headers: CIMultiDictProxy[str]) -> None:
        self._reader = reader
        self.headers = headers
        self._at_eof = False

    def at_eof(self) -> bool:
        """True once the part's body has been read to its delimiter."""
        return self._at_eof

    async def read_chunk(self, size: int = READ_BYTES) -> memoryview | bytes:
        """Up to ``size`` bytes of the body, as a view of what was read (b"" once read
        whole); ``ValueError`` when the body ends before the part's delimiter."""
        if self._at_eof:
            return b""
        chunk, self._at_eof = await self._reader.read_body(size)
        return chunk

    async def skip(self) -> None:
        """Read the rest of the body and drop it."""
        while not self._at_eof:
            await self.read_chunk()
