"""Series builders: pixels from the phantoms, attributes from :mod:`sample_data.modalities`.

Also the transfer-syntax step: native syntaxes only relabel the dataset (Deflated is
applied by the writer, PS3.5 A.5), compressed ones encode the pixel data in place with a
pinned encoder plugin so that the bytes do not depend on which plugins are installed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    UID,
)

from .determinism import rng_for, uid_for
from .modalities import cr_instance, ct_instance, mr_instance, us_instance
from .modules import SeriesInfo, instance_uid
from .mr_phantom import mr_slice
from .phantom import NoiseBank, anatomy_z, ct_base_stored, ct_slice_hu, ct_stored_pixels
from .radiograph import chest_radiograph
from .ultrasound import echo_frames

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
#: Lossless encoders and the plugin used for each (pinned for reproducible bytes).
LOSSLESS_ENCODERS = {JPEG2000Lossless: "pylibjpeg", RLELossless: "pylibjpeg", JPEGLSLossless: "pyjpegls"}
SUPPORTED_SYNTAXES = NATIVE_SYNTAXES + tuple(LOSSLESS_ENCODERS)

CT_FOV_MM = 400.0
CT_CACHE_BYTES = 128 * 2**20


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Put ``ds`` (native pixel data) into ``transfer_syntax`` in place and return it."""
    uid = UID(transfer_syntax)
    if uid in NATIVE_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = uid
    elif uid in LOSSLESS_ENCODERS:
        ds.compress(uid, encoding_plugin=LOSSLESS_ENCODERS[uid], generate_instance_uid=False)
    else:
        names = ", ".join(s.name for s in SUPPORTED_SYNTAXES)
        raise ValueError(f"unsupported transfer syntax {uid} ({uid.name}); use one of: {names}")
    return ds


def lossless_copy(ds: Dataset, transfer_syntax: str, seed: int, series_number: int) -> Dataset:
    """A new instance, in a new series of the same study, with the same pixels re-encoded."""
    out = copy.deepcopy(ds)
    uid = UID(transfer_syntax)
    out.SeriesInstanceUID = uid_for(seed, ds.StudyInstanceUID, "series", series_number, uid)
    out.SeriesNumber = series_number
    out.SeriesDescription = f"{ds.SeriesDescription} ({_short_name(uid)})"[:64]
    out.SOPInstanceUID = uid_for(seed, out.SeriesInstanceUID, "instance", ds.InstanceNumber)
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return encode(out, uid)


def _short_name(uid: UID) -> str:
    return {JPEG2000Lossless: "J2K lossless", RLELossless: "RLE", JPEGLSLossless: "JPEG-LS lossless",
            DeflatedExplicitVRLittleEndian: "deflated"}.get(uid, uid.name)


class CtPixelSource:
    """Stored CT pixels per table position: phantom images cached per height, fresh noise.

    A long series folds back over the phantom's anatomy, so heights repeat; the cache is
    bounded to :data:`CT_CACHE_BYTES` and lives only as long as the series generator.
    """

    def __init__(self, rng: np.random.Generator, rows: int, columns: int, noise_sigma: float = 11.0):
        self.rows, self.columns = rows, columns
        self.spacing = CT_FOV_MM / max(rows, columns)
        self.rng = rng
        self.noise = NoiseBank(rng, rows, columns, noise_sigma)
        self.cache: dict[float, np.ndarray] = {}
        self.capacity = max(CT_CACHE_BYTES // (rows * columns * 2), 4)

    def pixels(self, z: float) -> np.ndarray:
        """Stored int16 pixels (HU + 1024) of the slice at table position ``z`` (mm)."""
        height = round(anatomy_z(z), 3)
        base = self.cache.get(height)
        if base is None:
            base = ct_base_stored(ct_slice_hu(height, self.rows, self.columns, self.spacing))
            if len(self.cache) < self.capacity:
                self.cache[height] = base
        return ct_stored_pixels(base, self.noise.window(self.rng))


def ct_series(
    series: SeriesInfo,
    seed: int,
    count: int,
    shape: tuple[int, int],
    slice_spacing: float,
    transfer_syntax: str = ExplicitVRLittleEndian,
    z_start: float = -10.0,
) -> Iterator[Dataset]:
    """``count`` contiguous axial CT slices from ``z_start`` towards the feet."""
    source = CtPixelSource(rng_for(seed, series.series_uid, "ct-pixels"), *shape)
    for index in range(count):
        z = z_start - index * slice_spacing
        ds = ct_instance(series, instance_uid(seed, series, index), index, z,
                         source.pixels(z), source.spacing, slice_spacing)
        yield encode(ds, transfer_syntax)


def mr_series(
    series: SeriesInfo,
    seed: int,
    count: int,
    shape: tuple[int, int] = (256, 256),
    thickness: float = 5.0,
    gap: float = 1.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    z_top: float | None = None,
) -> Iterator[Dataset]:
    """``count`` axial T1 head slices from ``z_top`` (default: near the vertex) downwards."""
    rng = rng_for(seed, series.series_uid, "mr-pixels")
    step = thickness + gap
    spacing = 230.0 / max(shape)
    if z_top is None:
        z_top = 62.0 if count * step < 120.0 else 70.0
    for index in range(count):
        z = z_top - index * step
        pixels = mr_slice(z, rng, shape[0], shape[1], spacing)
        ds = mr_instance(series, instance_uid(seed, series, index), index, z, pixels, spacing, thickness, gap)
        yield encode(ds, transfer_syntax)


def cr_image(
    series: SeriesInfo,
    seed: int,
    shape: tuple[int, int] = (2500, 2048),
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One PA chest radiograph; the plate is 430 mm tall whatever the matrix."""
    pixels = chest_radiograph(shape[0], shape[1], rng_for(seed, series.series_uid, "cr-pixels"))
    ds = cr_instance(series, instance_uid(seed, series, 0), pixels, 430.0 / shape[0])
    return encode(ds, transfer_syntax)


def us_cine(
    series: SeriesInfo,
    seed: int,
    frames: int = 24,
    shape: tuple[int, int] = (288, 384),
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One RGB cardiac cine loop of ``frames`` frames (16 cm field of view)."""
    pixels = echo_frames(frames, shape[0], shape[1], rng_for(seed, series.series_uid, "us-pixels"))
    ds = us_instance(series, instance_uid(seed, series, 0), pixels, 16.0)
    return encode(ds, transfer_syntax)
