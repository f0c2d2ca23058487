"""Files in the archive's incoming folder: objects on their way into the one ingest path.

Every door writes what it receives to a ``*.dcm`` file there first (DESIGN.md "One
ingest path"); :func:`pacs.recovery.sweep_orphans` removes what a crash left behind.
"""

from __future__ import annotations

import itertools
import os

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_numbers = itertools.count()


def create_spool_file(folder: str | os.PathLike[str]) -> tuple[int, str]:
    """Create a new, empty ``*.dcm`` file in ``folder``, open for writing (mode 0600):
    its descriptor and path.

    Named from the process id and a counter: :func:`tempfile.mkstemp`, which draws a random
    name, cost twice the interpreter time for every received instance. A name left by an
    earlier process with the same id is skipped (``O_EXCL``).
    """
    prefix = os.path.join(os.fspath(folder), f"{os.getpid()}-")
    while True:
        path = f"{prefix}{next(_numbers)}.dcm"
        try:
            return os.open(path, _FLAGS, 0o600), path
        except FileExistsError:
            continue
