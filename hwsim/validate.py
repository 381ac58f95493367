"""The cost model held against independent references: one row per validated component.

Each row: component, model value, reference value, source, ratio (model / reference), band (the
ratio range the row must fall in) and ok. References:

- SRAM banks vs the CACTI 7 table the model is built on (``hwsim/data/cacti7_sram.csv``): the worst
  row per node and quantity (read energy and area: a power-law fit; write energy and leakage: the
  table interpolated, exact at its rows by construction, see ``sram.py``);
- whole-NPU area and energy per MAC vs two published Samsung NPUs rebuilt from their own figures
  (``hwsim/data/npu_calibration.yaml``), band +-25 %;
- memory parts vs the JEDEC / vendor figures they cite (bandwidth per channel from the data rate;
  sustained efficiency below the refresh bound; UFS energy per byte);
- systolic cycles vs SCALE-Sim v3 (``hwsim/data/scalesim_v3_cycles.csv``, when present): every shape
  exact, one row per dataflow.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from hwsim import memory, sram
from hwsim.config import HWConfig, hw_from_dict, hw_to_dict, load_hw
from hwsim.tiling import systolic_cycles

DATA = Path(__file__).with_name("data")
CALIBRATION_YAML = DATA / "npu_calibration.yaml"
SCALESIM_CSV = DATA / "scalesim_v3_cycles.csv"
SRAM_BAND = (0.8, 1.2)
NPU_BAND = (0.75, 1.25)
EXACT = (1.0, 1.0)


@dataclass(frozen=True)
class Row:
    component: str
    model: float
    reference: float
    unit: str
    source: str
    band: tuple

    @property
    def ratio(self) -> float:
        return self.model / self.reference if self.reference else math.inf

    @property
    def ok(self) -> bool:
        lo, hi = self.band
        return lo - 1e-12 <= self.ratio <= hi + 1e-12

    def to_dict(self) -> dict:
        d = asdict(self)
        d["band"] = list(self.band)
        d.update(ratio=self.ratio, ok=self.ok)
        return d


def sram_rows() -> list[Row]:
    """Worst row per node and quantity of the SRAM model against the CACTI table."""
    header = sram.cacti_header()[0]
    commit = header.split("commit ")[1].split(";")[0][:7] if "commit " in header else "?"
    worst: dict = {}
    for r in sram.cacti_rows():
        b = sram.bank(r["node_nm"], r["capacity_bytes"])
        for q in sram.QUANTITIES:
            ratio = getattr(b, q) / r[q]
            key = (r["node_nm"], q)
            if key not in worst or abs(math.log(ratio)) > abs(math.log(worst[key][0])):
                worst[key] = (ratio, r, getattr(b, q))
    rows = []
    for (nm, q), (_, r, model) in sorted(worst.items()):
        how = "power-law fit" if q in sram.POWER_LAW else "table interpolation"
        rows.append(
            Row(
                f"sram {nm:g} nm {q} ({how}, worst row)",
                model,
                r[q],
                q.split("_")[-1],
                f"CACTI 7.0 ({commit}), {int(r['capacity_bytes'])} B bank",
                SRAM_BAND,
            )
        )
    return rows


def calibration_chips() -> dict:
    return yaml.safe_load(CALIBRATION_YAML.read_text())


def chip_config(chip: dict) -> HWConfig:
    """A published NPU as an hwsim config: its MACs, SRAM, clock and node; the rest edge-npu-static's."""
    d = hw_to_dict(load_hw("edge-npu-static"))
    d["name"], d["description"] = "calibration", chip["source"]
    d["mac"].update(chip["mac"])
    w = chip["sram_bytes"] // 3
    d["sram"].update(weight_buffer_bytes=w, activation_buffer_bytes=chip["sram_bytes"] - w, banks=chip["banks"])
    d["clock"]["freq_hz"] = chip["freq_hz"]
    d["tech"]["node_nm"] = chip["node_nm"]
    d["vector"]["lanes"] = chip["vector_lanes"]
    d["dma"]["engines"] = chip["dma_engines"]
    return hw_from_dict(d)


def npu_energy_per_mac_pj(hw: HWConfig, utilization: float) -> float:
    """All-in energy per MAC of a chip running a network at ``utilization`` of its peak: the MAC,
    its operand reads from SRAM (each operand read once per array row / column it feeds) and the
    NPU's leakage spread over the MACs it retires."""
    c = hw.costs
    macs_per_s = hw.mac.pes * hw.clock.freq_hz * utilization
    sram_bytes_per_mac = 1 / hw.mac.rows + 1 / hw.mac.cols
    leak_pj = (c.logic_leakage_w + c.sram_leakage_w) / macs_per_s * 1e12
    return c.mac_pj["int8"] + sram_bytes_per_mac * c.sram_read_pj_per_byte + leak_pj


def npu_rows() -> list[Row]:
    rows = []
    for name, chip in calibration_chips().items():
        hw = chip_config(chip)
        area = sum(hw.costs.area_mm2.values())
        rows.append(Row(f"npu {name} area", area, chip["area_mm2"], "mm2", chip["cite"], NPU_BAND))
        e = npu_energy_per_mac_pj(hw, chip["utilization"])
        rows.append(Row(f"npu {name} energy per MAC", e, 2.0 / chip["tops_per_w"], "pJ", chip["cite"], NPU_BAND))
    return rows


def memory_rows() -> list[Row]:
    rows = []
    for p in memory.DRAM_PARTS.values():
        rows.append(
            Row(
                f"dram {p.name} peak bandwidth per x16 channel",
                p.channel_bandwidth_bytes_per_s / 1e9,
                p.data_rate_mtps * 2 / 1e3,
                "GB/s",
                p.source.split(";")[0],
                EXACT,
            )
        )
        refresh_bound = 1 - 210 / 3900  # tRFCab / tREFI of an 8 Gb LPDDR5 die (JEDEC JESD209-5)
        rows.append(
            Row(
                f"dram {p.name} sustained efficiency (<= refresh bound)",
                p.efficiency,
                refresh_bound,
                "",
                "JEDEC JESD209-5: tRFCab 210 ns per tREFI 3.9 us",
                (0.5, 1.0),
            )
        )
    hw = load_hw("edge-npu")
    rows.append(
        Row(
            "dram edge-npu 4 x16 LPDDR5X-8533 peak",
            hw.dram.bandwidth_bytes_per_s / 1e9,
            68.264,
            "GB/s",
            "JEDEC JESD209-5B: 8,533 MT/s x 64 bits",
            EXACT,
        )
    )
    rows.append(
        Row(
            "flash ufs4.0 read energy",
            memory.FLASH_PARTS["ufs4.0"].read_pj_per_byte,
            2.5 / 6.0e6 * 1e12 * 1e-3,
            "pJ/B",
            "Samsung UFS 4.0 (2022): 6.0 MB/s per mA at VCC 2.5 V",
            (0.99, 1.01),
        )
    )
    rows.append(
        Row(
            "flash ufs3.1 / ufs4.0 energy per byte",
            memory.FLASH_PARTS["ufs3.1"].read_pj_per_byte / memory.FLASH_PARTS["ufs4.0"].read_pj_per_byte,
            1.46,
            "",
            "Samsung UFS 4.0 (2022): 46 % more power-efficient than UFS 3.1",
            (0.99, 1.01),
        )
    )
    return rows


def scalesim_rows(path: Path = SCALESIM_CSV) -> list[Row]:
    """Systolic cycles vs SCALE-Sim v3, one row per dataflow: how many of its GEMM x array shapes
    ``hwsim.tiling.systolic_cycles`` counts exactly as SCALE-Sim does (band: all of them), when the
    dataflow table exists. ``scalesim_mismatches`` lists the shapes that differ."""
    if not path.is_file():
        return []
    total: dict = {}
    for df, _, ok in _scalesim_checks(path):
        n, good = total.get(df, (0, 0))
        total[df] = (n + 1, good + ok)
    return [
        Row(
            f"systolic {df} cycles == SCALE-Sim ({n} GEMM x array shapes)",
            good,
            n,
            "shapes",
            "SCALE-Sim v3 (hwsim/data/scalesim_v3_cycles.csv)",
            EXACT,
        )
        for df, (n, good) in total.items()
    ]


def _scalesim_checks(path: Path):
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    for r in csv.DictReader(lines):
        m, k, n, R, C = (int(r[c]) for c in ("m", "k", "n", "rows", "cols"))
        got = systolic_cycles(m, k, n, R, C, r["dataflow"])
        yield r["dataflow"], (m, k, n, R, C, got, int(r["cycles"])), got == int(r["cycles"])


def scalesim_mismatches(path: Path = SCALESIM_CSV) -> list[tuple]:
    """(dataflow, (m, k, n, rows, cols, hwsim cycles, SCALE-Sim cycles)) of every shape that differs."""
    return [(df, shape) for df, shape, ok in _scalesim_checks(path) if not ok] if path.is_file() else []


def validate() -> list[Row]:
    return sram_rows() + npu_rows() + memory_rows() + scalesim_rows()
