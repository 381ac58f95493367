"""Area model: component counts x cell areas at 45 nm (Horowitz, ISSCC 2014; NanGate 45 nm open cell
library for flip-flops), scaled by ``tech.area_scale``; SRAM from the node's bitcell area and an
array efficiency (CACTI-style periphery overhead)."""
from __future__ import annotations

from hwsim.config import HWConfig

# Horowitz, ISSCC 2014, 45 nm (um^2)
INT8_MULT_UM2 = 282.0
INT8_ADD_UM2 = 36.0
INT32_ADD_UM2 = 137.0
FP16_MULT_UM2 = 1640.0
FP16_ADD_UM2 = 1360.0
FP32_MULT_UM2 = 7700.0
FP32_ADD_UM2 = 4184.0
DFF_UM2 = 4.522  # NanGate FreePDK45 open cell library, DFF_X1
DMA_ENGINE_UM2_45NM = 50_000 * 0.798  # assumption: ~50k NAND2-equivalent gates (NanGate NAND2_X1 0.798 um^2)


def pe_um2_45nm(hw: HWConfig) -> float:
    """One PE: int8 multiplier, int32 accumulator, operand/psum registers, plus its share of the FP16
    datapath (an FP16 unit per 1/rate PEs when FP16 runs at ``rate`` of the int8 MAC rate)."""
    int8 = INT8_MULT_UM2 + INT32_ADD_UM2 + (8 + 8 + 32) * DFF_UM2
    fp16_share = hw.mac.rate("fp16") / hw.mac.rate("int8")
    return int8 + fp16_share * (FP16_MULT_UM2 + FP32_ADD_UM2)


def vector_lane_um2_45nm() -> float:
    return FP16_MULT_UM2 + FP16_ADD_UM2 + 32 * DFF_UM2


def dyn_quant_um2_45nm(hw: HWConfig) -> float:
    """Per lane: abs-max comparator (~16b adder), quantizer multiplier, round/clip (~16b adder);
    one shared FP32 Newton-Raphson reciprocal (two multipliers, one adder)."""
    per_lane = 2 * (INT8_ADD_UM2 + INT32_ADD_UM2) / 2 + FP16_MULT_UM2 + 16 * DFF_UM2
    return hw.vector.lanes * per_lane + 2 * FP32_MULT_UM2 + FP32_ADD_UM2


def area_breakdown_mm2(hw: HWConfig) -> dict:
    a = hw.tech.area_scale
    sram_bits = 8 * (hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes)
    out = {
        "mac_arrays": hw.mac.pes * pe_um2_45nm(hw) * a * 1e-6,
        "sram": sram_bits * hw.tech.sram_bitcell_um2 / hw.tech.sram_array_efficiency * 1e-6,
        "vector": hw.vector.lanes * vector_lane_um2_45nm() * a * 1e-6,
        "dyn_quant": dyn_quant_um2_45nm(hw) * a * 1e-6 if hw.vector.online_reduction else 0.0,
        "dma": hw.dma.engines * DMA_ENGINE_UM2_45NM * a * 1e-6,
    }
    return out
