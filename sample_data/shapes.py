"""Vectorised drawing primitives shared by the phantoms.

All shapes are drawn in millimetres on a pixel-centre grid given by two 1-D axes, and
only inside the shape's bounding box, so small structures cost next to nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def grid_axes(rows: int, columns: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (mm) of rows (``y``) and columns (``x``), centred on 0."""
    ys = ((np.arange(rows) - (rows - 1) / 2.0) * spacing).astype(np.float32)
    xs = ((np.arange(columns) - (columns - 1) / 2.0) * spacing).astype(np.float32)
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def ellipse_mask(
    ys: np.ndarray,
    xs: np.ndarray,
    centre: tuple[float, float],
    radii: tuple[float, float],
    angle: float = 0.0,
) -> tuple[slice, slice, np.ndarray] | None:
    """Bounding-box slices and boolean mask of an ellipse, or ``None`` if it misses the grid.

    ``centre`` and ``radii`` are ``(x, y)`` in mm; ``angle`` rotates the ellipse (radians).
    """
    (cx, cy), (rx, ry) = centre, radii
    if rx <= 0 or ry <= 0:
        return None
    reach = max(rx, ry)
    r0, r1 = np.searchsorted(ys, [cy - reach, cy + reach])
    c0, c1 = np.searchsorted(xs, [cx - reach, cx + reach])
    if r0 >= r1 or c0 >= c1:
        return None
    dy = (ys[r0:r1] - cy)[:, None]
    dx = (xs[c0:c1] - cx)[None, :]
    if angle:
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        dx, dy = dx * cos_a + dy * sin_a, dy * cos_a - dx * sin_a
    mask = (dx * (1.0 / rx)) ** 2 + (dy * (1.0 / ry)) ** 2 <= 1.0
    return slice(r0, r1), slice(c0, c1), mask


def paint_ellipse(
    image: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray],
    centre: tuple[float, float],
    radii: tuple[float, float],
    value: float,
    *,
    angle: float = 0.0,
    below: float | None = None,
    y_max: float | None = None,
) -> None:
    """Set ``value`` inside an ellipse.

    ``below`` restricts painting to pixels currently below that value (e.g. vessels only
    inside lung); ``y_max`` clips the ellipse to ``y <= y_max`` (e.g. an air-fluid level).
    """
    ys, xs = axes
    hit = ellipse_mask(ys, xs, centre, radii, angle)
    if hit is None:
        return
    rows, cols, mask = hit
    region = image[rows, cols]
    if below is not None:
        mask &= region < below
    if y_max is not None:
        mask &= (ys[rows] <= y_max)[:, None]
    region[mask] = value


def paint_ring(
    image: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray],
    centre: tuple[float, float],
    radii: tuple[float, float],
    wall: float,
    values: tuple[float, float],
    angle: float = 0.0,
) -> None:
    """An ellipse of ``values[0]`` with a ``wall``-mm thinner inner ellipse of ``values[1]``."""
    paint_ellipse(image, axes, centre, radii, values[0], angle=angle)
    inner = (radii[0] - wall, radii[1] - wall)
    paint_ellipse(image, axes, centre, inner, values[1], angle=angle)


def ellipsoid_scale(z: float, top: float, bottom: float) -> float:
    """Cross-section scale (0..1) of an ellipsoid spanning ``bottom..top`` at height ``z``.

    Radii of an axial section through an ellipsoid shrink as ``sqrt(1 - t^2)``, which makes
    structures appear and vanish smoothly between neighbouring slices.
    """
    half = (top - bottom) / 2.0
    t = (z - (top + bottom) / 2.0) / half
    return math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0


def smoothstep(edge0: float, edge1: float, x: float | np.ndarray) -> float | np.ndarray:
    """Hermite interpolation from 0 (at ``edge0``) to 1 (at ``edge1``)."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    result = t * t * (3.0 - 2.0 * t)
    return float(result) if np.ndim(result) == 0 else result


def blur121(image: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1]/4 smoothing (edges kept), a cheap partial-volume effect."""
    out = image.astype(np.float32, copy=True)
    for _ in range(passes):
        tmp = out.copy()
        tmp[1:-1, :] = 0.25 * (out[:-2, :] + out[2:, :]) + 0.5 * out[1:-1, :]
        out[:, 1:-1] = 0.25 * (tmp[:, :-2] + tmp[:, 2:]) + 0.5 * tmp[:, 1:-1]
        out[:, 0], out[:, -1] = tmp[:, 0], tmp[:, -1]
    return out


def box_blur(image: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Moving average of width ``2*radius+1`` along ``axis`` via cumulative sums."""
    if radius <= 0:
        return image.astype(np.float32, copy=True)
    moved = np.moveaxis(image.astype(np.float32), axis, 0)
    padded = np.concatenate([np.repeat(moved[:1], radius + 1, 0), moved, np.repeat(moved[-1:], radius, 0)])
    cs = np.cumsum(padded, axis=0, dtype=np.float64)
    width = 2 * radius + 1
    result = (cs[width:] - cs[:-width]) / width
    return np.moveaxis(result.astype(np.float32), 0, axis)
