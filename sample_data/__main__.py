"""Command line: ``python -m sample_data OUT_DIR [--seed N] [--set demo|small|ct N|tiny N]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from .generator import (
    generate_ct_series,
    generate_sample_studies,
    generate_small_set,
    generate_tiny_series,
    write_series,
)


def _datasets(kind: str, count: int | None, seed: int) -> Iterator[Dataset]:
    """The datasets of the chosen set."""
    if kind == "demo":
        return generate_sample_studies(seed)
    if kind == "small":
        return generate_small_set(seed)
    if kind == "ct":
        return generate_ct_series(count or 40, seed=seed)
    return generate_tiny_series(count or 100, seed=seed)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sample_data", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write <SOPInstanceUID>.dcm files to")
    parser.add_argument("--seed", type=int, default=0, help="seed for UIDs, dates and pixels (default 0)")
    parser.add_argument("--set", dest="kind", nargs="+", default=["demo"], metavar="KIND",
                        help="demo (default), small, 'ct N' or 'tiny N'")
    args = parser.parse_args(argv)
    kind, rest = args.kind[0], args.kind[1:]
    if kind not in ("demo", "small", "ct", "tiny") or len(rest) > 1 or (rest and kind in ("demo", "small")):
        parser.error("--set takes demo, small, 'ct N' or 'tiny N'")
    if rest and not (rest[0].isdigit() and int(rest[0]) > 0):
        parser.error(f"--set {kind}: N must be a positive integer, got {rest[0]!r}")
    args.kind, args.count = kind, int(rest[0]) if rest else None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the chosen set into ``out_dir`` and report how many files were written."""
    args = _parse(argv)
    started = time.perf_counter()
    paths = write_series(_datasets(args.kind, args.count, args.seed), args.out_dir)
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files ({size / 1e6:.1f} MB) to {args.out_dir} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
