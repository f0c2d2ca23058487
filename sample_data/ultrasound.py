"""Ultrasound cine: a phased-array sector through a beating heart, rendered as RGB.

Each frame is a fan-shaped B-mode image with depth-dependent speckle, an anechoic
chamber whose size follows the cardiac cycle, a bright myocardial wall, a depth scale
and a green ECG trace with a cursor at the current frame, as on a cardiac scanner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .shapes import box_blur


@dataclass(frozen=True)
class SectorGeometry:
    """Position of the fan in the frame, in pixels, and its opening half-angle (radians)."""

    rows: int
    columns: int
    apex_row: int
    depth_px: int
    half_angle: float = math.radians(38.0)

    @property
    def apex_column(self) -> float:
        return (self.columns - 1) / 2.0


def sector_geometry(rows: int, columns: int) -> SectorGeometry:
    """A fan filling the frame above a strip left for the ECG trace."""
    apex = max(rows // 24, 2)
    depth = min(int(rows * 0.78), int(columns / (2 * math.sin(math.radians(38.0))) - 2))
    return SectorGeometry(rows, columns, apex, max(depth - apex, 8))


def _polar(geo: SectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Normalised depth (0 apex .. 1 far field) and beam angle of every pixel."""
    yy = (np.arange(geo.rows, dtype=np.float32) - geo.apex_row)[:, None]
    xx = (np.arange(geo.columns, dtype=np.float32) - geo.apex_column)[None, :]
    radius = np.sqrt(xx * xx + yy * yy) / geo.depth_px
    angle = np.arctan2(xx, np.maximum(yy, 1e-3))
    return radius, angle


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Rayleigh speckle with cells elongated laterally (as the beam is wider than a pulse)."""
    re = box_blur(rng.standard_normal(shape, dtype=np.float32), 2, 1)
    im = box_blur(rng.standard_normal(shape, dtype=np.float32), 2, 1)
    amp = np.sqrt(re * re + im * im)
    return amp / float(amp.mean())


def _ecg(phase: np.ndarray) -> np.ndarray:
    """One PQRST complex per unit of ``phase``, as a sum of Gaussian waves (mV-ish)."""
    p = np.mod(phase, 1.0)
    waves = ((0.12, 0.15, 0.025), (-0.10, 0.30, 0.010), (1.0, 0.33, 0.012),
             (-0.20, 0.36, 0.012), (0.28, 0.60, 0.05))
    return sum(a * np.exp(-((p - mu) ** 2) / (2 * sd * sd)) for a, mu, sd in waves)


def _overlay(frame: np.ndarray, geo: SectorGeometry, index: int, frames: int) -> None:
    """Depth ticks (white), ECG trace (green) and its cursor (yellow), in place."""
    tick_every = max(geo.depth_px // 10, 2)
    for depth in range(0, geo.depth_px + 1, tick_every):
        row = min(geo.apex_row + depth, geo.rows - 1)
        frame[row, geo.columns - 8: geo.columns - 3] = (220, 220, 220)
    top = geo.apex_row + geo.depth_px + 4
    height = geo.rows - top - 2
    if height < 6:
        return
    cols = np.arange(geo.columns)
    phase = cols / geo.columns * 2.0  # two beats across the strip
    trace = top + height * 0.7 - _ecg(phase) * height * 0.55
    rows_px = np.clip(np.rint(trace).astype(int), top, geo.rows - 1)
    frame[rows_px, cols] = (40, 230, 60)
    cursor = int(index / frames * (geo.columns - 1))
    frame[top:geo.rows - 1, cursor] = (240, 220, 40)


def echo_frames(frames: int, rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """``(frames, rows, columns, 3)`` uint8 RGB cine loop of one cardiac cycle."""
    geo = sector_geometry(rows, columns)
    radius, angle = _polar(geo)
    inside = (radius <= 1.0) & (np.abs(angle) <= geo.half_angle)
    tissue = _speckle(rng, (rows, columns))
    gain = (0.55 + 0.35 * radius) * np.exp(-0.6 * radius)  # attenuation with partial TGC
    x = radius * np.sin(angle)
    y = radius * np.cos(angle)
    out = np.zeros((frames, rows, columns, 3), dtype=np.uint8)
    for f in range(frames):
        beat = 0.5 - 0.5 * math.cos(2 * math.pi * f / frames)  # 0 end-diastole .. 1 systole
        scale = 1.0 - 0.18 * beat
        r2 = ((x - 0.02) / (0.20 * scale)) ** 2 + ((y - 0.55) / (0.28 * scale)) ** 2
        echo = np.where(r2 < 1.0, 0.08, np.where(r2 < 1.6 + 0.5 * beat, 1.4, 0.55))
        echo = np.where((np.abs(radius - 0.9) < 0.012) & (np.abs(angle) < 0.45), 1.8, echo)  # pericardium
        shift = np.roll(tissue, int(round(3 * beat)), axis=0)
        fresh = _speckle(rng, (rows, columns))
        value = echo * (0.75 * shift + 0.25 * fresh) * gain * 150.0
        grey = np.where(inside, np.clip(value, 0, 255), 0).astype(np.uint8)
        out[f] = grey[:, :, None]
        _overlay(out[f], geo, f, frames)
    return out
