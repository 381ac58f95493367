"""Every bad input is refused before work starts: one line naming the field, exit code 2, nothing
left behind. Each case a user hit (output paths, sweep axes, absurd hardware, unbounded workloads,
non-reproducible JSON, point keys) is kept here, run in-process through the CLI's ``main``."""

import dataclasses
import json
import time
from pathlib import Path

import pytest
import yaml

import hwsim
from codesign.cli import main
from codesign.spec import content_hash
from codesign.sweep import workload_identity
from workloads.presets import get_workload

TINY = Path(__file__).resolve().parents[2] / "codesign" / "specs" / "tiny.yaml"


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``codesign ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, *args, field: str) -> str:
    rc, _, err = cli(capsys, *args)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("codesign: warning:")]
    assert rc == 2 and len(lines) == 1, err
    assert field in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*"))


# ---- output paths: checked before any work, nothing created ----------------------------------------
def test_trace_out_into_missing_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(capsys, "trace", "--workload", "stdit-tiny", "--out", "no-such-dir/t.csv", field="out")
    assert files_under(tmp_path) == []


def test_trace_out_onto_a_folder(capsys, tmp_path):
    (tmp_path / "d.csv").mkdir()
    refused(capsys, "trace", "--workload", "stdit-tiny", "--out", tmp_path / "d.csv", field="out")


def test_sweep_out_under_a_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(capsys, "sweep", TINY, "--out", tmp_path / "afile" / "r", "--jobs", "1", "--quiet", field="--out")
    assert files_under(tmp_path) == [tmp_path / "afile"]


def test_report_out_onto_a_file_and_bad_results_leave_nothing(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(capsys, "report", tmp_path, "--out", tmp_path / "f", field="--out")
    refused(capsys, "report", tmp_path / "nope", "--out", tmp_path / "rep", field="results")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("flag", ["--plots", "--scalesim-report"])
def test_simulate_output_folder_onto_a_file(capsys, tmp_path, flag):
    (tmp_path / "f").write_text("x")
    refused(capsys, "simulate", "--workload", "stdit-tiny", flag, tmp_path / "f", field=flag[2:])
    refused(capsys, "simulate", "--workload", "stdit-tiny", flag, tmp_path / "f" / "sub", field=flag[2:])


@pytest.mark.parametrize("cmd", [["calibrate"], ["quantize", "--recipe", "asq-w8a8"]])
def test_quant_out_into_missing_folder(capsys, tmp_path, cmd):
    refused(capsys, *cmd, "--workload", "stdit-tiny", "--out", tmp_path / "no" / "x.safetensors", field="out")


# ---- sweep axis values checked against the hardware schema when the spec loads ----------------------
@pytest.mark.parametrize(
    "values, shown",
    [(["a", "b"], "'a'"), ([-4, 8], "-4"), ([float("nan")], "nan"), ([1e30], "mac.pes")],
)
def test_sweep_axis_values_checked_at_load(capsys, tmp_path, values, shown):
    spec = {
        "name": "bad",
        "cost_workload": "stdit-tiny",
        "recipes": ["asq-w8a8"],
        "hardware": {"base": "edge-npu", "axes": {"mac.rows": values}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    line = refused(capsys, "sweep", path, "--out", tmp_path / "r", "--quiet", "--jobs", "1", field="hardware.axes.mac")
    assert shown in line
    assert not (tmp_path / "r").exists()


# ---- physically absurd hardware ----------------------------------------------------------------------
def _hw_file(tmp_path: Path, section: str, field: str, value) -> Path:
    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    d[section][field] = value
    path = tmp_path / f"{field}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize(
    "section, field, value, named",
    [
        ("sram", "weight_buffer_bytes", 1e30, "sram.total_bytes"),
        ("dma", "bandwidth_bytes_per_s", 1e-30, "dma.bandwidth_bytes_per_s"),
        ("clock", "freq_hz", 1.0, "clock.freq_hz"),
    ],
)
def test_absurd_hardware_is_refused(capsys, tmp_path, section, field, value, named):
    hw = _hw_file(tmp_path, section, field, value)
    refused(capsys, "simulate", "--workload", "stdit-tiny", "--hw", hw, field=named)


def test_ample_hardware_warns_and_the_header_shows_the_config(capsys, tmp_path):
    hw = _hw_file(tmp_path, "sram", "weight_buffer_bytes", 2**28)
    rc, out, err = cli(capsys, "simulate", "--workload", "stdit-tiny", "--hw", hw)
    assert rc == 0
    assert err.count("codesign: warning: sram.total_bytes") == 1
    header = out.splitlines()[0]
    assert "273 MB SRAM" in header and "6 MiB" not in header  # 2^28 + 2 MiB, not the preset's text


# ---- bounded work ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "workload, number",
    [
        ("gemm:99999999999999999999,1,1", "1e+20"),
        ("gemm:100000000000000,1,1", "572,134,750 tiles"),
    ],
)
def test_huge_gemm_refused_at_once(capsys, workload, number):
    t0 = time.perf_counter()
    line = refused(capsys, "simulate", "--workload", workload, "--recipe", "asq-w8a8", field="workload")
    assert number in line
    assert time.perf_counter() - t0 < 20  # it hung for minutes / died with MemoryError


def test_workload_beyond_the_op_budget_refused(capsys, tmp_path):
    d = get_workload("stdit-tiny").to_dict()
    d["num_steps"] = 10**6
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(d))
    line = refused(capsys, "trace", "--workload", path, field="num_steps")
    assert "1,000,000 ops" in line


# ---- deterministic machine-readable output -----------------------------------------------------------
def test_simulate_json_is_reproducible_and_timing_is_opt_in(capsys):
    args = ("simulate", "--workload", "stdit-tiny", "--recipe", "asq-w8a8", "--json")

    def fresh():  # as a new process runs it: the memo counts say what this process had cached
        hwsim.clear_cache()
        return cli(capsys, *args)

    first, second = fresh(), fresh()
    assert first[0] == 0 and first[1] == second[1]
    assert "timing" not in json.loads(first[1])
    rc, out, _ = cli(capsys, *args, "--timing")
    timing = json.loads(out)["timing"]
    assert set(timing) == {"trace_s", "simulate_s"} and all(v >= 0 for v in timing.values())


def test_trace_json_is_reproducible(capsys):
    a, b = (
        cli(capsys, "trace", "--workload", "stdit-tiny", "--json"),
        cli(capsys, "trace", "--workload", "stdit-tiny", "--json"),
    )
    assert a[0] == 0 and a[1] == b[1] and "timing" not in json.loads(a[1])


# ---- point keys: `trained` is not part of a cost point's identity -------------------------------------
def test_point_key_ignores_trained():
    w = get_workload("stdit-tiny")
    trained = dataclasses.replace(w, trained="shapes.trained")
    assert content_hash(workload_identity(w)) == content_hash(workload_identity(trained))
    # the key a point had before the field existed
    legacy = {k: v for k, v in w.to_dict().items() if k != "trained"}
    assert content_hash(workload_identity(w)) == content_hash(legacy)
    # quality does depend on the trained model: its key changes only when one is named
    assert content_hash(workload_identity(w, for_quality=True)) == content_hash(legacy)
    assert workload_identity(trained, for_quality=True)["trained"] == "shapes.trained"
