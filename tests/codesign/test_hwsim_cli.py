"""`codesign simulate` / `codesign hw` end to end (top layer: may build traces through quantmodel)."""

import json
from pathlib import Path

import pytest

from codesign.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "hwsim"
CONTRACT_KEYS = {
    "latency_s",
    "latency_per_step_s",
    "energy_j",
    "area_mm2",
    "storage_bytes",
    "swap_stall_s",
    "swap_hidden_s",
    "swap_bytes",
    "energy_breakdown_j",
    "area_breakdown_mm2",
    "stall_breakdown_s",
    "utilisation",
    "sim_version",
}


def test_fixtures_are_current():
    """The saved stdit-tiny traces the hwsim tests read are what quantmodel writes today."""
    from quantmodel.model.tracing import build_trace
    from workloads.presets import get_workload
    from workloads.recipes import annotate_trace, get_recipe
    from workloads.trace import Trace

    float_trace = build_trace(get_workload("stdit-tiny"))
    for path in sorted(DATA.glob("stdit-tiny-*.parquet")):
        recipe = path.stem[len("stdit-tiny-") :]
        want = annotate_trace(float_trace, get_recipe(recipe))
        got = Trace.load(path)
        assert got.ops == want.ops and got.meta == want.meta, f"regenerate {path.name}"


def test_simulate_json_from_workload(capsys):
    assert (
        main(
            [
                "simulate",
                "--workload",
                "stdit-tiny",
                "--recipe",
                "tsq-tsw-w8a8",
                "--hw",
                "edge-npu",
                "--prefetch",
                "early",
                "--json",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert CONTRACT_KEYS <= set(d)
    assert d["recipe"] == "tsq-tsw-w8a8" and d["prefetch"] == "early" and len(d["latency_per_step_s"]) == 10
    assert d["energy_j"] == pytest.approx(sum(d["energy_breakdown_j"].values()))


def test_simulate_report_and_plots(tmp_path, capsys):
    out = tmp_path / "plots"
    assert (
        main(
            [
                "simulate",
                "--trace",
                str(DATA / "stdit-tiny-asq-w8a8.parquet"),
                "--hw",
                "edge-npu-lite",
                "--plots",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for word in (
        "latency per video",
        "energy per video",
        "area",
        "storage",
        "utilisation",
        "latency by cause",
        "DRAM vs lower bound",
    ):
        assert word in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"breakdown.png", "roofline.png", "timeline_step0.png"} <= set(pngs)
    assert all((out / p).stat().st_size > 5000 for p in pngs)


def test_gemm_workload_and_hw_listing(capsys):
    assert main(["simulate", "--workload", "gemm:256,1152,1152", "--recipe", "asq-w8a8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["macs"] == 256 * 1152 * 1152
    assert main(["hw", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"edge-npu", "edge-npu-static", "edge-npu-lite", "edge-npu-pro"} <= names


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--trace", "T:asq-w8a8", "--hw", "no-such-npu"], "hw"),
        (["--trace", "T:dynamic-w8a8", "--hw", "edge-npu-static"], "recipe"),
        (["--trace", "T:asq-w8a8", "--prefetch", "sometime"], "prefetch"),
        (["--trace", "T:asq-w8a8", "--hw", "BADHW"], "sram.banks"),
        (["--trace", "OLDTRACE"], "trace_version"),
        (["--trace", "T:asq-w8a8", "--recipe", "asq-w8a8"], "recipe"),
    ],
)
def test_bad_input_one_line_exit_2(argv, field, tmp_path, capsys):
    import yaml

    import hwsim
    from workloads.trace import Trace

    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    d["sram"]["banks"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    old = Trace.load(DATA / "stdit-tiny-asq-w8a8.parquet")
    old.version = 0
    old.save(tmp_path / "old.parquet")
    subst = {"BADHW": str(tmp_path / "bad.yaml"), "OLDTRACE": str(tmp_path / "old.parquet")}
    argv = [subst.get(a, str(DATA / f"stdit-tiny-{a[2:]}.parquet") if a.startswith("T:") else a) for a in argv]
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("codesign simulate: error: " + field)
