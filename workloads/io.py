"""Atomic file writes: a reader (or a run killed half-way) sees the old file or the complete new one,
never a torn one.

Every writer of the project goes through :func:`atomic_path`: write to a hidden temporary name beside
the target (``.NAME.XXXXXXXX.tmp``, unique per writer, so concurrent writers never share one), fsync
it, then ``os.replace`` it over the target (atomic on POSIX). On an error the temporary file is
removed and the target is left as it was. Lives here, in the package every other one may import,
because it needs nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def temp_path(path: str | Path) -> Path:
    """The hidden temporary name beside ``path`` that a write goes to first."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that takes a file name (safetensors, torch.save, Parquet,
    matplotlib: pass ``format=`` there, the name does not end in the target's suffix); when the block
    ends without an error the file is fsynced and renamed over ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` for writing, through :func:`atomic_path` (closed before the rename)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)
