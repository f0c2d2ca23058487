"""Projection radiograph: a PA chest on a computed-radiography plate.

The image is built as an attenuation map (bone and soft tissue add, lungs remove) in
normalised coordinates ``u`` (-1 left edge .. 1 right edge of the image) and ``v`` (0 top
.. 1 bottom), then blurred, scaled to 12 bits and given quantum noise. In a PA view the
patient's left is on the image's right (PS3.3 C.7.6.1.1.1 Patient Orientation ``L\\F``).
"""

from __future__ import annotations

import numpy as np

from .shapes import box_blur, smoothstep

MAX_STORED = 4095

# 5x7 bitmap of the lead side marker "R" (patient's right, shown on the image's left).
_MARKER_R = (
    "11110", "10001", "10001", "11110", "10100", "10010", "10001",
)


def _coords(rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``u`` (columns) and ``v`` (rows) as broadcastable float32 arrays."""
    u = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    v = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    return u, v


def _soft_ellipse(u: np.ndarray, v: np.ndarray, centre: tuple[float, float],
                  radii: tuple[float, float]) -> np.ndarray:
    """Path length through an ellipsoid: ``sqrt(1 - r^2)`` inside, 0 outside."""
    r2 = ((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, None))


def _body_and_lungs(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft-tissue thickness minus aerated lung, plus mediastinum, heart and liver."""
    half_width = 0.36 + 0.5 * smoothstep(0.04, 0.2, v) - 0.06 * smoothstep(0.75, 1.0, v)
    density = 0.55 * np.sqrt(np.clip(1.0 - (u / half_width) ** 2, 0.0, None))
    density = density + 0.12 * smoothstep(0.75, 0.95, v) * (np.abs(u) < half_width)
    heart = _soft_ellipse(u, v, (0.10, 0.63), (0.30, 0.17))
    mediastinum = _soft_ellipse(u, v, (0.0, 0.35), (0.10, 0.30))
    shadow = 1.0 - 0.85 * smoothstep(0.0, 0.45, heart + mediastinum)
    for cx in (-0.36, 0.38):
        lung = _soft_ellipse(u, v, (cx, 0.47), (0.27, 0.36))
        dome = smoothstep(0.70, 0.80, v + 0.05 * np.abs(u - cx) / 0.27)
        density = density - 0.30 * lung * (1.0 - dome) * shadow
    density = density + 0.16 * heart + 0.10 * mediastinum
    density = density + 0.10 * _soft_ellipse(u, v, (-0.30, 0.88), (0.55, 0.16))  # liver
    return density


def _bones(u: np.ndarray, v: np.ndarray, rows: int) -> np.ndarray:
    """Spine with vertebral bands, clavicles and posterior/anterior ribs."""
    bone = 0.07 * (np.abs(u) < 0.055) * (0.7 + 0.3 * np.cos(v * 2 * np.pi * 17.0) ** 2)
    for side in (-1.0, 1.0):
        curve = 0.17 - 0.10 * (side * u - 0.1) + 0.16 * (side * u - 0.35) ** 2
        on_side = (side * u > 0.06) & (side * u < 0.62)
        bone = bone + 0.12 * ((np.abs(v - curve) < 0.013) & on_side)
    for k in range(10):
        v0 = 0.19 + 0.056 * k
        band = slice(max(int((v0 - 0.05) * rows), 0), min(int((v0 + 0.40) * rows), rows))
        vv = v[band]
        for side in (-1.0, 1.0):
            x = side * u - 0.06
            ok = (x > 0.0) & (x < 0.76 - 0.015 * k)
            post = v0 - 0.12 * x + 0.45 * x * x  # posterior rib: up, then sweeping down
            width = 0.010 + 0.0015 * k
            dist = np.abs(vv - post)
            rib = np.where(dist < width, 0.05 + 0.07 * smoothstep(0.5 * width, width, dist), 0.0)
            bone[band] = bone[band] + rib * ok
            if k < 7:  # anterior rib: from the lateral end down towards the sternum
                ant = v0 + 0.17 + 0.30 * (0.70 - x)
                bone[band] = bone[band] + 0.03 * ((np.abs(vv - ant) < 0.011) & ok & (x > 0.22))
    return bone


def _vessels(density: np.ndarray, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> None:
    """Lung markings: branches radiating from each hilum, thinning towards the periphery."""
    rows, columns = density.shape
    for side in (-1.0, 1.0):
        for _ in range(30):
            angle = rng.uniform(-1.2, 1.2) + (0.0 if side > 0 else np.pi)
            hilum = np.array([side * 0.16, 0.47]) + rng.uniform(0.01, 0.06) * np.array(
                [np.cos(angle), np.sin(angle)])
            length = rng.uniform(0.10, 0.28)
            end = hilum + length * np.array([np.cos(angle), 1.3 * np.sin(angle)])
            r0, r1 = sorted(int(np.clip(p * rows, 0, rows)) for p in (hilum[1], end[1]))
            c0, c1 = sorted(int(np.clip((p + 1) / 2 * columns, 0, columns)) for p in (hilum[0], end[0]))
            r0, r1, c0, c1 = max(r0 - 20, 0), r1 + 20, max(c0 - 20, 0), c1 + 20
            uu, vv = u[:, c0:c1], v[r0:r1]
            d = end - hilum
            t = np.clip(((uu - hilum[0]) * d[0] + (vv - hilum[1]) * d[1]) / float(d @ d), 0.0, 1.0)
            dist2 = (uu - hilum[0] - t * d[0]) ** 2 + (vv - hilum[1] - t * d[1]) ** 2
            width = 0.006 * (1.0 - 0.7 * t)
            density[r0:r1, c0:c1] += 0.03 * (1.0 - t) * np.exp(-dist2 / (width * width))


def _marker(image: np.ndarray, value: int) -> None:
    """Burn the lead "R" marker into the upper-left corner (patient's right)."""
    scale = max(image.shape[0] // 140, 2)
    top, left = image.shape[0] // 20, image.shape[1] // 12
    for r, line in enumerate(_MARKER_R):
        for c, bit in enumerate(line):
            if bit == "1":
                image[top + r * scale: top + (r + 1) * scale, left + c * scale: left + (c + 1) * scale] = value


def chest_radiograph(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """Stored uint16 (12-bit) MONOCHROME1 PA chest: low values are white on display."""
    u, v = _coords(rows, columns)
    density = _body_and_lungs(u, v) + _bones(u, v, rows)
    _vessels(density, u, v, rng)
    blur = max(rows // 600, 1)
    density = box_blur(box_blur(density, blur, 0), blur, 1)
    display = 250.0 + 3300.0 * np.clip(density, 0.0, 1.0)  # brighter = more attenuation
    display += rng.normal(0.0, 18.0, display.shape).astype(np.float32)
    collimated = (np.abs(u) > 0.96) | (v < 0.015) | (v > 0.985)
    display = np.where(collimated, 3900.0, display)  # shuttered, unexposed plate
    stored = np.clip(np.rint(MAX_STORED - display), 0, MAX_STORED).astype(np.uint16)
    _marker(stored, 300)
    return stored
