"""Systolic dataflows: hwsim's closed forms against SCALE-Sim v3's own cycle counts, row by row."""

import csv
import math
from pathlib import Path

import pytest

import hwsim
from hwsim.config import DATAFLOWS
from hwsim.tiling import systolic_cycles
from workloads.errors import ConfigError

TABLE = Path(hwsim.__file__).with_name("data") / "scalesim_v3_cycles.csv"
SCALESIM_DF = {"output_stationary": "os", "weight_stationary": "ws", "input_stationary": "is"}


def _rows() -> list[dict]:
    with open(TABLE) as fh:
        return list(csv.DictReader(ln for ln in fh if not ln.startswith("#")))


def test_table_covers_every_dataflow_and_partial_folds():
    rows = _rows()
    assert {r["dataflow"] for r in rows} == set(DATAFLOWS)
    for df in DATAFLOWS:
        mine = [r for r in rows if r["dataflow"] == df]
        assert len(mine) >= 60
        # folds that do not fill the array, in both array dimensions, and skinny arrays
        assert any(int(r["m"]) % int(r["rows"]) and int(r["n"]) % int(r["cols"]) for r in mine)
        assert any(int(r["k"]) % int(r["rows"]) for r in mine)
        assert {(4, 32), (64, 16), (128, 128)} <= {(int(r["rows"]), int(r["cols"])) for r in mine}
    header = TABLE.read_text().splitlines()[0]
    assert header.startswith("#") and "scalesim 3.0.0" in header


def test_closed_forms_equal_scalesim_on_every_row():
    bad = []
    for r in _rows():
        m, k, n, rows, cols = (int(r[c]) for c in ("m", "k", "n", "rows", "cols"))
        got = systolic_cycles(m, k, n, rows, cols, r["dataflow"])
        if got != int(r["cycles"]):
            bad.append((r, got))
        # SCALE-Sim's COMPUTE_REPORT prints the last cycle's index counted from 0, with no stall
        if got - 1 != int(r["report_total_cycles"]) or int(r["report_stall_cycles"]) != 0:
            bad.append((r, got))
    assert not bad, bad[:5]


def test_issue_shapes_against_scalesim():
    """The GEMM the issue quoted: one 256 x 1152 x 1152 layer, OS, as SCALE-Sim reports it."""
    assert systolic_cycles(256, 1152, 1152, 32, 32, "output_stationary") - 1 == 349_631
    assert systolic_cycles(256, 1152, 1152, 128, 128, "output_stationary") - 1 == 25_307


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_rate_shortens_only_the_streamed_dimension(dataflow):
    """int4 (2 MACs per PE cycle) halves the streamed operand (rounded up); fold count, fill, skew
    and drain stay; fp16 (0.5) doubles it."""
    m, k, n, R, C = 100, 70, 45, 16, 8
    streamed = {"output_stationary": "k", "weight_stationary": "m", "input_stationary": "n"}[dataflow]
    dims = {"m": m, "k": k, "n": n}
    for rate, t in ((2.0, math.ceil(dims[streamed] / 2)), (0.5, 2 * dims[streamed])):
        short = {**dims, streamed: t}
        assert systolic_cycles(m, k, n, R, C, dataflow, rate) == systolic_cycles(
            short["m"], short["k"], short["n"], R, C, dataflow
        )


def test_input_stationary_is_a_config_choice_and_unknown_dataflows_are_refused():
    hw = hwsim.with_overrides(hwsim.load_hw("edge-npu"), {"mac.dataflow": "input_stationary"})
    assert hw.mac.dataflow == "input_stationary"
    with pytest.raises(ConfigError, match="input_stationary"):
        hwsim.with_overrides(hw, {"mac.dataflow": "row_stationary"})
    with pytest.raises(ConfigError, match="mac.dataflow"):
        systolic_cycles(8, 8, 8, 4, 4, "row_stationary")
