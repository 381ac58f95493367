"""`codesign simulate` refuses weights that do not fit their budget, with the number: one line, exit 2."""

from pathlib import Path

import pytest
import yaml

import hwsim
from codesign.cli import main
from hwsim.swap import weight_sets
from workloads.trace import Trace

DATA = Path(__file__).resolve().parents[1] / "data" / "hwsim"


@pytest.mark.parametrize(
    "field, value, need",
    [
        # TSQ+TSW stdit-tiny: float weights + 10 sets of 182,784 B = the recipe's storage
        ("flash.capacity_bytes", 1_000_000, "bytes (the recipe's weight storage)"),
        # one set (+ the float weights) must fit the DRAM given to weights, to be swapped into
        ("dram.weight_capacity_bytes", 100_000, "bytes (float weights + one weight set)"),
    ],
)
def test_weight_budget_refused_with_the_number(field, value, need, tmp_path, capsys):
    d = hwsim.hw_to_dict(
        hwsim.with_overrides(
            hwsim.load_hw("edge-npu"),
            {
                "sram.weight_buffer_bytes": 65536,
                "sram.activation_buffer_bytes": 262144,
                "dram.weight_capacity_bytes": 1_000_000,
                field: value,
            },
        )
    )
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(d))
    trace = DATA / "stdit-tiny-tsq-tsw-w8a8.parquet"
    assert main(["simulate", "--trace", str(trace), "--hw", str(tmp_path / "hw.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"codesign simulate: error: {field}")
    assert str(value) in err and need in err
    float_b, sets = weight_sets(Trace.load(trace))
    want = float_b + sum(sets.values()) if field.startswith("flash") else float_b + max(sets.values())
    assert f">= {want} " in err
