"""A results folder heals: unreadable parts, manifest or caches are moved into quarantine/ with one
warning line each, reading goes on, and a resumed sweep recomputes exactly the points they held.
A report of results where no point succeeded says so instead of crashing."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from codesign.cli import main
from codesign.spec import load_spec
from codesign.store import POINTS, QUALITY, QUARANTINE, load_results
from codesign.sweep import _load_prep, run_sweep

TINY = Path(__file__).resolve().parents[2] / "codesign" / "specs" / "tiny.yaml"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The tiny sweep (24 points) written as several parts (no compaction), and its rows."""
    out = tmp_path_factory.mktemp("heal") / "r"
    spec = load_spec(TINY)
    run_sweep(spec, out, jobs=1, progress=False)
    df = load_results(out)
    # split the compacted part into three, so one can be damaged while the others stay
    (part,) = sorted((out / POINTS).glob("part-*.parquet"))
    for i, chunk in enumerate((df.iloc[:8], df.iloc[8:16], df.iloc[16:])):
        chunk.to_parquet(out / POINTS / f"part-{i}.parquet", index=False)
    part.unlink()
    return out, df


def cli(capsys, *args):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    return (rc, *capsys.readouterr())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-key"])
def test_bad_part_quarantined_and_recomputed(results, tmp_path, capsys, damage):
    src, full = results
    r = tmp_path / "r"
    shutil.copytree(src, r)
    bad = r / POINTS / "part-1.parquet"
    lost = set(pd.read_parquet(bad)["key"])
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "garbage":
        bad.write_bytes(b"not parquet at all")
    else:
        pd.read_parquet(bad).drop(columns=["key"]).to_parquet(bad, index=False)

    rc, out, err = cli(capsys, "report", r, "--out", tmp_path / "rep")
    assert rc == 0 and "Traceback" not in err
    warning = [ln for ln in err.splitlines() if "unreadable" in ln]
    assert len(warning) == 1 and "part-1.parquet" in warning[0] and QUARANTINE in warning[0]
    assert (r / QUARANTINE / "points__part-1.parquet").is_file() and not bad.exists()
    assert set(load_results(r)["key"]) == set(full["key"]) - lost

    rc, out, err = cli(capsys, "sweep", TINY, "--out", r, "--jobs", "1", "--quiet")
    assert rc == 0, err
    assert f"{len(full) - len(lost)} already done, {len(lost)} computed" in out
    healed = load_results(r).set_index("key").sort_index()
    before = full.set_index("key").sort_index()
    cols = ["status", "latency_s", "energy_j", "area_mm2"]
    pd.testing.assert_frame_equal(healed[cols], before[cols])


def test_corrupt_manifest_quarantined(results, tmp_path, capsys):
    src, full = results
    r = tmp_path / "r"
    shutil.copytree(src, r)
    (r / "manifest.json").write_text('{"format": 1, "specs": [')
    rc, _, err = cli(capsys, "report", r, "--out", tmp_path / "rep")
    assert rc == 0 and "manifest.json" in err and (r / QUARANTINE / "manifest.json").is_file()
    assert "# Design-space report: tiny" in (tmp_path / "rep" / "report.md").read_text()
    rc, out, err = cli(capsys, "sweep", TINY, "--out", r, "--jobs", "1", "--quiet")
    assert rc == 0 and f"{len(full)} already done, 0 computed" in out, err
    assert (r / "manifest.json").is_file()


def test_corrupt_prep_cache_quarantined(tmp_path, capsys):
    (tmp_path / QUALITY).mkdir()
    prep = tmp_path / QUALITY / "prep-abc-1.pkl"
    prep.write_bytes(b"\x80\x05garbage")
    assert _load_prep(prep) is None
    assert not prep.exists() and (tmp_path / QUARANTINE / "quality__prep-abc-1.pkl").is_file()
    assert "prep-abc-1.pkl" in capsys.readouterr().err


def test_report_with_no_successful_point(tmp_path, capsys):
    spec = yaml.safe_load(TINY.read_text())
    spec.update(name="all-fail", recipes=["dynamic-w8a8"])
    spec["hardware"] = {"base": "edge-npu-static", "axes": {"mac.rows": [16, 32]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc, out, err = cli(capsys, "sweep", path, "--out", tmp_path / "r", "--jobs", "1", "--quiet")
    assert rc == 0 and "2 computed (2 failed validation)" in out, err
    rc, out, err = cli(capsys, "report", tmp_path / "r", "--out", tmp_path / "rep")
    assert rc == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "none simulated successfully" in md and "on-line reduction unit" in md


def test_report_is_reproducible(results, tmp_path, capsys):
    src, _ = results
    for name in ("a", "b"):
        assert cli(capsys, "report", src, "--out", tmp_path / name)[0] == 0
    for f in ("report.md", "pareto_points.csv"):
        a, b = (tmp_path / "a" / f).read_text(), (tmp_path / "b" / f).read_text()
        assert a.replace(str(tmp_path / "a"), "") == b.replace(str(tmp_path / "b"), "")
    assert "sim_wall_s" not in (tmp_path / "a" / "pareto_points.csv").read_text()
