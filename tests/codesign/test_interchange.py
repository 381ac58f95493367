"""SCALE-Sim interchange: its .cfg and topology CSVs read as hwsim inputs, any trace's GEMMs written
as a topology and read back, SCALE-Sim-like reports, and bad SCALE-Sim files refused in one line."""

import csv
import math
from pathlib import Path

import pytest

import hwsim
from codesign.cli import main
from hwsim.interchange import (
    read_scalesim_cfg,
    read_scalesim_topology,
    write_scalesim_topology,
)
from hwsim.tiling import systolic_cycles
from workloads.trace import GEMM_KINDS, Trace

DATA = Path(__file__).parent.parent / "data" / "hwsim"

# SCALE-Sim v3's configs/scale.cfg layout (values changed to be told apart)
CFG = """[general]
run_name = my_array

[architecture_presets]
ArrayHeight:    16
ArrayWidth:     48
IfmapSramSzkB:   64
FilterSramSzkB:  128
OfmapSramSzkB:   32
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 10
Dataflow : ws
MemoryBanks:   1
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[sparsity]
SparsitySupport : false

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""
GEMM_TOPO = "Layer Name, M, N, K,\nfc1, 256, 128, 256,\nodd, 33, 65, 17,\n"
CONV_TOPO = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
    "Inc5b_3x3, 7, 7, 3, 3, 192, 384, 1,\nstrided, 224, 224, 7, 7, 3, 64, 2,\n"
)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_cfg_sets_the_array_buffers_dataflow_and_bandwidth(tmp_path):
    base = hwsim.load_hw("edge-npu")
    hw = read_scalesim_cfg(_write(tmp_path, "a.cfg", CFG), base)
    assert (hw.mac.arrays, hw.mac.rows, hw.mac.cols, hw.mac.dataflow) == (1, 16, 48, "weight_stationary")
    assert hw.sram.weight_buffer_bytes == 128 * 1024
    assert hw.sram.activation_buffer_bytes == (64 + 32) * 1024
    # 10 one-byte words per cycle: the fewest channels of the base part that give 10 GB/s at 1 GHz
    per_channel = base.dram.spec.channel_bandwidth_bytes_per_s
    assert hw.dram.channels == math.ceil(10 * base.clock.freq_hz / per_channel)
    assert hw.dram.bandwidth_bytes_per_s >= 10 * base.clock.freq_hz > hw.dram.bandwidth_bytes_per_s - per_channel
    many = read_scalesim_cfg(_write(tmp_path, "m.cfg", CFG.replace("Bandwidth : 10", "Bandwidth : 100")), base)
    assert many.dram.channels == math.ceil(100 * base.clock.freq_hz / per_channel) > hw.dram.channels
    assert hw.name == "my_array" and hw.vector == base.vector and hw.flash == base.flash
    calc = read_scalesim_cfg(_write(tmp_path, "c.cfg", CFG.replace("USER", "CALC")), base)
    assert calc.dram == base.dram  # CALC: the base preset's DRAM


def test_topology_gemm_and_conv_rows_become_scalesims_gemms(tmp_path):
    t = read_scalesim_topology(_write(tmp_path, "g.csv", GEMM_TOPO))
    assert [(o.name, o.m, o.k, o.n, o.kind) for o in t.ops] == [
        ("fc1", 256, 256, 128, "linear"),
        ("odd", 33, 17, 65, "linear"),
    ]
    assert all(o.w_bits == 8 and o.a_bits == 8 and o.macs == o.m * o.k * o.n for o in t.ops)
    c = read_scalesim_topology(_write(tmp_path, "c.csv", CONV_TOPO))
    # output pixels x (filter h x w x channels) x filters; 224 -> ceil((224 - 7 + 2) / 2) = 110
    assert [(o.m, o.k, o.n) for o in c.ops] == [(25, 9 * 192, 384), (110 * 110, 7 * 7 * 3, 64)]


def test_trace_gemms_round_trip_through_a_topology(tmp_path):
    trace = Trace.load(DATA / "stdit-tiny-asq-w8a8.parquet")
    out = tmp_path / "topo.csv"
    n = write_scalesim_topology(trace, out)
    gemms = [o for o in trace.ops if o.step == 0 and o.kind in GEMM_KINDS]
    assert n == len(gemms) > 10
    back = read_scalesim_topology(out)
    assert [(o.m, o.k, o.n) for o in back.ops] == [(o.m, o.k, o.n) for o in gemms]
    assert [b.name for b in back.ops] == [o.name + (f"_x{o.batch}" if o.batch > 1 else "") for o in gemms]
    assert any(o.batch > 1 for o in gemms)  # attention's per-head products are in the file, once per op
    write_scalesim_topology(back, tmp_path / "again.csv")  # a read topology writes the same rows again
    assert (tmp_path / "again.csv").read_text().splitlines()[1:] == [ln for ln in out.read_text().splitlines()[1:]]


def test_simulate_cfg_and_topology_writes_scalesim_reports(tmp_path, capsys):
    cfg, topo = _write(tmp_path, "a.cfg", CFG), _write(tmp_path, "g.csv", GEMM_TOPO)
    rep = tmp_path / "rep"
    assert (
        main(
            [
                "simulate",
                "--hw",
                str(cfg),
                "--workload",
                str(topo),
                "--base",
                "edge-npu-lite",
                "--scalesim-report",
                str(rep),
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    with open(rep / "COMPUTE_REPORT.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["Layer Name"] for r in rows] == ["fc1", "odd"]
    for r, (m, k, n) in zip(rows, [(256, 256, 128), (33, 17, 65)]):
        per_item = int(r["Stall-free Cycles per item (1 array)"])
        assert per_item == systolic_cycles(m, k, n, 16, 48, "weight_stationary")
        total, stall = int(r["Total Cycles"]), int(r["Stall Cycles"])
        assert total >= per_item and stall == total - per_item
        assert 0 < float(r["Overall Util %"]) <= float(r["Compute Util %"]) <= 100
    with open(rep / "BANDWIDTH_REPORT.csv") as fh:
        bw = list(csv.DictReader(fh))
    assert len(bw) == 2 and float(bw[0]["Avg FILTER DRAM BW"]) > 0
    assert (rep / "HWSIM_PER_OP.csv").read_text().startswith("name,kind")


def test_trace_cli_exports_a_topology(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["trace", "--workload", "gemm:64,32,16", "--scalesim-topology", str(out)]) == 0
    capsys.readouterr()
    assert out.read_text().splitlines() == ["Layer Name, M, N, K,", "gemm, 64, 16, 32,"]


@pytest.mark.parametrize(
    "edit, field",
    [
        (("ArrayHeight:    16", "ArrayHeight:    0"), "a.cfg: [architecture_presets] ArrayHeight"),
        (("ArrayWidth:     48", "ArrayWidth:     wide"), "a.cfg: [architecture_presets] ArrayWidth"),
        (("Dataflow : ws", "Dataflow : rs"), "a.cfg: [architecture_presets] Dataflow"),
        (("Bandwidth : 10", "Bandwidth : ten"), "a.cfg: [architecture_presets] Bandwidth"),
        (("SparsitySupport : false", "SparsitySupport : true"), "a.cfg: [sparsity] SparsitySupport"),
        (("FilterSramSzkB:  128\n", ""), "a.cfg: [architecture_presets] FilterSramSzkB"),
        (("[architecture_presets]", "[arch]"), "a.cfg: section"),
    ],
)
def test_bad_cfg_field_is_one_line_exit_2(edit, field, tmp_path, capsys):
    cfg = _write(tmp_path, "a.cfg", CFG.replace(*edit))
    topo = _write(tmp_path, "g.csv", GEMM_TOPO)
    assert main(["simulate", "--hw", str(cfg), "--workload", str(topo)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("codesign simulate: error: " + field), err


@pytest.mark.parametrize(
    "text, field",
    [
        (GEMM_TOPO.replace("33", "-3"), "g.csv: line 3 M"),
        (GEMM_TOPO.replace("fc1, 256, 128, 256,", "fc1, 256,"), "g.csv: line 2"),
        ("Layer, rows, cols,\nx, 1, 2,\n", "g.csv: header"),
        (CONV_TOPO.replace("7, 7, 3, 3", "2, 2, 3, 3"), "g.csv: line 2 Filter Height/Width"),
    ],
)
def test_bad_topology_is_one_line_exit_2(text, field, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["simulate", "--workload", str(_write(tmp_path, "g.csv", text)), "--scalesim-report", str(rep)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("codesign simulate: error: " + field), err
    assert not rep.exists()  # nothing half-written
