"""Results store: atomic parts, dedupe by key, compaction, ownership by spec, one writer at a time."""

import pandas as pd
import pytest

from codesign.spec import SweepSpec
from codesign.store import POINTS, ResultStore, load_results
from codesign.store_schema import points_schema
from workloads.errors import ConfigError


def make_spec(name: str, recipes=("asq-w8a8",)) -> SweepSpec:
    source = {
        "cost_workload": "stdit-tiny",
        "recipes": list(recipes),
        "quality": None,
        "hardware": {"base": "edge-npu", "sampling": "grid", "axes": {}},
        "name": name,
    }
    return SweepSpec(
        name=name,
        cost_workload="stdit-tiny",
        recipes=tuple(recipes),
        hw_base="edge-npu",
        sampling="grid",
        axes=(),
        source=source,
    )


def rows(keys, latency=1.0):
    """Whole rows of the store's schema (placeholders where the test does not care)."""
    blank = {"large_string": "", "int64": 0, "double": 0.0, "bool": False}
    base = {f.name: None if f.nullable else blank[str(f.type)] for f in points_schema()}
    return [
        {**base, "key": k, "status": "ok", "error": "", "recipe": "asq-w8a8", "latency_s": latency + i}
        for i, k in enumerate(keys)
    ]


def test_parts_dedupe_and_compact(tmp_path):
    spec = make_spec("a")
    with ResultStore.open(tmp_path / "r", spec) as store:
        store.write_rows(rows(["k1", "k2"]))
        store.write_rows(rows(["k2", "k3"], latency=10.0))  # k2 again (a part written twice)
        assert store.done_keys() == {"k1", "k2", "k3"}
        df = load_results(tmp_path / "r")
        assert sorted(df["key"]) == ["k1", "k2", "k3"]
        store.compact()
        parts = list((tmp_path / "r" / POINTS).glob("part-*.parquet"))
        assert len(parts) == 1
        after = load_results(tmp_path / "r").sort_values("key").reset_index(drop=True)
        pd.testing.assert_frame_equal(after, df.sort_values("key").reset_index(drop=True))


def test_torn_temp_files_are_ignored_and_cleaned(tmp_path):
    spec = make_spec("a")
    with ResultStore.open(tmp_path / "r", spec) as store:
        store.write_rows(rows(["k1"]))
    torn = tmp_path / "r" / POINTS / ".part-dead.parquet.tmp"
    torn.write_bytes(b"PAR1 half a file")  # what a SIGKILL mid-write leaves
    assert sorted(load_results(tmp_path / "r")["key"]) == ["k1"]
    with ResultStore.open(tmp_path / "r", spec):
        assert not torn.exists()


def test_other_spec_is_refused_unless_append(tmp_path):
    with ResultStore.open(tmp_path / "r", make_spec("a")) as store:
        store.write_rows(rows(["k1"]))
    with pytest.raises(ConfigError, match="--append"):
        ResultStore.open(tmp_path / "r", make_spec("b", recipes=("tsq-tsw-w8a8",)))
    with ResultStore.open(tmp_path / "r", make_spec("b", recipes=("tsq-tsw-w8a8",)), append=True):
        pass
    with ResultStore.open(tmp_path / "r", make_spec("b", recipes=("tsq-tsw-w8a8",))):
        pass  # once appended, the folder belongs to both specs


def test_one_writer_at_a_time(tmp_path):
    spec = make_spec("a")
    with ResultStore.open(tmp_path / "r", spec):
        with pytest.raises(ConfigError, match="no other sweep"):
            ResultStore.open(tmp_path / "r", spec)


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        ResultStore.open(tmp_path / "r", make_spec("a"))
