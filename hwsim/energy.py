"""Energy model: integer event counts from the simulation x energy per event, plus static power x time.

Per-operation energies are Horowitz's 45 nm, 0.9 V figures ("Computing's energy problem (and what we
can do about it)", ISSCC 2014), carried to the configured node and supply by ``technology.py``
(Stillmaker & Baas 2017 node factors, C V^2 within a node). A MAC also pays its PE's registers, the
wire that brings its operands one PE pitch, and the clock tree and control that every datapath cycle
drives (``NPU_DYNAMIC_OVERHEAD``). SRAM from the CACTI fit (``sram.py``); DRAM and flash from the
parts catalogue (``memory.py``). Static power: logic leakage (area x density), SRAM leakage (CACTI),
DRAM refresh and background.

Everything per event is computed once per hardware config (``HWConfig.costs``), never per tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hwsim import sram as sram_model
from hwsim import technology
from hwsim.area import compute_area_mm2, pe_pitch_mm
from hwsim.horowitz import (
    DYN_LANE_CYCLE_PJ_45NM,
    FP16_MULT_PJ,
    FP32_ADD_PJ,
    INT8_ADD_PJ,
    INT8_MULT_PJ,
    INT32_ADD_PJ,
    VECTOR_LANE_CYCLE_PJ_45NM,
    epilogue_pj_45nm,
)

if TYPE_CHECKING:  # the config holds this model's results (HWConfig.costs): a type, not an import
    from hwsim.config import HWConfig

# One flip-flop bit clocked with new data, 45 nm 0.9 V: 4 fJ, assumption (NanGate 45 nm DFF_X1 order:
# ~1 fF clock pin + internal switching energy of a few fJ per toggle).
DFF_BIT_PJ = 0.004

MAC_DATAPATH_PJ_45NM = {
    "int8": INT8_MULT_PJ + INT32_ADD_PJ,  # 8b x 8b product, 32b accumulate
    # 4b x 4b: multiplier energy ~ bits^2 -> a quarter of 8b; ~16b accumulate ~ 2x an 8b add
    "int4": INT8_MULT_PJ / 4 + 2 * INT8_ADD_PJ,
    "fp16": FP16_MULT_PJ + FP32_ADD_PJ,  # FP16 product, FP32 accumulate
}
# Register bits clocked per MAC: int8 48 (8b in, 8b weight, 32b accumulator); int4 packs two MACs
# into the int8 PE (half each); FP16 64 (16b in, 16b weight, 32b accumulator).
MAC_REGISTER_BITS = {"int8": 48, "int4": 24, "fp16": 64}
# Operand bits that travel one PE pitch per MAC (input and weight forwarded to the neighbour).
MAC_OPERAND_BITS = {"int8": 16, "int4": 8, "fp16": 32}
# NPU-level dynamic energy not modelled event by event (clock tree, sequencer and command queues,
# adder-tree / zero-skip / multi-precision muxing, local operand buffers, DMA engines, feature-map
# compressors), as a multiple of the datapath energy of every MAC and vector-lane cycle: 3.14,
# assumption calibrated on two published NPUs (log-least-squares over both; neither is held out):
# Samsung's 5 nm 6K-MAC NPU (Park et al., ISSCC 2021, 9.5: 13.6 TOPS/W on Inception-V3) and its 4 nm
# 8K-MAC NPU (Park et al., JSSC 58(1), 2023: 11.59 TOPS/W on MobileNetEdgeTPU); validate.py shows
# both. Clock networks alone draw 30-50 % of a synchronous chip's dynamic power, so a multiple of
# the bare multiplier + adder energy is expected.
NPU_DYNAMIC_OVERHEAD = 3.14


@dataclass(frozen=True)
class EventEnergies:
    """Energy per event and static power of one hardware config at its operating point."""

    mac_pj: dict  # precision -> pJ per MAC, all-in (datapath, registers, operand wire, clock/control)
    vector_lane_cycle_pj: float
    dyn_lane_cycle_pj: float
    sram_bank: sram_model.Bank
    sram_read_pj_per_byte: float
    sram_write_pj_per_byte: float
    dram_read_pj_per_byte: float  # bits read + the row activation amortised over its page
    dram_write_pj_per_byte: float
    flash_read_pj_per_byte: float
    area_mm2: dict
    logic_leakage_w: float
    sram_leakage_w: float
    dram_static_w: float  # refresh + background

    @property
    def static_w(self) -> float:
        return self.logic_leakage_w + self.sram_leakage_w + self.dram_static_w

    @property
    def sram_pj_per_byte(self) -> float:
        """Mean of read and write, for closed-form estimates that do not split them."""
        return 0.5 * (self.sram_read_pj_per_byte + self.sram_write_pj_per_byte)

    @property
    def dram_pj_per_byte(self) -> float:
        return 0.5 * (self.dram_read_pj_per_byte + self.dram_write_pj_per_byte)


def mac_pj(hw: HWConfig, precision: str) -> float:
    """All-in energy of one MAC at the config's node and supply."""
    op = hw.op
    logic = (MAC_DATAPATH_PJ_45NM[precision] + MAC_REGISTER_BITS[precision] * DFF_BIT_PJ) * op.dynamic_scale
    wire = MAC_OPERAND_BITS[precision] * pe_pitch_mm(hw) * technology.wire_pj_per_bit_mm(op.vdd_v)
    return (logic + wire) * (1 + NPU_DYNAMIC_OVERHEAD)


def compute_costs(hw: HWConfig) -> EventEnergies:
    """Everything per event for ``hw`` (called once per config through ``hw.costs``)."""
    op = hw.op
    v2 = (op.vdd_v / op.node.vnom_v) ** 2
    bank_bytes = (hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes) / hw.sram.banks
    bank = sram_model.bank(hw.tech.node_nm, bank_bytes)
    area = compute_area_mm2(hw, bank.area_mm2)
    logic_mm2 = sum(v for k, v in area.items() if k != "sram")
    d, f = hw.dram.spec, hw.flash.spec
    act_pj_per_byte = d.activate_pj / d.page_bytes  # streaming DMA opens each page once
    return EventEnergies(
        mac_pj={p: mac_pj(hw, p) for p in MAC_DATAPATH_PJ_45NM},
        vector_lane_cycle_pj=VECTOR_LANE_CYCLE_PJ_45NM * op.dynamic_scale * (1 + NPU_DYNAMIC_OVERHEAD),
        dyn_lane_cycle_pj=DYN_LANE_CYCLE_PJ_45NM * op.dynamic_scale * (1 + NPU_DYNAMIC_OVERHEAD),
        sram_bank=bank,
        sram_read_pj_per_byte=bank.read_pj_per_byte * v2,
        sram_write_pj_per_byte=bank.write_pj_per_byte * v2,
        dram_read_pj_per_byte=8 * d.read_pj_per_bit + act_pj_per_byte,
        dram_write_pj_per_byte=8 * d.write_pj_per_bit + act_pj_per_byte,
        flash_read_pj_per_byte=f.read_pj_per_byte,
        area_mm2=area,
        logic_leakage_w=logic_mm2 * op.node.leakage_mw_per_mm2 * 1e-3 * op.leakage_scale,
        sram_leakage_w=bank.leakage_mw * hw.sram.banks * 1e-3 * op.leakage_scale,
        dram_static_w=(
            d.refresh_mw_per_gib * hw.dram.capacity_bytes / 2**30 + d.background_mw_per_channel * hw.dram.channels
        )
        * 1e-3,
    )


def sram_pj_per_byte(hw: HWConfig) -> float:
    return hw.costs.sram_pj_per_byte


def energy_breakdown_j(hw: HWConfig, counts: dict, latency_s: float, area_mm2: float | None = None) -> dict:
    """Joules per component from the run's integer counts (``area_mm2`` is accepted for callers
    that pass it; static power now comes from the cost model)."""
    e = hw.costs
    lanes = hw.vector.lanes
    pj = {
        "mac_int8": counts.get("macs_int8", 0) * e.mac_pj["int8"],
        "mac_int4": counts.get("macs_int4", 0) * e.mac_pj["int4"],
        "mac_fp16": counts.get("macs_fp16", 0) * e.mac_pj["fp16"],
        "vector": counts.get("vec_cycles", 0) * lanes * e.vector_lane_cycle_pj,
        "dyn_quant": counts.get("dyn_cycles", 0) * lanes * e.dyn_lane_cycle_pj,
        # requant / quant / dequant lanes beside the arrays: datapath energy carried to the node
        # and supply, with the NPU overhead, as the vector lanes' is
        "quant_epilogue": epilogue_pj_45nm(counts) * e.vector_lane_cycle_pj / VECTOR_LANE_CYCLE_PJ_45NM,
        "sram": counts.get("sram_rd", 0) * e.sram_read_pj_per_byte
        + counts.get("sram_wr", 0) * e.sram_write_pj_per_byte,
        "dram": counts.get("dram_rd", 0) * e.dram_read_pj_per_byte
        + counts.get("dram_wr", 0) * e.dram_write_pj_per_byte,
        "flash": counts.get("flash_rd", 0) * e.flash_read_pj_per_byte,
    }
    out = {k: v * 1e-12 for k, v in pj.items()}
    out["leakage"] = (e.logic_leakage_w + e.sram_leakage_w) * latency_s
    out["dram_static"] = e.dram_static_w * latency_s
    return out
