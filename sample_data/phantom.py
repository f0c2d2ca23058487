"""CT phantom: an anatomy-like chest/abdomen in Hounsfield units, vectorised with numpy.

Coordinates follow the DICOM patient system (PS3.3 C.7.6.2.1.1, LPS): ``x`` grows to
the patient's left, ``y`` to posterior, ``z`` to head. Images use the usual axial
orientation (1\\0\\0\\0\\1\\0): columns along +x, rows along +y.

The anatomy spans ``z`` from 0 mm (lung apex) down to :data:`ANATOMY_LENGTH` below it.
Longer series are folded back and forth over that range (a triangle wave), so any
number of slices varies smoothly and never runs out of anatomy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .shapes import blur121, ellipsoid_scale, grid_axes, paint_ellipse, paint_ring, smoothstep

ANATOMY_LENGTH = 330.0
AIR, LUNG, FAT, SOFT, BONE, CORTEX = -1000.0, -830.0, -95.0, 45.0, 320.0, 850.0
STORED_OFFSET = 1024  # stored value = HU + 1024 (RescaleIntercept -1024, PS3.3 C.11.1.1.2)
PADDING = -2000  # stored value outside the reconstruction circle (Pixel Padding Value)

Axes = tuple[np.ndarray, np.ndarray]


def anatomy_z(z: float) -> float:
    """Fold an arbitrary table position (mm, head positive) into ``[-ANATOMY_LENGTH, 0]``."""
    period = 2.0 * ANATOMY_LENGTH
    phase = (-z) % period
    return -(phase if phase <= ANATOMY_LENGTH else period - phase)


def _body(img: np.ndarray, ax: Axes, z: float) -> tuple[float, float]:
    """Couch, fat envelope and muscle wall; returns the inner (muscle) radii."""
    rx = 158.0 + 10.0 * math.sin(z / 70.0 + 0.6) + 12.0 * smoothstep(-60.0, 0.0, z)
    ry = 112.0 + 8.0 * math.sin(z / 95.0 + 1.3)
    couch_y = 6.0 + ry + 6.0  # curved carbon-fibre couch cradling the back
    paint_ring(img, ax, (0.0, couch_y - 420.0), (300.0, 428.0), 8.0, (-120.0, AIR))
    paint_ellipse(img, ax, (0.0, 6.0), (rx, ry), FAT)
    inner = (rx - 16.0 - 4.0 * math.sin(z / 40.0), ry - 13.0)
    paint_ellipse(img, ax, (0.0, 8.0), inner, SOFT)
    if z < -190.0:  # intra-abdominal fat around the viscera
        paint_ellipse(img, ax, (0.0, 0.0), (inner[0] - 22.0, inner[1] - 18.0), FAT + 15.0)
    return inner


def _lungs(img: np.ndarray, ax: Axes, z: float) -> None:
    """Two lungs with vessels and main bronchi."""
    for side, (cx, top, bottom) in ((-1, (-80.0, 5.0, -245.0)), (1, (80.0, 0.0, -235.0))):
        s = ellipsoid_scale(z, top, bottom)
        if s <= 0.0:
            continue
        drop = 28.0 * smoothstep(-150.0, -240.0, z)  # diaphragm domes push lungs back
        paint_ellipse(img, ax, (cx, -4.0 + drop), (60.0 * s + 4.0, 82.0 * s), LUNG)
        for k in range(14):  # vessel tree: tubes drifting with z
            ang = 2.399963 * k + side * 0.7 + z / (55.0 + 4.0 * k)
            dist = (12.0 + 4.0 * k) * s
            centre = (cx + dist * math.cos(ang) * 0.9, -4.0 + drop + dist * math.sin(ang) * 1.2)
            radius = (4.5 - 0.22 * k) * max(s, 0.4)
            paint_ellipse(img, ax, centre, (radius, radius * 0.9), 30.0, below=-600.0)
    if -110.0 < z < -15.0:  # trachea, then the two main bronchi
        spread = max(0.0, (-75.0 - z) * 0.45)
        for dx in {-spread, spread}:
            paint_ring(img, ax, (dx + 3.0, -22.0 + 0.2 * spread), (11.0, 9.5), 2.0, (40.0, AIR))


def _mediastinum(img: np.ndarray, ax: Axes, z: float) -> None:
    """Heart with contrast-filled chambers, great vessels and oesophagus (arterial phase)."""
    s = ellipsoid_scale(z, -70.0, -195.0)
    if s > 0.0:
        paint_ellipse(img, ax, (22.0, -38.0), (70.0 * s, 56.0 * s), -90.0, angle=0.5)
        paint_ellipse(img, ax, (22.0, -38.0), (62.0 * s, 48.0 * s), 48.0, angle=0.5)
        paint_ellipse(img, ax, (38.0, -30.0), (27.0 * s, 21.0 * s), 290.0, angle=0.5)
        paint_ellipse(img, ax, (0.0, -55.0), (24.0 * s, 16.0 * s), 190.0, angle=0.4)
    for (cx, cy, r, top, bottom, hu) in (
        (8.0, -32.0, 15.0, -35.0, -110.0, 300.0),   # ascending aorta
        (-24.0, -28.0, 10.0, -15.0, -115.0, 160.0),  # superior vena cava
        (32.0, -44.0, 13.0, -70.0, -105.0, 220.0),  # pulmonary trunk
        (-22.0, 30.0, 11.0, -185.0, -400.0, 140.0),  # inferior vena cava
    ):
        sc = ellipsoid_scale(z, top, bottom)
        if sc > 0.0:
            paint_ellipse(img, ax, (cx, cy), (r * max(sc, 0.6), r * max(sc, 0.6)), hu)
    ao_x = 20.0 - 14.0 * smoothstep(-180.0, -260.0, z)
    paint_ellipse(img, ax, (ao_x, 36.0), (12.0, 12.0), 280.0)  # descending aorta
    if z > -220.0:
        paint_ring(img, ax, (6.0, 24.0), (7.0, 6.0), 4.0, (35.0, AIR))  # oesophagus


def _abdomen(img: np.ndarray, ax: Axes, z: float) -> None:
    """Liver, spleen, stomach with an air-fluid level, pancreas, kidneys and bowel."""
    s = ellipsoid_scale(z, -150.0, -315.0)
    if s > 0.0:
        paint_ellipse(img, ax, (-62.0, 2.0), (98.0 * s, 82.0 * s), 105.0, angle=-0.2)
        for k in range(4):
            paint_ellipse(img, ax, (-62.0 + 30.0 * math.cos(k + z / 30.0), 20.0 * math.sin(k * 2.1)),
                          (5.0 * s, 5.0 * s), 160.0)
    s = ellipsoid_scale(z, -165.0, -265.0)
    if s > 0.0:
        paint_ellipse(img, ax, (98.0, 38.0), (32.0 * s, 52.0 * s), 100.0, angle=0.6)
    s = ellipsoid_scale(z, -160.0, -255.0)
    if s > 0.0:
        paint_ring(img, ax, (52.0, -40.0), (52.0 * s, 36.0 * s), 4.0, (55.0, 12.0))
        paint_ellipse(img, ax, (52.0, -40.0), (48.0 * s, 32.0 * s), AIR, y_max=-52.0)
    s = ellipsoid_scale(z, -215.0, -255.0)
    if s > 0.0:
        paint_ellipse(img, ax, (18.0, 8.0), (60.0 * s, 13.0 * s), 95.0, angle=-0.3)
    s = ellipsoid_scale(z, -220.0, -325.0)
    for side in (-1.0, 1.0):
        if s > 0.0:
            centre, ang = (side * 72.0, 52.0), side * 0.35
            paint_ellipse(img, ax, centre, (30.0 * s, 40.0 * s), 185.0, angle=ang)
            paint_ellipse(img, ax, (side * 62.0, 50.0), (9.0 * s, 18.0 * s), -70.0, angle=ang)
    if z < -255.0:
        for k in range(7):
            cx = -70.0 + 24.0 * k + 6.0 * math.sin(z / 20.0 + k)
            cy = -45.0 + 18.0 * math.cos(z / 25.0 + 1.7 * k)
            paint_ring(img, ax, (cx, cy), (14.0, 12.0), 3.0, (40.0, AIR if k % 3 == 0 else 15.0))


def _spine(img: np.ndarray, ax: Axes, z: float) -> None:
    """Vertebra with discs blended by partial volume, canal and posterior elements."""
    phase = (-z) % 27.0
    bone = smoothstep(0.0, 2.0, phase) * (1.0 - smoothstep(22.0, 24.5, phase))
    body = 75.0 + bone * (BONE - 75.0)
    rim = 75.0 + bone * (CORTEX - 75.0)
    paint_ring(img, ax, (0.0, 64.0), (18.0, 16.0), 2.5, (rim, body))
    paint_ellipse(img, ax, (0.0, 91.0), (11.0, 10.0), CORTEX * (0.4 + 0.6 * bone))
    paint_ellipse(img, ax, (0.0, 89.0), (7.5, 7.0), 15.0)
    paint_ellipse(img, ax, (0.0, 110.0), (5.0, 13.0), 700.0 * (0.5 + 0.5 * bone))
    for side in (-1.0, 1.0):
        paint_ellipse(img, ax, (side * 24.0, 92.0), (12.0, 4.5), 650.0 * bone + 45.0, angle=side * 0.2)


def _thoracic_cage(img: np.ndarray, ax: Axes, z: float, inner: tuple[float, float]) -> None:
    """Ribs sliding around the wall with ``z``, sternum, scapulae and iliac wings."""
    s = smoothstep(-270.0, -215.0, z) * (1.0 - smoothstep(-15.0, 5.0, z))
    if s > 0.0:
        for k in range(11):
            theta = 2.0 * math.pi * (k / 11.0) + z / 38.0
            if abs(math.sin(theta) - 1.0) < 0.08 or abs(math.sin(theta) + 1.0) < 0.05:
                continue  # spine and sternum gaps
            cx, cy = (inner[0] - 7.0) * math.cos(theta), 8.0 + (inner[1] - 7.0) * math.sin(theta)
            paint_ring(img, ax, (cx, cy), (7.0 * s + 1.0, 4.5 * s + 1.0), 1.6, (760.0, 280.0),
                       angle=theta + math.pi / 2)
    s = ellipsoid_scale(z, -15.0, -185.0)
    if s > 0.0:
        paint_ring(img, ax, (0.0, 8.0 - inner[1] + 8.0), (15.0 * s, 6.5), 1.8, (650.0, 260.0))
    s = ellipsoid_scale(z, 10.0, -125.0)
    for side in (-1.0, 1.0):
        if s > 0.0:
            paint_ellipse(img, ax, (side * 105.0, 78.0), (42.0 * s, 5.0), 620.0, angle=-side * 0.5)
    s = ellipsoid_scale(z, -285.0, -400.0)
    for side in (-1.0, 1.0):
        if s > 0.0:
            paint_ring(img, ax, (side * 88.0, 45.0), (52.0 * s, 11.0), 2.5, (780.0, 280.0),
                       angle=-side * 0.95)


def ct_slice_hu(z: float, rows: int = 512, columns: int = 512, spacing: float = 0.78125) -> np.ndarray:
    """Noise-free HU image (float32, read-only) of the phantom at anatomy height ``z``.

    ``z`` should already be folded with :func:`anatomy_z`. About 10 ms at 512x512; callers
    generating long series cache the result per height.
    """
    ax = grid_axes(rows, columns, spacing)
    img = np.full((rows, columns), AIR, dtype=np.float32)
    inner = _body(img, ax, z)
    _lungs(img, ax, z)
    _abdomen(img, ax, z)
    _mediastinum(img, ax, z)
    _thoracic_cage(img, ax, z, inner)
    _spine(img, ax, z)
    img = blur121(img, passes=1 if spacing >= 1.5 else 2)
    img.setflags(write=False)
    return img


@lru_cache(maxsize=8)
def fov_mask(rows: int, columns: int) -> np.ndarray:
    """True outside the circular reconstruction field (the corners of a CT image)."""
    yy = (np.arange(rows) - (rows - 1) / 2.0)[:, None] / (rows / 2.0)
    xx = (np.arange(columns) - (columns - 1) / 2.0)[None, :] / (columns / 2.0)
    mask = yy * yy + xx * xx > 1.0
    mask.setflags(write=False)
    return mask


class NoiseBank:
    """Correlated CT-like noise (int16), sampled per slice as a window at a seeded offset.

    Generating fresh noise for every slice is the main cost of a long series; a bank
    ``pad`` pixels larger than the image gives ``pad**2`` distinct windows for one draw.
    """

    def __init__(self, rng: np.random.Generator, rows: int, columns: int, sigma: float, pad: int = 48):
        white = rng.standard_normal((rows + pad, columns + pad), dtype=np.float32)
        smooth = blur121(white)
        scale = sigma / max(float(smooth.std()), 1e-6)
        self.bank = np.rint(smooth * scale).astype(np.int16)
        self.rows, self.columns, self.pad = rows, columns, pad

    def window(self, rng: np.random.Generator) -> np.ndarray:
        """A ``rows x columns`` view of the bank at a random offset drawn from ``rng``."""
        dy, dx = (int(v) for v in rng.integers(0, self.pad, size=2))
        return self.bank[dy:dy + self.rows, dx:dx + self.columns]


def ct_base_stored(hu: np.ndarray) -> np.ndarray:
    """Noise-free stored values (int16, HU + 1024) of a HU image."""
    stored = np.rint(hu).astype(np.int16)
    stored += STORED_OFFSET
    return stored


def ct_stored_pixels(base: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    """A new stored int16 image: ``base`` plus noise, padding outside the field of view."""
    stored = base.copy() if noise is None else base + noise
    stored[fov_mask(*stored.shape)] = PADDING
    return stored
