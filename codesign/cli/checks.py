"""Checks of the paths a command will write, made before any work starts.

A command that computes for minutes and then finds it cannot write its output wastes the user's
time and, worse, may leave half of its output behind. Every ``--out``-like option goes through
these two functions first; they create nothing, so a refused command leaves the disk as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from workloads.errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (``.`` for a relative path)."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_out_dir(field: str, path: str | Path) -> Path:
    """``path`` is a folder, or can be created as one: it is not a file, and the nearest existing
    folder above it is writable. Creates nothing."""
    path = Path(path)
    if str(path) == "":
        raise ConfigError(field, str(path), "a folder path")
    if path.exists() and not path.is_dir():
        raise ConfigError(field, str(path), "a folder (this is a file)")
    base = _nearest_existing(path if path.is_absolute() else Path.cwd() / path)
    if not base.is_dir():
        raise ConfigError(field, str(path), f"a folder that can be created ({base} is not a folder)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(field, str(path), f"a folder that can be written ({base} is not writable)")
    return path


def check_out_file(field: str, path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` names a file (with one of ``suffixes``) in an existing, writable folder, and is
    not itself a folder. Creates nothing."""
    path = Path(path)
    text = str(path)
    if suffixes and not text.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ConfigError(field, text, "a file ending in " + " or ".join(suffixes))
    if path.is_dir():
        raise ConfigError(field, text, "a file (this is a folder)")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(field, text, "a file that can be overwritten (this one is read-only)")
    parent = (path if path.is_absolute() else Path.cwd() / path).parent
    if not parent.is_dir():
        raise ConfigError(field, text, f"a file in an existing folder ({path.parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(field, text, f"a file in a writable folder ({path.parent} is not writable)")
    return path


def check_in_file(field: str, path: str | Path) -> Path:
    """``path`` is an existing, readable file (not a folder)."""
    path = Path(path)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(field, str(path), "an existing, readable file")
    return path


# assumption: 1000x the default of 4 calibration prompts; the prompts' text features alone take
# prompts x caption tokens x channels x 4 bytes (8 GiB at 4,096 prompts of OpenSora's 120 x 4096), and
# a count far beyond it failed deep inside torch's allocator with a traceback.
MAX_PROMPTS = 4096
# assumption: the same bound for evaluation samples (each one is a full sampling run of the model)
MAX_SAMPLES = 4096


def check_count(field: str, value: object, limit: int) -> int:
    """``value`` is a positive integer of at most ``limit`` (a count of prompts, samples, ...)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ConfigError(field, value, f"a positive integer of at most {limit:,}")
    return value


DEVICES = ("cpu", "cuda")


def check_device(value: object) -> str:
    """``--device``: cpu, or cuda where torch sees a CUDA device (checked before any model is built)."""
    if value not in DEVICES:
        raise ConfigError("device", value, " or ".join(DEVICES))
    if value == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "cpu (no CUDA device here)")
    return str(value)
