"""`codesign report`: plots and Markdown from a real (tiny) sweep; the numbers it shows are the table's."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codesign.pareto import pareto_mask
from codesign.report import static_vs_dynamic, swap_curves
from codesign.spec import load_spec
from codesign.store import load_results
from codesign.sweep import run_sweep

TINY = Path(__file__).resolve().parents[2] / "codesign" / "specs" / "tiny.yaml"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run_sweep(load_spec(TINY), root / "r", jobs=1, progress=False)
    r = subprocess.run(
        [sys.executable, "-m", "codesign.cli", "report", str(root / "r"), "--out", str(root / "rep")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return root / "r", root / "rep"


def test_report_files(report):
    _, rep = report
    md = (rep / "report.md").read_text()
    for png in (
        "pareto_energy_vs_area.png",
        "static_vs_dynamic.png",
        "breakdown_latency.png",
        "breakdown_energy.png",
        "swap_vs_k.png",
    ):
        data = (rep / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
        assert f"({png})" in md, png
    assert "failed validation" in md


def test_pareto_table_is_the_front(report):
    res, rep = report
    ok = load_results(res).query("status == 'ok'")
    front = pd.read_csv(rep / "pareto_points.csv")
    expect = ok[pareto_mask(ok, {"latency_s": "min", "energy_j": "min", "area_mm2": "min"})]
    assert sorted(front["key"]) == sorted(expect["key"])


def test_static_vs_dynamic_pairs_equal_hardware(report):
    ok = load_results(report[0]).query("status == 'ok'")
    ratios = static_vs_dynamic(ok)
    # dynamic runs on the 4 chips with the reduction unit; each pairs with ASQ and TSQ+TSW there
    assert len(ratios) == 4 * 2 * 2
    lat = ratios[(ratios["metric"] == "latency") & (ratios["versus"] == "asq-w8a8")]["ratio"].sort_values()
    d = ok[ok["recipe"] == "dynamic-w8a8"].set_index("hw_key")["latency_s"]
    a = ok[ok["recipe"] == "asq-w8a8"].set_index("hw_key")["latency_s"]
    np.testing.assert_array_equal(lat.to_numpy(), (d / a.loc[d.index]).sort_values().to_numpy())


def test_swap_curves_by_k(report):
    ok = load_results(report[0]).query("status == 'ok'")
    curves = swap_curves(ok)
    steps = int(ok["num_weight_sets"].max())
    assert sorted(curves["num_weight_sets"].unique()) == [1, steps]
    assert (curves["points"] == 8).all()  # ASQ and TSQ+TSW share all 8 hardware points


def test_report_of_missing_folder_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "codesign.cli", "report", str(tmp_path / "nope"), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_report_does_not_depend_on_row_order(report, tmp_path):
    """A sweep's parts finish in any order; the report must read the same (ties included)."""
    import shutil

    from codesign.report import write_report

    res, rep = report
    shuffled = tmp_path / "r"
    shutil.copytree(res, shuffled)
    parts = sorted(shuffled.rglob("*.parquet"))
    assert parts
    for p in parts:  # rows reversed inside each part, and the parts' names reversed
        pd.read_parquet(p).iloc[::-1].to_parquet(p.with_suffix(".tmp"), index=False)
    for p, q in zip(parts, reversed(parts)):
        p.with_suffix(".tmp").replace(q)
    write_report(shuffled, tmp_path / "rep")

    def body(path):
        return [ln for ln in (path / "report.md").read_text().splitlines() if not ln.startswith("Results:")]

    assert body(tmp_path / "rep") == body(rep)


def test_tables_in_human_units(report):
    md = (report[1] / "report.md").read_text()
    tables = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert tables and not [ln for ln in tables if "e+" in ln]  # no 7.483e+10 in a table
    assert not [ln for ln in tables if "_bytes" in ln or "hw." in ln]  # titles, not column names
    assert "storage (GB)" in md and "latency (s)" in md


def test_column_format_scales():
    from codesign.report import _cell, column_format

    assert column_format("hw.sram.weight_buffer_bytes") == ("weight buffer (MiB)", 2**20)
    assert _cell(8388608, column_format("hw.sram.weight_buffer_bytes")[1]) == "8"
    assert _cell(7.483e10, column_format("storage_bytes")[1]) == "74.83"
    assert _cell(1.2e9, column_format("hw.clock.freq_hz")[1]) == "1.2"
    assert _cell(True, 1.0) == "yes" and _cell(float("nan"), 1.0) == "–"


def _quality_rows(clip_db: dict[str, list[float]], hw_points: int = 2) -> pd.DataFrame:
    """Points of a sweep with a quality axis: each recipe's per-clip SQNRs on the same 4 float clips."""
    sig = np.array([4.0e4, 1.5e3, 2.2e4, 9.0e3])
    rows = []
    for recipe, dbs in clip_db.items():
        err = sig * 10 ** (-np.asarray(dbs) / 10)
        bits = recipe.rsplit("-", 1)[1]
        for hw in range(hw_points):
            rows.append(
                {
                    "recipe": recipe,
                    "w_bits": int(bits[1]),
                    "a_bits": int(bits[3]),
                    "num_weight_sets": 1,
                    "storage_bytes": 1e9,
                    "hw_key": f"hw{hw}",
                    "quality_workload": "stdit-shapes",
                    "q.sqnr_db": float(10 * np.log10(sig.sum() / err.sum())),
                    "q.num_weight_sets": 1,
                    "q.clip_signal_energy": ",".join(repr(float(v)) for v in sig),
                    "q.clip_error_energy": ",".join(repr(float(v)) for v in err),
                }
            )
    return pd.DataFrame(rows)


def test_quality_column_carries_its_interval_over_clips():
    from codesign.report import _quality_section, clip_intervals

    ok = _quality_rows(
        {"asq-w8a8": [25, 27, 29, 31], "tsq-tsw-w8a8": [30, 30, 30, 30], "dynamic-w8a8": [31, 29, 33, 32]}
    )
    per = ok.groupby("recipe", sort=False).first().reset_index()
    ci = clip_intervals(per).set_index("recipe")
    np.testing.assert_allclose(ci.loc[per["recipe"], "sqnr_clips_db"], per["q.sqnr_db"], rtol=1e-12)
    assert ci.loc["tsq-tsw-w8a8", "sqnr_interval"] == "[30.0, 30.0]"  # every clip at 30 dB: no width
    assert (ci["clips"] == 4).all()
    md = "\n".join(_quality_section(ok, ("q.sqnr_db", "max")))
    assert "| SQNR 95 % over clips (dB) | clips |" in md
    assert "bootstrap over the 4 clips" in md and "calibration's own luck is not in them" in md
    assert "of 2 neighbouring pairs are told apart" in md
    # rows stored before the per-clip values were: the table says so instead of inventing an interval
    old = ok.drop(columns=["q.clip_signal_energy", "q.clip_error_energy"])
    md_old = "\n".join(_quality_section(old, ("q.sqnr_db", "max")))
    assert "95 % over clips" not in md_old and "no per-clip values" in md_old
