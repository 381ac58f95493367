"""Energy model: integer event counts from the simulation x energy per event.

Per-operation energies are Horowitz's 45 nm figures ("Computing's energy problem (and what we can
do about it)", ISSCC 2014, 0.9 V), scaled to the configured node by ``tech.energy_scale``; DRAM and
flash energies per byte come from the hardware config (their sources are in the preset YAML).
"""
from __future__ import annotations

import math

from hwsim.config import HWConfig

# Horowitz, ISSCC 2014, 45 nm (pJ per operation)
INT8_MULT_PJ = 0.2
INT8_ADD_PJ = 0.03
INT32_ADD_PJ = 0.1
FP16_MULT_PJ = 1.1
FP16_ADD_PJ = 0.4
FP32_ADD_PJ = 0.9
SRAM_8KB_64BIT_READ_PJ = 10.0  # 64-bit read from an 8 KB SRAM (Horowitz: 8 KB 10 pJ, 1 MB 100 pJ)

MAC_PJ_45NM = {
    "int8": INT8_MULT_PJ + INT32_ADD_PJ,  # 8b x 8b product, 32b accumulate
    # 4b x 4b: multiplier energy ~ bits^2 -> a quarter of 8b; ~16b accumulate ~ 2x an 8b add
    "int4": INT8_MULT_PJ / 4 + 2 * INT8_ADD_PJ,
    "fp16": FP16_MULT_PJ + FP32_ADD_PJ,  # FP16 product, FP32 accumulate
}
VECTOR_LANE_CYCLE_PJ_45NM = FP16_MULT_PJ + FP16_ADD_PJ  # one FP16 multiply-add per lane per cycle
DYN_LANE_CYCLE_PJ_45NM = FP16_MULT_PJ + FP16_ADD_PJ  # compare (~add) + quantizer multiply per lane


def sram_pj_per_byte(hw: HWConfig) -> float:
    """Access energy per byte of one bank, CACTI-style sqrt(capacity) growth through Horowitz's
    anchors (8 KB: 10 pJ / 8 B; 1 MB: 100 pJ / 8 B; sqrt(128) = 11.3 vs 10 measured)."""
    bank = (hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes) / hw.sram.banks
    return SRAM_8KB_64BIT_READ_PJ / 8 * math.sqrt(bank / 8192) * hw.tech.energy_scale


def energy_breakdown_j(hw: HWConfig, counts: dict, latency_s: float, area_mm2: float) -> dict:
    """Joules per component from the run's integer counts."""
    # the quantization stages' energy table lives with VECTOR_WORK
    from hwsim.tiling import epilogue_pj_45nm

    s = hw.tech.energy_scale
    pj = {
        "mac_int8": counts.get("macs_int8", 0) * MAC_PJ_45NM["int8"] * s,
        "mac_int4": counts.get("macs_int4", 0) * MAC_PJ_45NM["int4"] * s,
        "mac_fp16": counts.get("macs_fp16", 0) * MAC_PJ_45NM["fp16"] * s,
        "vector": counts.get("vec_cycles", 0) * hw.vector.lanes * VECTOR_LANE_CYCLE_PJ_45NM * s,
        "dyn_quant": counts.get("dyn_cycles", 0) * hw.vector.lanes * DYN_LANE_CYCLE_PJ_45NM * s,
        "quant_epilogue": epilogue_pj_45nm(counts) * s,  # requant / quant / dequant lanes beside the arrays
        "sram": (counts.get("sram_rd", 0) + counts.get("sram_wr", 0)) * sram_pj_per_byte(hw),
        "dram": (counts.get("dram_rd", 0) + counts.get("dram_wr", 0)) * hw.dram.energy_pj_per_byte,
        "flash": counts.get("flash_rd", 0) * hw.flash.energy_pj_per_byte,
    }
    out = {k: v * 1e-12 for k, v in pj.items()}
    out["leakage"] = area_mm2 * hw.tech.leakage_mw_per_mm2 * 1e-3 * latency_s
    return out
