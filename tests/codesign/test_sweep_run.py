"""Sweeps end to end: local pool, resume, SIGKILL mid-run + rerun, a real Dask LocalCluster, bad input.

All on the tiny STDiT workload so every simulation takes milliseconds.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import hwsim
from codesign.spec import flatten, load_spec, spec_from_dict
from codesign.store import POINTS, load_results
from codesign.sweep import run_sweep
from quantmodel.model.tracing import build_trace
from workloads.errors import ConfigError
from workloads.presets import get_workload
from workloads.recipes import annotate_trace, get_recipe

TINY = Path(__file__).resolve().parents[2] / "codesign" / "specs" / "tiny.yaml"
METRICS = ["latency_s", "energy_j", "area_mm2", "storage_bytes", "swap_stall_s", "swap_bytes"]


def codesign(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "codesign.cli", *args], capture_output=True, text=True, timeout=120, **kw
    )


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "r"
    summary = run_sweep(load_spec(TINY), out, jobs=2, progress=False)
    return out, summary


def test_local_sweep_rows_and_values(tiny_results):
    out, summary = tiny_results
    df = load_results(out)
    assert len(df) == 24 == summary.total_points == summary.computed_points
    assert df["key"].is_unique
    assert set(df["recipe"]) == {"asq-w8a8", "tsq-tsw-w8a8", "dynamic-w8a8"}
    # a row holds what hwsim says for that very point (same trace, same hardware, same policy)
    row = df[(df["status"] == "ok") & (df["recipe"] == "tsq-tsw-w8a8")].iloc[0]
    hw = hwsim.with_overrides(
        hwsim.load_hw("edge-npu"),
        {
            "mac.rows": int(row["hw.mac.rows"]),
            "dram.part": row["hw.dram.part"],
            "dram.channels": int(row["hw.dram.channels"]),
            "vector.online_reduction": bool(row["hw.vector.online_reduction"]),
        },
    )
    trace = annotate_trace(build_trace(get_workload("stdit-tiny")), get_recipe("tsq-tsw-w8a8"))
    direct = hwsim.simulate(trace, hw, prefetch=row["prefetch"]).to_dict()
    for m in METRICS:
        assert row[m] == direct[m], m
    # storage depends on the recipe only; TSQ+TSW holds one weight set per step
    assert row["num_weight_sets"] == get_workload("stdit-tiny").num_steps


def test_invalid_hardware_point_is_a_failed_row(tiny_results):
    df = load_results(tiny_results[0])
    failed = df[df["status"] == "failed"]
    # dynamic recipes need the on-line reduction unit; the 4 points without it fail, the sweep goes on
    assert set(failed["recipe"]) == {"dynamic-w8a8"}
    assert len(failed) == 4 and (failed["hw.vector.online_reduction"] == False).all()  # noqa: E712
    assert failed["error"].str.len().min() > 0 and failed["latency_s"].isna().all()
    assert (df[df["status"] == "ok"]["latency_s"] > 0).all()


def test_rerun_skips_done_points(tiny_results):
    out, _ = tiny_results
    summary = run_sweep(load_spec(TINY), out, jobs=2, progress=False)
    assert summary.skipped_points == 24 and summary.computed_points == 0


def test_other_spec_refused_then_appended(tiny_results, tmp_path):
    out, _ = tiny_results
    data = yaml.safe_load(TINY.read_text())
    data["recipes"] = ["static-w8a8"]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    r = codesign("sweep", str(other), "--out", str(out), "--quiet")
    assert r.returncode == 2 and "--append" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    summary = run_sweep(load_spec(other), out, jobs=1, append=True, progress=False)
    assert summary.computed_points == 8
    assert len(load_results(out)) == 24 + 8


def test_bad_specs_exit_2(tmp_path):
    data = yaml.safe_load(TINY.read_text())
    for axes, field in (({"mac.rowz": [16]}, "mac.rowz"), ({"mac.rows": []}, "mac.rows")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**data, "hardware": {**data["hardware"], "axes": axes}}))
        r = codesign("sweep", str(bad), "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and field in r.stderr and len(r.stderr.strip().splitlines()) == 1
        with pytest.raises(ConfigError):
            spec_from_dict({**data, "hardware": {**data["hardware"], "axes": axes}})
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_sigkill_mid_run_then_rerun(tmp_path):
    """Kill a real `codesign sweep` with SIGKILL while it writes parts; the rerun completes exactly once."""
    data = yaml.safe_load(TINY.read_text())
    data["hardware"] = {
        "base": "edge-npu",
        "sampling": "random",
        "samples": 60,
        "seed": 3,
        "axes": {
            "mac.rows": [16, 32, 64],
            "mac.cols": [16, 32, 64],
            "clock.freq_hz": {"min": 5e8, "max": 1.4e9},
            "dram.channels": [1, 2, 4, 8],
        },
    }
    spec_path = tmp_path / "kill.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    total = 60 * 3
    out = tmp_path / "r"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codesign.cli",
            "sweep",
            str(spec_path),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--quiet",
            "--flush-every",
            "0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((out / POINTS).glob("part-*.parquet")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = list((out / POINTS).glob("part-*.parquet"))
    assert parts, "the sweep wrote nothing before the kill"
    for p in parts:
        pq.read_table(p)  # every visible part is complete (temp + fsync + atomic rename)
    before = len(load_results(out))
    assert 0 < before < total, "the kill did not land mid-run"
    r = codesign("sweep", str(spec_path), "--out", str(out), "--jobs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"{before} already done" in r.stdout
    df = load_results(out)
    assert len(df) == total and df["key"].is_unique
    assert len(list((out / POINTS).glob("part-*.parquet"))) == 1  # compacted


def test_dask_local_cluster_matches_local_pool(tiny_results, tmp_path):
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summary = run_sweep(load_spec(TINY), tmp_path / "d", scheduler=client, progress=False)
    assert summary.computed_points == 24
    local = load_results(tiny_results[0]).set_index("key").sort_index()
    dask_df = load_results(tmp_path / "d").set_index("key").sort_index()
    assert list(dask_df.index) == list(local.loc[dask_df.index].index)
    pd.testing.assert_frame_equal(dask_df[METRICS + ["status"]], local.loc[dask_df.index, METRICS + ["status"]])


def test_unreachable_scheduler_exit_2(tmp_path):
    r = codesign(
        "sweep", str(TINY), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"
    )
    assert r.returncode == 2 and "--scheduler" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_quality_once_per_recipe_joined_on_every_point(tmp_path):
    data = yaml.safe_load(TINY.read_text())
    data["recipes"] = ["dynamic-w8a8"]  # no calibration needed: keeps the test quick
    data["quality"] = {"workload": "stdit-tiny", "options": {"num_samples": 2, "backend": "fakequant"}}
    data["hardware"]["axes"] = {"mac.rows": [16, 32]}
    spec = spec_from_dict(data)
    summary = run_sweep(spec, tmp_path / "q", jobs=1, progress=False)
    assert summary.quality_computed == 1 and summary.computed_points == 2
    df = load_results(tmp_path / "q")
    assert df["q.sqnr_db"].nunique() == 1 and np.isfinite(df["q.sqnr_db"]).all()
    # the per-clip energies are stored, and their sums give the stored SQNR back
    sig = np.array(df["q.clip_signal_energy"].iloc[0].split(","), dtype=float)
    err = np.array(df["q.clip_error_energy"].iloc[0].split(","), dtype=float)
    assert len(sig) == len(err) == 2 and (err > 0).all()
    assert 10 * np.log10(sig.sum() / err.sum()) == pytest.approx(df["q.sqnr_db"].iloc[0], abs=1e-9)
    from codesign.report import write_report

    md = write_report(tmp_path / "q", tmp_path / "rep").read_text()
    assert "SQNR 95 % over clips (dB)" in md and "bootstrap over the 2 clips" in md
    assert (df["q.num_weight_sets"] == 1).all()
    again = run_sweep(spec, tmp_path / "q", jobs=1, progress=False)
    assert again.quality_computed == 0 and again.computed_points == 0
    bad = {**data, "quality": {"workload": "stdit-tiny", "options": {"num_promts": 1}}}
    with pytest.raises(ConfigError, match="num_promts"):
        spec_from_dict(bad)
    bad = {**data, "quality": {"workload": "stdit-tiny", "options": {"layer_sqnr": "no"}}}
    with pytest.raises(ConfigError, match="layer_sqnr"):
        spec_from_dict(bad)


def test_shipped_specs_load_and_sample_reproducibly():
    from codesign.spec import SPEC_DIR

    for path in sorted(SPEC_DIR.glob("*.yaml")):
        spec = load_spec(path)
        points = spec.hardware_points()
        if spec.sampling == "random":
            assert len(points) == spec.samples, path.name
            assert points == load_spec(path).hardware_points()  # same seed, same points
            assert len({p.overrides + (p.prefetch,) for p in points}) == len(points)  # distinct
        for p in points[:5]:  # the axes land on the chip's fields (section axes set several at once)
            hw = flatten(hwsim.hw_to_dict(hwsim.with_overrides(hwsim.load_hw(spec.hw_base), p.as_dict())))
            assert all(hw[k] == v for k, v in p.overrides), path.name


@pytest.mark.parametrize("jobs", [1, 2, 8])
def test_chunks_hold_whole_hardware_points(tmp_path, jobs):
    """A worker runs every recipe of a hardware point (they share hwsim's cache): no hardware point
    is split over chunks, and every pending point is in exactly one chunk."""
    from codesign.store import ResultStore
    from codesign.sweep import hardware_chunks, plan_sweep

    spec = load_spec(TINY)
    with ResultStore.open(tmp_path / "r", spec) as store:
        plan = plan_sweep(spec, store)
    chunks = hardware_chunks(plan, jobs)
    seen = [(ri, ii) for c in chunks for ri, ii in c]
    assert sorted(seen) == sorted((ri, ii) for ri, rp in enumerate(plan.recipes) for ii in range(len(rp.items)))
    owner = {}
    for n, c in enumerate(chunks):
        for ri, ii in c:
            assert owner.setdefault(plan.recipes[ri].rows[ii]["hw_key"], n) == n
    assert len(owner) == len(spec.hardware_points())
    per_hw = {k: sum(1 for c in chunks for ri, ii in c if plan.recipes[ri].rows[ii]["hw_key"] == k) for k in owner}
    assert set(per_hw.values()) == {len(spec.recipes)}
    assert len(chunks) > 1


def test_nominal_clock_axis_stored_as_the_nodes_clock(tmp_path):
    """``clock.freq_hz: [nominal, ...]`` is legal in the hardware YAML; the sweep failed to store it (a
    string in a double column) after computing every point. Stored resolved: the 5 nm node's clock."""
    spec = spec_from_dict(
        {
            "name": "nominal",
            "cost_workload": "stdit-tiny",
            "recipes": ["asq-w8a8"],
            "hardware": {"base": "edge-npu", "axes": {"clock.freq_hz": ["nominal", 1.0e9]}},
        }
    )
    run_sweep(spec, tmp_path / "r", jobs=1, progress=False)
    df = pd.read_parquet(tmp_path / "r" / POINTS).sort_values("hw.clock.freq_hz")
    nominal_hz = hwsim.hw_from_dict({**hwsim.hw_to_dict(hwsim.load_hw("edge-npu")), "clock": {"freq_hz": "nominal"}})
    assert df["hw.clock.freq_hz"].tolist() == sorted([1.0e9, nominal_hz.clock.freq_hz])
    assert (df["status"] == "ok").all()
