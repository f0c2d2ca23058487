"""Time ingest's header parse: ``pacs.parse.parse_instance_reference`` (pydicom) vs
``pacs.parse.parse_instance`` (the single pass of ``pacs.fastparse``, falling back).

Usage: ``python bench/parse.py [--repeat N] [FILE ...]``. Without files it times a CT
slice and a tiny instance made by ``python -m sample_data OUT --set ct 1`` and
``--set tiny 1`` in a temporary folder. Each call opens the file and parses it, as
``pacs.ingest.ingest_file`` does; the best of five rounds is reported in ms per call,
with whether the fast path answered and whether both give the same ParsedInstance.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pacs import fastparse  # noqa: E402
from pacs.parse import ParsedInstance, parse_instance, parse_instance_reference  # noqa: E402

Parser = Callable[..., ParsedInstance]


def _time(path: Path, parser: Parser, repeat: int) -> float:
    """Best of five rounds, in ms per open-and-parse."""
    size = path.stat().st_size
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            with open(path, "rb") as fp:
                parser(fp, size)
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e3


def _parse_once(path: Path, parser: Parser) -> ParsedInstance:
    with open(path, "rb") as fp:
        return parser(fp, path.stat().st_size)


def _generated(out: Path) -> list[tuple[str, Path]]:
    from sample_data.__main__ import main as sample_main

    inputs = []
    for kind in ("ct", "tiny"):
        folder = out / kind
        sample_main([str(folder), "--set", kind, "1"])
        inputs.append((f"{kind} (sample_data --set {kind} 1)", next(folder.iterdir())))
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=500, help="calls per round (default 500)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="parse-bench-") as tmp:
        inputs = [(p.name, p) for p in args.files] or _generated(Path(tmp))
        print(f"{'input':<34} {'bytes':>8} {'reference ms':>13} {'fast ms':>8} {'speed-up':>8}  "
              "fast path  same")
        for name, path in inputs:
            before = fastparse.counts["fast"]
            fast_result = asdict(_parse_once(path, parse_instance))
            same = fast_result == asdict(_parse_once(path, parse_instance_reference))
            took_fast = fastparse.counts["fast"] > before
            reference = _time(path, parse_instance_reference, args.repeat)
            fast = _time(path, parse_instance, args.repeat)
            print(f"{name[:34]:<34} {os.path.getsize(path):>8} {reference:>13.3f} {fast:>8.3f} "
                  f"{reference / fast:>7.1f}x  {'yes' if took_fast else 'no':<9}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
