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
import hwsim.config
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
    "workload, field, number",
    [
        ("gemm:99999999999999999999,1,1", "workload", "1e+20"),  # beyond int64 MACs
        ("gemm:100000000000000,1,1", "dram.capacity_bytes", "300000000000000 activation bytes"),  # 300 TB
    ],
)
def test_huge_gemm_refused_at_once(capsys, workload, field, number):
    t0 = time.perf_counter()
    line = refused(capsys, "simulate", "--workload", workload, "--recipe", "asq-w8a8", field=field)
    assert number in line
    assert time.perf_counter() - t0 < 20  # it hung for minutes / died with MemoryError


def test_gemm_beyond_the_tile_budget_simulated_in_closed_form(capsys, tmp_path):
    """1,041,667 tiles on a chip of 16 KiB buffers (once refused): simulated, in seconds."""
    hw = hwsim.config.with_overrides(
        hwsim.load_hw("edge-npu-lite"), {"sram.activation_buffer_bytes": 16384, "sram.weight_buffer_bytes": 16384}
    )
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(hwsim.hw_to_dict(hw)))
    t0 = time.perf_counter()
    rc, out, err = cli(
        capsys, "simulate", "--workload", "gemm:100000000,8,8", "--recipe", "asq-w8a8", "--hw", tmp_path / "hw.yaml"
    )
    assert rc == 0, err
    assert time.perf_counter() - t0 < 30
    assert "6.4 GMAC" in out and "latency per video" in out


def test_workload_beyond_the_op_budget_refused(capsys, tmp_path):
    d = get_workload("stdit-tiny").to_dict()
    d["num_steps"] = 10**6
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(d))
    line = refused(capsys, "trace", "--workload", path, field="num_steps")
    assert "1,000,000 ops" in line


def test_model_trace_beyond_the_op_budget_refused_before_work(capsys):
    """``--steps 1e9`` over a model of no ops looped for two minutes before it was bounded."""
    t0 = time.perf_counter()
    line = refused(capsys, "trace", "--model", "torch.nn:Identity", "--input", "2x3", "--steps", 10**9, field="steps")
    assert "1,000,000 ops" in line and "1,000,000,000 steps" in line
    assert time.perf_counter() - t0 < 20


def test_model_input_shape_beyond_int64_refused(capsys):
    """A shape whose element count overflows int64 gave torch's RuntimeError traceback."""
    line = refused(capsys, "trace", "--model", "torch.nn:ReLU", "--input", "99999999999x99999999999x9", field="input")
    assert "2^62 elements" in line


@pytest.mark.parametrize(
    "args, field",
    [
        (("calibrate", "--workload", "stdit-tiny", "--prompts", 99999999999, "--out", "s.safetensors"), "prompts"),
        (("quality", "--workload", "stdit-tiny", "--recipes", "asq", "--samples", 5000), "samples"),
        (("sample", "--workload", "stdit-tiny", "--recipe", "asq-w8a8", "--prompts", 99999999999), "prompts"),
    ],
)
def test_counts_beyond_their_budget_refused_before_work(capsys, tmp_path, monkeypatch, args, field):
    """``calibrate --prompts 99999999999`` died in torch's allocator with a traceback."""
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    assert "at most 4,096" in refused(capsys, *args, field=field)
    assert time.perf_counter() - t0 < 10 and files_under(tmp_path) == []


GOOD_ROW = "0,gemm,linear,1,64,32,16,1024,32768,1024,4096,2048,"  # step..output_bytes of gemm:64,32,16
M = 64 * 10**12


@pytest.mark.parametrize(
    "row, field",
    [
        (f"0,gemm,linear,1,{M},32,16,1024,32768,1024,4096,2048,", "macs"),
        (f"0,gemm,linear,1,{M},32,16,1024,{M * 512},1024,4096,{M * 32},", "elements"),
        (f"0,gemm,linear,1,{M},32,16,{M * 16},{M * 512},1024,4096,{M * 32},", "input_bytes"),
        (f"0,gemm,linear,1,{M},32,16,{M * 16},{M * 512},1024,{M * 64},2048,", "output_bytes"),
    ],
)
def test_edited_trace_whose_counts_disagree_is_refused(capsys, tmp_path, row, field):
    """A trace edited to m = 6.4e13 but with its old counts simulated 3e12 s 'in 0.00 s' (one tile)."""
    path = tmp_path / "g.csv"
    assert cli(capsys, "trace", "--workload", "gemm:64,32,16", "--out", path)[0] == 0
    text = path.read_text()
    assert GOOD_ROW in text
    path.write_text(text.replace(GOOD_ROW, row))
    refused(capsys, "simulate", "--trace", path, field=f"trace op 'gemm'.{field}")


def test_vector_op_beyond_the_tile_budget_refused(capsys, tmp_path):
    """A vector op edited to 1e15 elements (bytes to match) planned for minutes and 4 GB."""
    path = tmp_path / "g.csv"
    assert cli(capsys, "trace", "--workload", "stdit-tiny", "--out", path)[0] == 0
    text = path.read_text()
    old = "0,y_embedder.y_proj.act,gelu,1,0,0,0,1024,0,0,2048,2048,"
    assert old in text
    e = 10**15
    path.write_text(text.replace(old, f"0,y_embedder.y_proj.act,gelu,1,0,0,0,{e},0,0,{2 * e},{2 * e},"))
    t0 = time.perf_counter()
    line = refused(capsys, "simulate", "--trace", path, field="workload")
    assert "1,000,000 tiles" in line and time.perf_counter() - t0 < 20


def test_optimize_trials_beyond_the_design_point_budget_refused(capsys, tmp_path):
    """``optimize --trials 99999999999`` ran on without end."""
    line = refused(capsys, "optimize", TINY, "--out", tmp_path / "r", "--trials", 99999999999, field="trials")
    assert "2,000,000" in line and not (tmp_path / "r").exists()


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


# ---- --device of the quantization commands: checked before the model is built -----------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--out", "s.safetensors"],
        ["quantize", "--recipe", "asq-w8a8", "--out", "a.safetensors"],
        ["quality", "--recipes", "asq", "--bits", "w8a8"],
        ["verify", "--recipe", "asq-w8a8"],
    ],
)
def test_quantization_commands_refuse_a_device_they_cannot_use(capsys, tmp_path, monkeypatch, argv):
    import torch

    monkeypatch.chdir(tmp_path)
    line = refused(capsys, argv[0], "--workload", "stdit-tiny", *argv[1:], "--device", "tpu", field="device")
    assert "cpu or cuda" in line
    if not torch.cuda.is_available():
        line = refused(capsys, argv[0], "--workload", "stdit-tiny", *argv[1:], "--device", "cuda", field="device")
        assert "no CUDA device" in line
    assert files_under(tmp_path) == []
