"""MR phantom: a T1-weighted axial head with coil shading and Rician noise.

Axial slices in the DICOM patient system (PS3.3 C.7.6.2.1.1): columns along +x (patient
left), rows along +y (posterior); ``z`` in mm from the vertex (+70) to the skull base
(-50). Intensities are arbitrary MR units stored in 12 bits.
"""

from __future__ import annotations

import math

import numpy as np

from .shapes import blur121, ellipsoid_scale, grid_axes, paint_ellipse, paint_ring

HEAD_TOP, HEAD_BOTTOM = 75.0, -55.0
FAT, BONE, CSF, GREY, WHITE, AIR = 880.0, 60.0, 230.0, 520.0, 720.0, 0.0
MAX_STORED = 4095  # BitsStored 12

Axes = tuple[np.ndarray, np.ndarray]


def _head(img: np.ndarray, ax: Axes, z: float) -> float:
    """Scalp, skull, CSF rim and grey matter; returns the brain scale at ``z``."""
    s = ellipsoid_scale(z, HEAD_TOP + 20.0, HEAD_BOTTOM - 60.0)
    if s <= 0.0:
        return 0.0
    rx, ry = 74.0 * s, 94.0 * s
    paint_ellipse(img, ax, (0.0, 4.0), (rx, ry), FAT)
    paint_ellipse(img, ax, (0.0, 4.0), (rx - 5.0, ry - 5.0), 350.0)  # galea / muscle
    paint_ellipse(img, ax, (0.0, 4.0), (rx - 7.0, ry - 7.0), BONE)
    marrow = (rx - 9.5, ry - 9.5)
    paint_ellipse(img, ax, (0.0, 4.0), marrow, 600.0)  # diploe: fatty marrow
    paint_ellipse(img, ax, (0.0, 4.0), (rx - 12.0, ry - 12.0), BONE)
    brain = ellipsoid_scale(z, HEAD_TOP, HEAD_BOTTOM + 15.0)
    paint_ellipse(img, ax, (0.0, 4.0), (rx - 14.0, ry - 14.0), CSF if brain > 0 else 300.0)
    return brain


def _cerebrum(img: np.ndarray, ax: Axes, z: float, s: float) -> None:
    """Cortex with gyri, white matter, ventricles and the falx."""
    rx, ry = 56.0 * s, 76.0 * s
    paint_ellipse(img, ax, (0.0, 4.0), (rx, ry), GREY)
    for k in range(26):  # sulci: CSF clefts around the cortex
        theta = 2.0 * math.pi * k / 26.0 + 0.13 * math.sin(z / 9.0 + k)
        cx, cy = (rx - 3.0) * math.cos(theta), 4.0 + (ry - 3.0) * math.sin(theta)
        paint_ellipse(img, ax, (cx, cy), (1.6, 7.0 * s + 1.0), CSF, angle=theta + math.pi / 2)
    paint_ellipse(img, ax, (-21.0 * s, 4.0), (rx * 0.5, ry * 0.78), WHITE, angle=0.05)
    paint_ellipse(img, ax, (21.0 * s, 4.0), (rx * 0.5, ry * 0.78), WHITE, angle=-0.05)
    vent = ellipsoid_scale(z, 42.0, 2.0)
    if vent > 0.0:
        for side in (-1.0, 1.0):
            paint_ellipse(img, ax, (side * 7.0, -8.0), (5.0 * vent, 24.0 * vent), CSF, angle=-side * 0.25)
            paint_ellipse(img, ax, (side * 12.0, 30.0), (4.0 * vent, 10.0 * vent), CSF, angle=side * 0.5)
    deep = ellipsoid_scale(z, 25.0, -5.0)
    if deep > 0.0:  # thalami and basal ganglia (grey-matter nuclei)
        for side in (-1.0, 1.0):
            paint_ellipse(img, ax, (side * 13.0, 8.0), (8.0 * deep, 12.0 * deep), GREY + 60.0)
            paint_ellipse(img, ax, (side * 21.0, -12.0), (5.0 * deep, 13.0 * deep), GREY + 40.0, angle=side * 0.3)
    paint_ellipse(img, ax, (0.0, 4.0), (0.9, ry), CSF)  # interhemispheric fissure


def _skull_base(img: np.ndarray, ax: Axes, z: float) -> None:
    """Orbits, sinuses, cerebellum and brainstem in the lower slices."""
    s = ellipsoid_scale(z, -5.0, -40.0)
    for side in (-1.0, 1.0):
        if s > 0.0:
            paint_ellipse(img, ax, (side * 31.0, -72.0), (17.0 * s, 17.0 * s), FAT)
            paint_ring(img, ax, (side * 31.0, -74.0), (12.0 * s, 12.0 * s), 1.2, (420.0, 120.0))
    s = ellipsoid_scale(z, -18.0, -60.0)
    if s > 0.0:
        paint_ellipse(img, ax, (0.0, -66.0), (14.0 * s, 12.0 * s), AIR)  # ethmoid / sphenoid air
    s = ellipsoid_scale(z, -2.0, -55.0)
    if s > 0.0:
        paint_ellipse(img, ax, (0.0, 52.0), (50.0 * s, 28.0 * s), GREY + 30.0)
        for k in range(-5, 6):  # cerebellar folia
            paint_ellipse(img, ax, (k * 8.0 * s, 60.0), (0.9, 20.0 * s), CSF)
        paint_ellipse(img, ax, (0.0, 18.0), (13.0 * s + 2.0, 12.0 * s + 2.0), WHITE - 60.0)
        paint_ellipse(img, ax, (0.0, 33.0), (3.0, 2.5), CSF)  # fourth ventricle


def mr_slice(
    z: float,
    rng: np.random.Generator,
    rows: int = 256,
    columns: int = 256,
    spacing: float = 230.0 / 256.0,
    noise_sigma: float = 14.0,
) -> np.ndarray:
    """Stored uint16 (12-bit) T1-weighted head image at height ``z`` (mm)."""
    ax = grid_axes(rows, columns, spacing)
    img = np.zeros((rows, columns), dtype=np.float32)
    brain = _head(img, ax, z)
    if brain > 0.0:
        _cerebrum(img, ax, z, brain)
    _skull_base(img, ax, z)
    img = blur121(img, passes=1)
    ys, xs = ax
    coil = 1.0 + 0.25 * np.exp(-((ys[:, None] - 90.0) ** 2 + xs[None, :] ** 2) / (2 * 110.0**2))
    coil = coil * (1.0 - 0.06 * np.cos(xs[None, :] / 60.0))
    signal = img * coil.astype(np.float32)
    real = signal + rng.normal(0.0, noise_sigma, signal.shape).astype(np.float32)
    imag = rng.normal(0.0, noise_sigma, signal.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imag * imag)  # Rician noise of a magnitude image
    return np.clip(np.rint(magnitude), 0, MAX_STORED).astype(np.uint16)
