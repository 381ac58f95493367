"""Widths and on-line ranges of the integer-only datapath that the eager ops (``integer.py``) and the
recorded ones (``program.py``) share."""

import torch

RES_BITS = 24  # integer-only residual stream codes (int32 storage)
RES_HEADROOM = 2.0  # the residual's static scale covers this multiple of its calibrated abs-max
PARAM_BITS = 16  # per-step modulation / gate parameters in int mode


def range_scale(absmax: float, bits: int) -> float:
    """Symmetric scale absmax / qmax as float32 (fixedpoint.symmetric_scale, any width <= 31)."""
    q = 2 ** (bits - 1) - 1
    return float(torch.tensor(absmax / q if absmax > 0 else 1.0, dtype=torch.float32))


def modulated(xf: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float value a modulation approximates (its output range, for a dynamic output scale)."""
    return xf * (1 + scale) + shift


def gated_sum(xf: torch.Tensor, gf: torch.Tensor, yf: torch.Tensor) -> torch.Tensor:
    """The float value a gated residual add approximates (its output range, for a dynamic scale)."""
    return xf + gf * yf
