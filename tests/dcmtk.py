"""Locate dcmtk's command-line tools (pynetdicom installs Python apps with the same names)."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache

import pytest


@lru_cache(maxsize=None)
def dcmtk_tool(name: str) -> str | None:
    """Path of the dcmtk binary ``name``, or None when dcmtk is not installed."""
    candidates = [os.environ.get(f"DCMTK_{name.upper()}"), f"/usr/bin/{name}", shutil.which(name)]
    for path in candidates:
        if not path or not os.path.exists(path):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except OSError:
            continue
        if "dcmtk" in out.lower():
            return path
    return None


def needs_dcmtk(name: str):  # type: ignore[no-untyped-def]
    """Skip marker for tests that need the dcmtk tool ``name``."""
    # Under CI a missing dcmtk is a failure, not a skip.
    return pytest.mark.skipif(
        dcmtk_tool(name) is None and not os.environ.get("CI"), reason=f"dcmtk {name} not installed"
    )
