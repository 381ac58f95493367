"""The results store: a folder of small immutable Parquet part files, safe to kill at any moment.

Layout of a results folder ``DIR``::

    DIR/manifest.json            which spec(s) own the folder (content hashes), written atomically
    DIR/points/part-*.parquet    cost rows, one per design point (hardware point x recipe)
    DIR/quality/part-*.parquet   quality rows, one per (quality workload, recipe)
    DIR/quality/prep-*.pkl       calibration stats + float reference sample shared by the recipes
    DIR/.lock                    held (flock) while a sweep writes; the kernel drops it on SIGKILL
    DIR/quarantine/              unreadable parts, manifest or caches, moved aside (see below)

A store heals: a part, the manifest or a cache file that cannot be read (truncated by a failing
disk, overwritten by hand) is moved into ``quarantine/`` with a one-line warning naming it, and
reading goes on without it; the points it held are simply missing, so the next ``codesign sweep``
recomputes them. Nothing is deleted: the user can inspect the quarantined file.

Why parts: a sweep appends by writing a whole part to a temp name, fsyncing it and renaming it
into place (``os.replace`` is atomic on POSIX), so a SIGKILL leaves either the complete part or an
ignored ``.tmp`` file, never a torn one. Rows are keyed by a content hash; loading dedupes by key,
so a part that was compacted but not yet deleted when the process died counts once. ``compact``
merges the parts into one when a sweep ends.

Columns: every part is written with the explicit Arrow schema of ``codesign/store_schema.py`` (type,
nullability, unit and meaning of each column, in the field metadata); ``load_results(DIR)`` returns
the points columns with the quality part's ``q.*`` columns joined on ``quality_key``. The user's
table of them is docs/json-output.md.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from codesign import store_schema
from codesign.spec import SweepSpec
from codesign.store_schema import part_schema, table_from_rows
from workloads.errors import ConfigError
from workloads.io import atomic_open, write_bytes

_log = logging.getLogger(__name__)

STORE_FORMAT = 1
POINTS = "points"
QUALITY = "quality"
QUARANTINE = "quarantine"
SCALAR_METRICS = store_schema.SCALAR_METRICS  # the metric columns (defined with the schema)
BREAKDOWN_PREFIXES = store_schema.BREAKDOWN_PREFIXES


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh)


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("part-*.parquet"))


def quarantine(path: Path, why: str) -> Path:
    """Move an unreadable file of a results folder into its ``quarantine/`` (one warning line)."""
    path = Path(path)
    root = path.parent.parent if path.parent.name in (POINTS, QUALITY) else path.parent
    dest_dir = root / QUARANTINE
    dest_dir.mkdir(exist_ok=True)
    rel = path.relative_to(root).as_posix().replace("/", "__")
    dest = dest_dir / rel
    if dest.exists():
        dest = dest_dir / f"{uuid.uuid4().hex[:8]}-{rel}"
    os.replace(path, dest)
    _log.warning("unreadable %s (%s) moved to %s; its points are recomputed by the next sweep", path, why, dest)
    return dest


# columns without which a part's rows mean nothing (a part lacking one is quarantined)
REQUIRED = {POINTS: ("key", "status"), QUALITY: ("key", "quality_key")}


def _read_part(path: Path, columns: list[str] | None) -> pd.DataFrame | None:
    """One part as a DataFrame, or None after quarantining a part that cannot be read (torn,
    garbage, or without the columns its rows need)."""
    try:
        df = pq.read_table(path, columns=columns).to_pandas()
        need = REQUIRED.get(path.parent.name, ("key",)) if columns is None else columns
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(f"no {missing[0]!r} column")
        return df
    except FileNotFoundError:  # compacted away by a sweep meanwhile
        return None
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        quarantine(path, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}")
        return None


def _read_parts(folder: Path, columns: list[str] | None = None) -> pd.DataFrame:
    frames = [_read_part(p, columns) for p in _parts(folder)]
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame(columns=columns or ["key"])
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.drop_duplicates(subset="key", keep="first").reset_index(drop=True)


class ResultStore:
    """One results folder. Open it for writing with ``ResultStore.open(dir, spec, append)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fh = None

    # ---- ownership ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict:
        return read_manifest(self.root) or {"format": STORE_FORMAT, "specs": []}

    @classmethod
    def open(cls, root: str | Path, spec: SweepSpec, append: bool = False) -> ResultStore:
        """Open (or create) a results folder for ``spec``; refuse another spec's folder unless append.

        Takes an exclusive lock for the life of the sweep: two sweeps never write one folder.
        """
        store = cls(root)
        root = store.root
        if root.exists() and not root.is_dir():
            raise ConfigError("--out", str(root), "a folder (this is a file)")
        ours = store.manifest_path.is_file() or (root / POINTS).is_dir()  # a manifest may be quarantined
        if root.is_dir() and any(root.iterdir()) and not ours:
            raise ConfigError("--out", str(root), "an empty or new folder, or a codesign results folder")
        for sub in (POINTS, QUALITY):
            (root / sub).mkdir(parents=True, exist_ok=True)
        store._lock_fh = open(root / ".lock", "w")
        try:
            fcntl.flock(store._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            store._lock_fh.close()
            raise ConfigError("--out", str(root), "a folder no other sweep is writing now") from None
        man = store.manifest()
        if man.get("format") != STORE_FORMAT:
            store.close()
            raise ConfigError("--out", str(root), f"a results folder of store format {STORE_FORMAT}")
        hashes = [s["hash"] for s in man["specs"]]
        if hashes and spec.spec_hash not in hashes and not append:
            names = ", ".join(s["name"] for s in man["specs"])
            store.close()
            raise ConfigError(
                "--out",
                str(root),
                f"a folder of this spec's results (it holds {names}; "
                "pass --append to add these points to it, or pick another folder)",
            )
        if spec.spec_hash not in hashes:
            man["specs"].append({"hash": spec.spec_hash, "name": spec.name, "spec": spec.source})
            write_bytes(store.manifest_path, json.dumps(man, indent=1).encode())
        for tmp in list(root.glob(f"{POINTS}/.*.tmp")) + list(root.glob(f"{QUALITY}/.*.tmp")):
            tmp.unlink(missing_ok=True)  # torn writes of a killed sweep (we hold the lock)
        return store

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- rows ---------------------------------------------------------------------------------
    def done_keys(self, kind: str = POINTS) -> set[str]:
        df = _read_parts(self.root / kind, columns=["key"])
        return set(df["key"])

    def write_rows(self, rows: list[dict], kind: str = POINTS) -> Path | None:
        """Append rows as one new immutable part file (atomic)."""
        if not rows:
            return None
        table = table_from_rows(rows, part_schema(kind))  # codesign/store_schema.py; a misfit raises
        path = self.root / kind / f"part-{uuid.uuid4().hex}.parquet"
        _atomic_write_table(path, table)
        return path

    def write_pickle(self, path: Path, obj: object) -> None:
        """A cache file beside the parts (e.g. shared quality calibration), written atomically."""
        import pickle

        write_bytes(Path(path), pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def compact(self, kind: str = POINTS) -> None:
        """Merge the parts into one (written first, then the old parts are deleted)."""
        parts = _parts(self.root / kind)
        if len(parts) <= 1:
            return
        df = _read_parts(self.root / kind)
        try:
            table = table_from_rows(df.to_dict("records"), part_schema(kind))
        except ConfigError as e:  # parts of an older column set: they still load, left as they are
            _log.warning("%s not compacted (%s)", self.root / kind, e)
            return
        path = self.root / kind / f"part-{uuid.uuid4().hex}.parquet"
        _atomic_write_table(path, table)
        for p in parts:
            p.unlink(missing_ok=True)

    def load(self) -> pd.DataFrame:
        return load_results(self.root)


def _valid_manifest(man: object) -> bool:
    return (
        isinstance(man, dict)
        and isinstance(man.get("specs"), list)
        and all(isinstance(s, dict) and {"hash", "name", "spec"} <= set(s) for s in man["specs"])
    )


def read_manifest(root: str | Path) -> dict | None:
    """The folder's manifest, or None when it has none; an unreadable one is quarantined (None)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_bytes())
        if not _valid_manifest(man):
            raise ValueError("not a codesign manifest")
        return man
    except (ValueError, UnicodeDecodeError) as e:
        quarantine(path, type(e).__name__)
        return None


def is_results_folder(root: str | Path) -> bool:
    root = Path(root)
    return root.is_dir() and ((root / "manifest.json").is_file() or (root / POINTS).is_dir())


def load_results(root: str | Path) -> pd.DataFrame:
    """All design points of a results folder as one DataFrame (columns: see the module docstring)."""
    root = Path(root)
    if not is_results_folder(root):
        raise ConfigError("results", str(root), "a results folder written by `codesign sweep`")
    points = _read_parts(root / POINTS)
    quality = _read_parts(root / QUALITY)
    if len(points) and len(quality) and "quality_key" in points.columns:
        qcols = ["quality_key"] + [c for c in quality.columns if c.startswith("q.")]
        points = points.merge(quality[qcols], on="quality_key", how="left")
    return points


def load_quality(root: str | Path) -> pd.DataFrame:
    """Quality rows only (one per quality workload x recipe)."""
    return _read_parts(Path(root) / QUALITY)
