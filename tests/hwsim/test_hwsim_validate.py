"""hwsim.validate: each published NPU rebuilt from its own figures lands within +-25 % of its area and
energy per MAC; SCALE-Sim rows compare cycles exactly."""

import pytest

from hwsim import validate
from hwsim.tiling import systolic_cycles

CHIPS = validate.calibration_chips()


@pytest.mark.parametrize("name", sorted(CHIPS))
def test_npu_calibration_point_area_and_energy(name):
    chip = CHIPS[name]
    hw = validate.chip_config(chip)
    assert hw.mac.pes == {"samsung-5nm-6k": 6144, "samsung-4nm-8k": 8192}[name]
    area = sum(hw.costs.area_mm2.values())
    assert 0.75 <= area / chip["area_mm2"] <= 1.25, area
    e = validate.npu_energy_per_mac_pj(hw, chip["utilization"])
    assert 0.75 <= e / (2.0 / chip["tops_per_w"]) <= 1.25, e


def test_scalesim_rows_compare_cycles_exactly(tmp_path):
    good = systolic_cycles(256, 1152, 1152, 32, 32, "weight_stationary")
    p = tmp_path / "s.csv"
    p.write_text(
        "# provenance\nm,k,n,rows,cols,dataflow,cycles\n"
        f"256,1152,1152,32,32,weight_stationary,{good}\n"
        f"256,1152,1152,32,32,weight_stationary,{good + 1}\n"
        f"64,64,64,8,8,output_stationary,{systolic_cycles(64, 64, 64, 8, 8, 'output_stationary')}\n"
    )
    rows = {r.component.split()[1]: r for r in validate.scalesim_rows(p)}
    assert (rows["weight_stationary"].model, rows["weight_stationary"].reference) == (1, 2)
    assert not rows["weight_stationary"].ok and rows["output_stationary"].ok
    assert validate.scalesim_mismatches(p) == [("weight_stationary", (256, 1152, 1152, 32, 32, good, good + 1))]
    assert validate.scalesim_rows(tmp_path / "missing.csv") == []
