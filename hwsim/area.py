"""Area model: component cells at 45 nm (Horowitz, ISSCC 2014; NanGate 45 nm open cell library for
flip-flops) scaled by the node's logic area factor (``technology.py``), plus the overheads a real MAC
array and NPU carry; SRAM banks from the CACTI fit (``sram.py``).

Overheads (each cited or marked):
- per PE: operand pipeline registers and the accumulator register (flip-flops), the accumulator
  adder, and the PE's share of the FP16 datapath;
- placement: standard-cell rows are not filled solid; ``CELL_UTILIZATION`` is the cell area over the
  placed area (routing channels for the operand distribution wires, clock tree, fillers);
- NPU level: sequencer, command queues, control processor, NoC and clock/power distribution, as a
  multiple of the datapath + SRAM area (``NPU_CONTROL_FRACTION``), calibrated against two published
  NPUs (``hwsim/validate.py`` shows the comparison).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwsim.horowitz import (
    FP16_ADD_UM2,
    FP16_MULT_UM2,
    FP32_ADD_UM2,
    FP32_MULT_UM2,
    INT8_ADD_UM2,
    INT8_MULT_UM2,
    INT32_ADD_UM2,
)

if TYPE_CHECKING:  # the config caches this model's results (HWConfig.costs): a type, not an import
    from hwsim.config import HWConfig

DFF_UM2 = 4.522  # NanGate FreePDK45 open cell library, DFF_X1
DMA_ENGINE_UM2_45NM = 50_000 * 0.798  # assumption: ~50k NAND2-equivalent gates (NanGate NAND2_X1 0.798 um^2)

# Placement utilisation of datapath standard cells: 0.7, assumption (the usual 60-80 % target of a
# place-and-route floorplan; the remainder carries routing, clock buffers and fillers).
CELL_UTILIZATION = 0.7
# PE registers: 8-bit input and 8-bit weight pipeline registers (systolic operand forwarding) and a
# 32-bit accumulator (Samajdar et al., SCALE-Sim, ISPASS 2020: OS PEs hold their output; WS PEs hold
# their weight and forward partial sums) -> 48 flip-flops per PE either way.
PE_REGISTER_BITS = 8 + 8 + 32
# NPU-level blocks not modelled one by one (control CPU, command queues, NoC, feature-map
# compressors, adder-tree / zero-skip / multi-precision muxing, clock and power grid, whitespace), as
# a multiple of the PE arrays + SRAM + vector + DMA area: 2.33, assumption calibrated on two published
# NPUs (both need 2.32-2.35; neither is held out): Samsung's 5 nm NPU (Park et al., ISSCC 2021, 9.5:
# 5.46 mm2 for 6,144 MACs and 3 MB) and its 4 nm NPU (Park et al., JSSC 58(1), 2023: 3.45 TOPS/mm2
# for 8,192 MACs and 2 MB); validate.py shows both.
NPU_CONTROL_FRACTION = 2.33


def pe_um2_45nm(hw: HWConfig) -> float:
    """One PE, placed: int8 multiplier, int32 accumulator adder, pipeline and accumulator registers,
    plus its share of the FP16 datapath (an FP16 unit per 1/rate PEs when FP16 runs at ``rate`` of
    the int8 MAC rate)."""
    int8 = INT8_MULT_UM2 + INT32_ADD_UM2 + PE_REGISTER_BITS * DFF_UM2
    fp16_share = hw.mac.rate("fp16") / hw.mac.rate("int8")
    return (int8 + fp16_share * (FP16_MULT_UM2 + FP32_ADD_UM2)) / CELL_UTILIZATION


def vector_lane_um2_45nm() -> float:
    return (FP16_MULT_UM2 + FP16_ADD_UM2 + 32 * DFF_UM2) / CELL_UTILIZATION


def dyn_quant_um2_45nm(hw: HWConfig) -> float:
    """Per lane: abs-max comparator (~16b adder), quantizer multiplier, round/clip (~16b adder);
    one shared FP32 Newton-Raphson reciprocal (two multipliers, one adder)."""
    per_lane = 2 * (INT8_ADD_UM2 + INT32_ADD_UM2) / 2 + FP16_MULT_UM2 + 16 * DFF_UM2
    return (hw.vector.lanes * per_lane + 2 * FP32_MULT_UM2 + FP32_ADD_UM2) / CELL_UTILIZATION


def sram_mm2(hw: HWConfig) -> float:
    return hw.costs.sram_bank.area_mm2 * hw.sram.banks


def area_breakdown_mm2(hw: HWConfig) -> dict:
    """mm2 per block; computed once per config (``hw.costs`` caches it)."""
    return dict(hw.costs.area_mm2)


def compute_area_mm2(hw: HWConfig, sram_bank_mm2: float) -> dict:
    a = hw.op.area_scale
    out = {
        "mac_arrays": hw.mac.pes * pe_um2_45nm(hw) * a * 1e-6,
        "sram": sram_bank_mm2 * hw.sram.banks,
        "vector": hw.vector.lanes * vector_lane_um2_45nm() * a * 1e-6,
        "dyn_quant": dyn_quant_um2_45nm(hw) * a * 1e-6 if hw.vector.online_reduction else 0.0,
        "dma": hw.dma.engines * DMA_ENGINE_UM2_45NM * a * 1e-6,
    }
    out["control"] = NPU_CONTROL_FRACTION * sum(out.values())
    return out


def pe_pitch_mm(hw: HWConfig) -> float:
    """Side of one placed PE: the distance an operand travels per systolic hop."""
    return (pe_um2_45nm(hw) * hw.op.area_scale) ** 0.5 * 1e-3
