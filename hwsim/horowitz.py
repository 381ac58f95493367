"""Horowitz's 45 nm, 0.9 V per-operation energies and areas ("Computing's energy problem (and what
we can do about it)", ISSCC 2014): the one table the energy model, the area model and the arrays'
conversion lanes read, each carried to the configured node by ``technology.py``. Plain constants, no
imports, so every module of the cost model can import it at the top.
"""

from __future__ import annotations

# energy per operation (pJ)
INT8_MULT_PJ = 0.2
INT8_ADD_PJ = 0.03
INT32_MULT_PJ = 3.1
INT32_ADD_PJ = 0.1
FP16_MULT_PJ = 1.1
FP16_ADD_PJ = 0.4
FP32_ADD_PJ = 0.9

# area per operator (um^2)
INT8_MULT_UM2 = 282.0
INT8_ADD_UM2 = 36.0
INT32_ADD_UM2 = 137.0
FP16_MULT_UM2 = 1640.0
FP16_ADD_UM2 = 1360.0
FP32_MULT_UM2 = 7700.0
FP32_ADD_UM2 = 4184.0

# One vector lane cycle: an FP16 multiply-add; a dynamic-quantization lane cycle: a compare (~add)
# and the quantizer's multiply.
VECTOR_LANE_CYCLE_PJ_45NM = FP16_MULT_PJ + FP16_ADD_PJ
DYN_LANE_CYCLE_PJ_45NM = FP16_MULT_PJ + FP16_ADD_PJ

# Conversion lanes beside the MAC arrays, energy per element. A shift, a rounding increment and a
# clamp compare are costed as 32-bit adds, an int -> float conversion as an FP16 add (assumptions).
EPILOGUE_PJ_45NM = {
    # static int32 accumulator -> int16 codes: x int32 multiplier, add the rounding bit, shift, clamp
    "requant": INT32_MULT_PJ + 3 * INT32_ADD_PJ,
    # the same codes turned to FP16 where they are written (the value the emulator's float reader
    # computes, made once at the source): requant, then int -> float and x scale
    "requant_dequant": INT32_MULT_PJ + 3 * INT32_ADD_PJ + FP16_ADD_PJ + FP16_MULT_PJ,
    # FP16 -> int8 codes (a float GEMM feeding an int8 one): x 1/scale, round, saturate
    "quant": FP16_MULT_PJ + 2 * INT32_ADD_PJ,
    # int16 codes -> FP16 at the array input (a float GEMM reading a static GEMM's codes)
    "dequant": FP16_ADD_PJ + FP16_MULT_PJ,
}


def epilogue_pj_45nm(counts: dict) -> float:
    """45 nm energy of a plan's conversion events (``epi_<kind>``: elements), before the node."""
    return sum(counts.get("epi_" + k, 0) * pj for k, pj in EPILOGUE_PJ_45NM.items())
