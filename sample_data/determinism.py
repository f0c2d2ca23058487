"""Seed handling: every UID, date, time and random number derives from ``(seed, labels)``.

Nothing here reads the wall clock or an unseeded random source, so the same seed and
labels always give the same values (and therefore byte-identical files).
"""

from __future__ import annotations

import datetime as _dt
import zlib

import numpy as np
from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

#: Root for generated UIDs (PS3.5 9.1): pydicom's registered root plus the hash suffix
#: that :func:`pydicom.uid.generate_uid` appends (SHA-512 of the entropy sources).
UID_PREFIX = PYDICOM_ROOT_UID

#: Base date of every generated study; a seeded offset of up to a year is added.
BASE_DATE = _dt.date(2024, 1, 8)


def _label_words(labels: tuple[object, ...]) -> list[int]:
    """Map labels to 32-bit words with CRC-32 (stable across processes, unlike ``hash``)."""
    return [zlib.crc32(str(label).encode("utf-8")) for label in labels]


def rng_for(seed: int, *labels: object) -> np.random.Generator:
    """A numpy Generator seeded from ``seed`` and a stable digest of ``labels``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *_label_words(labels)]))


def uid_for(seed: int, *labels: object) -> UID:
    """A deterministic UID (PS3.5 9.1) from ``seed`` and ``labels`` via ``generate_uid``."""
    sources = ["sample_data", f"seed={int(seed)}", *(str(label) for label in labels)]
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["|".join(sources)])


def date_for(seed: int, *labels: object, span_days: int = 365) -> _dt.date:
    """A date within ``span_days`` after :data:`BASE_DATE`, chosen by the seeded rng."""
    offset = int(rng_for(seed, "date", *labels).integers(0, span_days))
    return BASE_DATE + _dt.timedelta(days=offset)


def time_for(seed: int, *labels: object, first_hour: int = 7, last_hour: int = 18) -> _dt.time:
    """A time of day (whole seconds) within working hours, chosen by the seeded rng."""
    rng = rng_for(seed, "time", *labels)
    seconds = int(rng.integers(first_hour * 3600, last_hour * 3600))
    return _dt.time(seconds // 3600, (seconds // 60) % 60, seconds % 60)


def da(value: _dt.date) -> str:
    """Format a date as DICOM DA (PS3.5 6.2: ``YYYYMMDD``)."""
    return value.strftime("%Y%m%d")


def tm(value: _dt.time | _dt.datetime, fraction: bool = False) -> str:
    """Format a time as DICOM TM (PS3.5 6.2: ``HHMMSS`` or ``HHMMSS.FFFFFF``)."""
    text = value.strftime("%H%M%S")
    return f"{text}.{value.microsecond:06d}" if fraction else text


def shift_time(day: _dt.date, start: _dt.time, seconds: float) -> _dt.datetime:
    """``day``/``start`` plus ``seconds`` (may roll over to the next day)."""
    return _dt.datetime.combine(day, start) + _dt.timedelta(seconds=seconds)


def age_string(birth_date: str, on: _dt.date) -> str:
    """Patient's age on ``on`` as DICOM AS (PS3.5 6.2: ``nnnY``)."""
    born = _dt.datetime.strptime(birth_date, "%Y%m%d").date()
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"
