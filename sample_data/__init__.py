"""Deterministic generator of realistic synthetic studies, and a small committed set."""

from .charsets import INTERNATIONAL_KEYS, PatientInfo, international_patient
from .generator import (
    SUPPORTED_SYNTAXES,
    generate_cr,
    generate_ct_series,
    generate_mr_series,
    generate_sample_studies,
    generate_small_set,
    generate_tiny_series,
    generate_us_multiframe,
    write_dataset,
    write_series,
)

__all__ = [
    "INTERNATIONAL_KEYS",
    "PatientInfo",
    "SUPPORTED_SYNTAXES",
    "generate_cr",
    "generate_ct_series",
    "generate_mr_series",
    "generate_sample_studies",
    "generate_small_set",
    "generate_tiny_series",
    "generate_us_multiframe",
    "international_patient",
    "write_dataset",
    "write_series",
]
