"""Accept header parsing and transfer syntax negotiation for WADO-RS (PS3.18 8.7).

Knows no HTTP framework: it takes the ``Accept`` header value and answers which
representations the user agent accepts, in its order of preference (q-values,
RFC 9110 12.5.1), and which transfer syntax to send each stored object in.

Rules for ``multipart/related; type="application/dicom"`` (PS3.18 8.7.3.5, 8.7.5):

* ``transfer-syntax=*`` (PS3.18 8.7.3.5.2): as stored.
* no ``transfer-syntax`` parameter, ``*/*``, ``multipart/*``, ``multipart/related``
  without ``type`` and an absent Accept header: the default transfer syntax of
  ``application/dicom``, Explicit VR Little Endian (PS3.18 8.7.3.5.2, Table 8.7.3-2):
  an object stored so goes as stored, a compressed one is decoded.
* a named syntax equal to the stored one: as stored; Explicit or Implicit VR Little
  Endian for an object stored otherwise: transcoded when
  :func:`pacs.retrieve.choose_syntax` says it can be; anything else: not acceptable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pacs.retrieve import choose_syntax

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: The transfer-syntax value meaning "as stored" (PS3.18 8.7.3.5.2).
AS_STORED = "*"
#: The default transfer syntax of application/dicom (PS3.18 Table 8.7.3-2).
DEFAULT_SYNTAX = "1.2.840.10008.1.2.1"


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media range of an Accept header: type, lower-cased parameters, quality."""

    media_type: str
    params: dict[str, str]
    quality: float


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """``text`` split on ``separator`` where it is not inside a quoted string."""
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _media_range(text: str) -> MediaRange | None:
    """A media range (RFC 9110 12.5.1) with quoted or unquoted parameter values."""
    media_type, *raw_params = (p.strip() for p in _split_outside_quotes(text, ";"))
    if not media_type:
        return None
    params: dict[str, str] = {}
    for raw in raw_params:
        name, _, value = raw.partition("=")
        params[name.strip().lower()] = value.strip().strip('"').strip()
    try:
        quality = float(params.pop("q", "1") or "1")
    except ValueError:
        quality = 0.0
    return MediaRange(media_type.lower(), params, quality)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first; q=0 ranges dropped.

    Ranges of equal quality keep the order they were given in."""
    ranges = [r for r in (_media_range(p) for p in _split_outside_quotes(header or "", ","))
              if r is not None and r.quality > 0]
    return sorted(ranges, key=lambda r: -r.quality)


def accepts_json(header: str | None) -> bool:
    """True when the Accept header admits DICOM JSON (PS3.18 8.7.4, 10.4.1.1.2; metadata).

    A list that also names other types (OHIF sends multipart ranges to /metadata too)
    is fine as long as one range fits."""
    if not (header or "").strip():
        return True
    fitting = {DICOM_JSON, "application/json", "application/*", "*/*"}
    return any(r.media_type in fitting for r in parse_accept(header))


def dicom_syntaxes(header: str | None) -> list[str]:
    """The transfer syntaxes an instance retrieve may answer in, in order of preference.

    Each entry is a Transfer Syntax UID or :data:`AS_STORED`. An empty list means no
    range of the header admits a multipart ``application/dicom`` answer (406)."""
    if not (header or "").strip():
        return [DEFAULT_SYNTAX]
    wanted: list[str] = []
    for media in parse_accept(header):
        if media.media_type in ("*/*", "multipart/*"):
            wanted.append(DEFAULT_SYNTAX)
        elif media.media_type == "multipart/related":
            if media.params.get("type", DICOM).lower() != DICOM:
                continue
            wanted.append(media.params.get("transfer-syntax") or DEFAULT_SYNTAX)
    return list(dict.fromkeys(wanted))


def negotiate(stored: str, wanted: Sequence[str]) -> str | None:
    """The transfer syntax to send an object stored in ``stored``, or None (PS3.18 8.7.3.5).

    The first of ``wanted`` that can be served: :data:`AS_STORED` or the stored syntax
    itself send the bytes as stored; an uncompressed little endian syntax is reached by
    transcoding when :func:`pacs.retrieve.choose_syntax` allows it."""
    for syntax in wanted:
        if syntax in (AS_STORED, stored):
            return stored
        if choose_syntax(stored, (syntax,)) == syntax:
            return syntax
    return None
