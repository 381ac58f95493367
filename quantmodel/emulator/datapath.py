"""Widths and on-line ranges of the integer-only datapath that the eager ops (``integer.py``) and the
recorded ones (``program.py``) share."""

import struct

import torch

RES_BITS = 24  # integer-only residual stream codes (int32 storage)
RES_HEADROOM = 2.0  # the residual's static scale covers this multiple of its calibrated abs-max
PARAM_BITS = 16  # per-step modulation / gate parameters in int mode


def range_scale(absmax: float, bits: int) -> float:
    """Symmetric scale absmax / qmax as float32 (fixedpoint.symmetric_scale, any width <= 31)."""
    q = 2 ** (bits - 1) - 1
    v = absmax / q if absmax > 0 else 1.0
    try:  # the float64 quotient rounded once to float32 (as a float32 tensor holds it), without a tensor
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:  # beyond float32's range: torch's conversion gives inf
        return float(torch.tensor(v, dtype=torch.float32))


def modulated(xf: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float value a modulation approximates (its output range, for a dynamic output scale)."""
    return xf * (1 + scale) + shift


def gated_sum(xf: torch.Tensor, gf: torch.Tensor, yf: torch.Tensor) -> torch.Tensor:
    """The float value a gated residual add approximates (its output range, for a dynamic scale)."""
    return xf + gf * yf
