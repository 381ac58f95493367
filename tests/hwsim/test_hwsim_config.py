"""Hardware configs: presets load and validate; every bad field is refused with its dotted name."""

import pytest

import hwsim
from workloads.errors import ConfigError


def test_presets_load_and_round_trip():
    names = hwsim.hw_preset_names()
    assert {"edge-npu", "edge-npu-static", "edge-npu-lite", "edge-npu-pro"} <= set(names)
    for name in names:
        hw = hwsim.load_hw(name)
        assert hwsim.hw_from_dict(hwsim.hw_to_dict(hw)) == hw
    npu = hwsim.load_hw("edge-npu")
    assert 2048 <= npu.mac.pes <= 8192  # "a few thousand" int8 MACs
    assert npu.vector.online_reduction and not hwsim.load_hw("edge-npu-static").vector.online_reduction
    assert hwsim.load_hw("edge-npu-lite").mac.pes < npu.mac.pes < hwsim.load_hw("edge-npu-pro").mac.pes


@pytest.mark.parametrize(
    "field, value",
    [
        ("sram.weight_buffer_bytes", 0),
        ("sram.activation_buffer_bytes", -4096),
        ("mac.rows", 0),
        ("dram.channels", 0),
        ("dram.part", "ddr2-800"),
        ("flash.part", "floppy"),
        ("clock.freq_hz", 0),
        ("clock.freq_hz", 5.0e9),
        ("tech.node_nm", 2),
        ("tech.node_nm", 250),
        ("clock.freq_hz", "fast"),
        ("dma.engines", 0),
        ("mac.dataflow", "diagonal"),
        ("vector.online_reduction", "yes"),
        ("mac.macs_per_pe_cycle.int8", 0),
        ("dram.weight_capacity_bytes", 10**15),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        hwsim.with_overrides(hwsim.load_hw("edge-npu"), {field: value})
    assert e.value.field == field
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)


def test_unknown_and_missing_fields_refused():
    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    d["sram"]["bankz"] = 4
    with pytest.raises(ConfigError) as e:
        hwsim.hw_from_dict(d)
    assert e.value.field == "sram.bankz"
    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    del d["dram"]["part"]
    with pytest.raises(ConfigError) as e:
        hwsim.hw_from_dict(d)
    assert e.value.field == "dram.part"
    with pytest.raises(ConfigError) as e:  # a derived figure is not a field: pick a part instead
        hwsim.with_overrides(hwsim.load_hw("edge-npu"), {"dram.bandwidth_bytes_per_s": 1e11})
    assert e.value.field == "dram.bandwidth_bytes_per_s"
    with pytest.raises(ConfigError) as e:
        hwsim.with_overrides(hwsim.load_hw("edge-npu"), {"dram.speed": 1})
    assert e.value.field == "dram.speed"
    with pytest.raises(ConfigError):
        hwsim.load_hw("no-such-npu")


def test_yaml_file_and_override(tmp_path):
    import yaml

    d = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
    d["name"] = "mine"
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(d))
    hw = hwsim.load_hw(str(p))
    assert hw.name == "mine"
    fast = hwsim.with_overrides(hw, {"dram.channels": 2 * hw.dram.channels})
    assert fast.dram.bandwidth_bytes_per_s == 2 * hw.dram.bandwidth_bytes_per_s
