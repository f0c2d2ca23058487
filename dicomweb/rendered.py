"""WADO-RS Rendered (PS3.18 10.4.1.1.3) and Thumbnail (PS3.18 10.4.1.1.6) resources.

* ``.../rendered`` at study, series, instance and frame level. Query parameters
  (PS3.18 8.3.5.1): ``window=center,width[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``,
  ``quality=1..100`` (JPEG), ``accept`` (overrides the Accept header, 8.3.3.1),
  ``annotation`` and ``charset`` (accepted, ignored: no burned-in annotation).
  ``image/jpeg`` by default, ``image/png`` when asked. An instance is rendered as its
  first frame; a frame list as the frames. A study or series asked as a single image
  (``image/jpeg``, ``image/png``, ``*/*``) is its first instance; asked as
  ``multipart/related; type="image/..."`` it is every instance, one part each.
* ``.../thumbnail`` at the same levels: one small image (default fit in 128 x 128,
  ``viewport`` may change it): the middle instance of the series (of the study's first
  series), an instance's first frame, a frame list's first frame.

The pixel pipeline is :mod:`pacs.render`; it runs in the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from aiohttp import web

from pacs import frames, render
from pacs.access import Caller
from pacs.auth import caller_of
from pacs.errors import InvalidQuery, NotAcceptable, NotFound
from pacs.web import ARCHIVE, run_blocking

from . import accept
from .frames import multipart_response


@dataclass(frozen=True)
class RenderedChoice:
    """The negotiated answer: one image or multipart, and the image media type."""

    multipart: bool
    media_type: str


def _numbers(text: str, name: str, count: tuple[int, ...]) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in count:
        raise InvalidQuery(f"{name} takes {' or '.join(map(str, count))} comma-separated values")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise InvalidQuery(f"{name}: {text[:40]!r} is not a list of numbers") from None


def parse_window(text: str | None) -> render.Window | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    function = parts[2].upper() if len(parts) == 3 else "LINEAR"
    center, width = _numbers(",".join(parts[:2]), "window", (2,))
    return render.Window(center, width, function)


def parse_viewport(text: str | None) -> render.Viewport | None:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); sizes are whole pixels."""
    if not text:
        return None
    values = _numbers(text, "viewport", (2, 6))
    if any(v != int(v) for v in values):
        raise InvalidQuery("viewport values are whole numbers of pixels")
    vw, vh, *region = (int(v) for v in values)
    if not (0 < vw <= 8192 and 0 < vh <= 8192):
        raise InvalidQuery("viewport width and height must be 1..8192")
    if region and (region[0] < 0 or region[1] < 0 or region[2] == 0 or region[3] == 0):
        raise InvalidQuery("viewport source region: sx, sy >= 0 and sw, sh non-zero")
    return render.Viewport(vw, vh, *region)


def parse_quality(text: str | None) -> int:
    """``quality=1..100`` (PS3.18 8.3.5.1.2)."""
    if not text:
        return render.DEFAULT_QUALITY
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise InvalidQuery("quality must be an integer 1..100")
    return int(text)


def _image_type(media_type: str) -> str | None:
    if media_type in render.MEDIA_TYPES:
        return media_type
    return render.JPEG if media_type in ("image/*", "*/*") else None


def choose(header: str | None, parts_allowed: bool, parts: int = 1) -> RenderedChoice:
    """The first producible range of the Accept header (or ``accept`` parameter): a
    single image type, or multipart/related of one (PS3.18 8.7.4); 406 otherwise.
    Several ``parts`` (a frame list) need multipart, which ``*/*`` also admits."""
    ranges = accept.parse_accept(header) if (header or "").strip() else []
    default = accept.MediaRange("*/*" if parts > 1 else render.JPEG, {}, 1.0)
    for media in ranges or [default]:
        if media.media_type in ("multipart/related", "multipart/*") and parts_allowed:
            inner = _image_type(media.params.get("type", render.JPEG).lower())
            if inner is not None:
                return RenderedChoice(True, inner)
        elif (inner := _image_type(media.media_type)) is not None:
            if parts == 1:
                return RenderedChoice(False, inner)
            if media.media_type == "*/*":
                return RenderedChoice(True, inner)
    raise NotAcceptable(f"rendered images are {' or '.join(render.MEDIA_TYPES)} (or multipart/related of them)")


def options_from(query: Mapping[str, str], media_type: str, *, thumbnail: bool = False) -> render.RenderOptions:
    """The rendering options of a request's query parameters (400 when malformed)."""
    viewport = parse_viewport(query.get("viewport"))
    if thumbnail and viewport is None:
        viewport = render.Viewport(render.THUMBNAIL_SIZE, render.THUMBNAIL_SIZE)
    return render.RenderOptions(media_type, parse_window(query.get("window")), viewport,
                                parse_quality(query.get("quality")))


def _targets(archive: Any, info: dict[str, str], thumbnail: bool, every: bool,
             caller: Caller) -> list[tuple[frames.PixelSource, int]]:
    """(instance, frame number) pairs to render for the target resource."""
    if "sop" in info:
        source = archive.locate(info["study"], info["series"], info["sop"], caller=caller)
        numbers = frames.parse_frame_list(info["frames"]) if "frames" in info else [1]
        frames.check_frames(source, numbers)
        return [(source, n) for n in (numbers[:1] if thumbnail else numbers)]
    images = [s for s in archive.instances_of(info["study"], info.get("series"), caller=caller) if s.frames]
    if not images:
        raise NotFound("no instance with pixel data in the target resource")
    if every:
        return [(s, 1) for s in images]
    if thumbnail:  # the middle instance of the (first) series
        first_series = [s for s in images if s.series_uid == images[0].series_uid]
        return [(first_series[len(first_series) // 2], 1)]
    return [(images[0], 1)]


def rendered_job(archive: Any, info: dict[str, str], query: Mapping[str, str], accept_header: str | None,
                 thumbnail: bool, caller: Caller) -> tuple[RenderedChoice, list[bytes]]:
    """Negotiate, find and render (blocking)."""
    parts = len(frames.parse_frame_list(info["frames"])) if "frames" in info and not thumbnail else 1
    choice = choose(query.get("accept") or accept_header, parts_allowed=not thumbnail, parts=parts)
    options = options_from(query, choice.media_type, thumbnail=thumbnail)
    targets = _targets(archive, info, thumbnail, choice.multipart and "sop" not in info, caller)
    return choice, [render.render(archive, source, n, options) for source, n in targets]


async def _serve(request: web.Request, thumbnail: bool) -> web.Response:
    choice, images = await run_blocking(rendered_job, request.app[ARCHIVE], dict(request.match_info),
                                        dict(request.query), request.headers.get("Accept"), thumbnail,
                                        caller_of(request))
    if choice.multipart:
        return multipart_response(images, choice.media_type, choice.media_type)
    return web.Response(body=images[0], headers={"Content-Type": choice.media_type})


async def retrieve_rendered(request: web.Request) -> web.Response:
    """GET ``.../rendered`` (PS3.18 10.4.1.1.3): 200 with the image(s); 400 for malformed
    parameters; 404 unknown target or frame; 406 unsupported media type or undecodable."""
    return await _serve(request, thumbnail=False)


async def retrieve_thumbnail(request: web.Request) -> web.Response:
    """GET ``.../thumbnail`` (PS3.18 10.4.1.1.6): 200 with one small image."""
    return await _serve(request, thumbnail=True)


_LEVELS = ("/studies/{study}", "/studies/{study}/series/{series}",
           "/studies/{study}/series/{series}/instances/{sop}",
           "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
#: (method, path under /dicom-web, handler).
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = tuple(
    ("GET", level + suffix, handler)
    for level in _LEVELS
    for suffix, handler in (("/rendered", retrieve_rendered), ("/thumbnail", retrieve_thumbnail))
)
