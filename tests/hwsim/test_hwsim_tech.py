"""Technology, SRAM, memory-part and voltage-frequency models: what a user sweeping the node, the clock
or the parts relies on (a real model behind every axis, refusals with one clear line)."""

import subprocess
import sys

import pytest

import hwsim
from hwsim import memory, sram, technology
from workloads.errors import ConfigError
from workloads.trace import gemm_trace


def _hw(**over):
    return hwsim.with_overrides(hwsim.load_hw("edge-npu"), over)


def test_node_outside_the_model_is_one_line_error():
    for bad in (2, 65):
        with pytest.raises(ConfigError) as e:
            _hw(**{"tech.node_nm": bad})
        msg = str(e.value)
        assert e.value.field == "tech.node_nm" and "\n" not in msg and "between 3 and 45 nm" in msg


def test_cli_refuses_bad_node_with_exit_2(tmp_path):
    import yaml

    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    d["tech"]["node_nm"] = 1
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "codesign.cli",
            "simulate",
            "--workload",
            "stdit-tiny",
            "--hw",
            str(p),
            "--recipe",
            "asq-w8a8",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: tech.node_nm: got 1.0; allowed: a node between 3 and 45 nm" in lines[0]


def test_shrinking_the_node_lowers_energy_and_area_at_a_common_clock():
    """A node sweep is a real model: at one clock every node can run, a smaller node costs less
    energy per MAC, less SRAM energy per byte and less area (45 nm down to 3 nm, in order)."""
    nodes = [45, 32, 20, 14, 10, 7, 5, 4, 3]
    pts = [_hw(**{"tech.node_nm": n, "clock.freq_hz": 4.0e8}) for n in nodes]
    mac = [p.costs.mac_pj["int8"] for p in pts]
    area = [sum(p.costs.area_mm2.values()) for p in pts]
    sram_pj = [p.costs.sram_read_pj_per_byte for p in pts]
    assert mac == sorted(mac, reverse=True) and len(set(mac)) == len(mac)
    assert area == sorted(area, reverse=True) and len(set(area)) == len(area)
    assert sram_pj == sorted(sram_pj, reverse=True)


def test_untabulated_node_lies_between_its_neighbours():
    six, five, seven = technology.node(6), technology.node(5), technology.node(7)
    for f in ("energy", "area", "sram_bitcell_um2", "fnom_hz"):
        lo, hi = sorted((getattr(five, f), getattr(seven, f)))
        assert lo < getattr(six, f) < hi, f


def test_presets_name_a_node_not_scale_factors():
    for name in hwsim.hw_preset_names():
        d = hwsim.hw_to_dict(hwsim.load_hw(name))
        assert set(d["tech"]) == {"node_nm"}
        assert {"part", "channels"} <= set(d["dram"]) and "part" in d["flash"]


def test_voltage_follows_the_clock_and_the_maximum_is_refused():
    n = technology.node(5)
    fmax = technology.max_freq_hz(n)
    volts = [technology.vdd_for(n, f) for f in (0.9e9, 1.0e9, 1.2e9, fmax)]
    assert volts == sorted(volts) and volts[-1] == pytest.approx(n.vmax_v, abs=1e-6)
    assert technology.vdd_for(n, n.fnom_hz) == pytest.approx(n.vnom_v, abs=1e-6)
    assert technology.vdd_for(n, 1e8) == n.vmin_v  # below Vmin's clock: slowed at Vmin
    with pytest.raises(ConfigError) as e:
        _hw(**{"clock.freq_hz": 1.01 * fmax})
    assert e.value.field == "clock.freq_hz" and "at most" in str(e.value) and "\n" not in str(e.value)


def test_clock_sweep_trades_latency_for_energy():
    """Same work at a faster clock: less time, more energy (higher supply: C V^2), as silicon does;
    leakage integrates over less time but cannot undo the V^2."""
    t = gemm_trace(1024, 1152, 4608, w_bits=8, a_bits=8)
    slow = hwsim.simulate(t, _hw(**{"clock.freq_hz": 0.8e9}))
    fast = hwsim.simulate(t, _hw(**{"clock.freq_hz": 1.4e9}))
    assert fast.latency_s < slow.latency_s
    assert fast.energy_j > slow.energy_j
    assert fast.energy_breakdown_j["mac_int8"] > slow.energy_breakdown_j["mac_int8"]


def test_nominal_clock_resolves_to_the_node():
    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    d["clock"]["freq_hz"] = "nominal"
    hw = hwsim.hw_from_dict(d)
    assert hw.clock.freq_hz == technology.node(5).fnom_hz == 1.196e9
    assert hw.op.vdd_v == pytest.approx(0.75, abs=1e-6)


def test_unknown_part_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        _hw(**{"dram.part": "lpddr6"})
    assert e.value.field == "dram.part" and all(p in str(e.value) for p in memory.DRAM_PARTS)
    with pytest.raises(ConfigError) as e:
        _hw(**{"flash.part": "sd-card"})
    assert e.value.field == "flash.part" and all(p in str(e.value) for p in memory.FLASH_PARTS)


def test_parts_set_bandwidth_energy_and_latency():
    hw = hwsim.load_hw("edge-npu")
    assert hw.dram.bandwidth_bytes_per_s == 4 * 8533e6 * 2  # 4 x16 channels of LPDDR5X-8533
    assert 0 < hw.dram.sustained_bandwidth_bytes_per_s < hw.dram.bandwidth_bytes_per_s
    assert hw.flash.queue_depth == 32 and hw.flash.command_latency_s > 0
    lp4x, lp5, lp5x = (memory.DRAM_PARTS[p] for p in ("lpddr4x-4266", "lpddr5-6400", "lpddr5x-8533"))
    assert lp4x.read_pj_per_bit > lp5.read_pj_per_bit > lp5x.read_pj_per_bit
    slower = _hw(**{"flash.part": "ufs3.1"})
    assert slower.flash.bandwidth_bytes_per_s < hw.flash.bandwidth_bytes_per_s
    assert slower.flash.energy_pj_per_byte > hw.flash.energy_pj_per_byte


def test_sram_model_reproduces_every_cacti_row():
    rows = sram.cacti_rows()
    assert len(rows) == 63 and {r["node_nm"] for r in rows} == {22, 32, 45}  # 21 capacities x 3 nodes
    for r in rows:
        b = sram.bank(r["node_nm"], r["capacity_bytes"])
        for q in sram.POWER_LAW:  # a two-parameter fit per node, within +-20 % of all 21 rows
            assert 0.8 <= getattr(b, q) / r[q] <= 1.2, (r, q)
        for q in sram.TABLE:  # interpolated through the rows
            assert getattr(b, q) == pytest.approx(r[q], rel=1e-9), (r, q)
    mid = sram.bank(45, 3 * 65536)  # between two rows: between their values
    lo, hi = sram.bank(45, 131072), sram.bank(45, 262144)
    assert lo.read_pj < mid.read_pj < hi.read_pj and lo.area_mm2 < mid.area_mm2 < hi.area_mm2


def test_sram_between_and_past_cacti_nodes():
    cap = 256 * 1024
    b32, b27, b22 = (sram.bank(n, cap) for n in (32, 27, 22))
    assert b22.area_mm2 < b27.area_mm2 < b32.area_mm2
    b5, b3 = sram.bank(5, cap), sram.bank(3, cap)
    assert b3.area_mm2 < b5.area_mm2 < b22.area_mm2 and b5.read_pj < b22.read_pj
    with pytest.raises(ConfigError):
        sram.bank(65, cap)


def test_costs_are_computed_once_per_config():
    hw = hwsim.load_hw("edge-npu")
    assert hw.costs is hw.costs and hw.op is hw.op
    assert hwsim.hw_from_dict(hwsim.hw_to_dict(hw)) == hw  # the cache is not part of the config
