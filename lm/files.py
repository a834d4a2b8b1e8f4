"""Files that readers may open at any moment (checkpoints, metrics.json): written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``<name>.tmp`` beside ``path``, flush it to disk, then rename it over ``path``.

    A rename within one folder is atomic, so a reader (report.py, a resumed run) sees the previous
    file or the new one, never half of one, and a crash mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
