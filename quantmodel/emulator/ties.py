"""The tie test of ``codesign verify``: inputs that land exactly on x.5 at every rounding site of the
emulator, checked against round half to even computed here in exact integer / rational arithmetic.

Why inside ``verify``: the requantizer's multipliers come from calibrated scales, so ``acc * m`` is
almost never an exact half multiple of ``2**s`` in a real run, and activation values almost never
land on a half code either; a rounding-mode bug (half away from zero, half up) then passes every
comparison of a sampling loop. The crafted inputs below use constants whose ties are reachable
(multipliers with power-of-two factors, scales whose float32 reciprocal is a power of two) and go
through the same entry points the emulator calls: the C loops and the torch fallbacks.

Sites (each counts its inputs, how many of them are exact ties, and the mismatches):
- ``requant.*``: int32 accumulator x int32 multiplier, one rounding right shift (per channel and per
  tensor; the C loop, the torch path with its near-tie recomputation, the fused GEMM + bias +
  requantization of a prepared linear layer, ``fixedpoint.requantize``);
- ``act_quant.*``: float -> int activation quantization (float32 and fp16 inputs in C, the torch path,
  the fp16 smoothing multiply fused with it, LayerNorm + modulate fused with it, the attention
  output's head merge fused with it);
- ``dyn_quant.*``: per-token dynamic quantization (C and torch);
- ``weight_quant``, ``multiplier``: the offline roundings of the quantizer.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from quantmodel.intarith import ckernels, fixedpoint, intgemm, intops

QO = 2**15 - 1  # int16 GEMM outputs


def _rhe(v: Fraction | float) -> int:
    """Round half to even of an exact value (python's round on a Fraction or float is half to even)."""
    return round(Fraction(v))


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


class _Site:
    def __init__(self) -> None:
        self.cases = self.ties = self.mismatches = 0

    def add(self, got: list[int], want: list[int], exact: list[Fraction]) -> None:
        self.cases += len(want)
        self.ties += sum(1 for v in exact if v.denominator == 2)
        self.mismatches += sum(1 for g, w in zip(got, want, strict=True) if int(g) != w)

    def to_dict(self) -> dict:
        return {"cases": self.cases, "ties": self.ties, "mismatches": self.mismatches}


# ---- requantization ------------------------------------------------------------------------------------
# per channel: (multiplier, shift); m with power-of-two factors so that acc * m / 2**(31 + shift) can be x.5.
# shift 20 puts the channel on the Requantizer's near-tie (recomputed) path for int16 outputs.
_CHANNELS = [(2**30, 0), (2**30, 1), (2**30, 3), (3 * 2**28, 0), (5 * 2**28, 2), (2**30, 20), (3 * 2**28, 21)]


def _accumulators() -> torch.Tensor:
    """acc [R, C] int32: small odd / even values (ties of the small shifts) and offsets of 2**20 (ties of
    the large ones), both signs."""
    small = [v for v in range(-40, 41)]
    big = [(2 * j + 1) * 2**20 for j in range(-6, 6)] + [(2 * j + 1) * 2**21 for j in range(-3, 3)]
    big += [(2 * j + 1) * 2**19 for j in range(-3, 3)]
    vals = torch.tensor(small + big, dtype=torch.int64)
    return vals[:, None].expand(-1, len(_CHANNELS)).contiguous().to(torch.int32)


def _requant_expected(acc: torch.Tensor, chans: list[tuple[int, int]], lo: int, hi: int):
    exact = [
        [Fraction(int(a) * m, 2 ** (31 + sh)) for a, (m, sh) in zip(row, chans, strict=True)] for row in acc.tolist()
    ]
    want = [[_clamp(_rhe(v), lo, hi) for v in row] for row in exact]
    return [v for row in exact for v in row], [v for row in want for v in row]


def _requant_sites(sites: dict) -> None:
    acc = _accumulators()
    m = torch.tensor([c[0] for c in _CHANNELS], dtype=torch.int64)
    sh = torch.tensor([c[1] for c in _CHANNELS], dtype=torch.int64)
    exact, want = _requant_expected(acc, _CHANNELS, -QO, QO)
    rq = fixedpoint.Requantizer(m, sh, -QO, QO, torch.int16)
    sites["requant.per_channel"].add(rq(acc).reshape(-1).tolist(), want, exact)
    sites["requant.per_channel_torch"].add(rq(acc.to(torch.int64)).reshape(-1).tolist(), want, exact)
    sites["requant.function"].add(fixedpoint.requantize(acc, m, sh, -QO, QO).reshape(-1).tolist(), want, exact)
    for j, (mj, sj) in enumerate(_CHANNELS):  # per tensor: one channel's constants for all
        col = acc[:, j].contiguous()
        e, w = _requant_expected(col[:, None], [(mj, sj)], -QO, QO)
        prq = fixedpoint.Requantizer(mj, sj, -QO, QO, torch.int16)
        sites["requant.per_tensor"].add(prq(col).tolist(), w, e)
        sites["requant.per_tensor_torch"].add(prq(col.to(torch.int64)).tolist(), w, e)
    # a prepared linear layer: K = 1, weights 1, the accumulator set by the int32 bias plus a small input
    x = torch.arange(-3, 4, dtype=torch.int8)[:, None]  # [7, 1]
    for base in acc[:, 0].tolist()[::3]:
        bias = torch.full((len(_CHANNELS),), int(base), dtype=torch.int32)
        gemm = intgemm.PreparedLinear(torch.ones(1, len(_CHANNELS), dtype=torch.int8), bias, rq, "ties")
        a = (x.to(torch.int64) + base).expand(-1, len(_CHANNELS)).to(torch.int32)
        e, w = _requant_expected(a, _CHANNELS, -QO, QO)
        sites["requant.gemm"].add(gemm(x).reshape(-1).tolist(), w, e)


# ---- activation quantization ----------------------------------------------------------------------------
_ACT_SCALES = (1.0, 0.5, 0.25, 2.0)  # float32 reciprocals 1, 2, 4, 0.5: x * r is exact


def _act_values(scale: float) -> torch.Tensor:
    """float32 values whose quotient by ``scale`` is k + 0.5 (and some that are not), both signs."""
    halves = [(k + 0.5) * scale for k in range(-20, 20)]
    return torch.tensor(
        halves + [k * scale for k in range(-5, 6)] + [130.5 * scale, -300.5 * scale], dtype=torch.float32
    )


def _act_expected(x: torch.Tensor, scale: float, bits: int):
    q = 2 ** (bits - 1) - 1
    r = fixedpoint.act_reciprocal(scale)
    exact = [Fraction(float(np.float32(v * r))) for v in x.double().tolist()]  # the one float32 product
    return exact, [_clamp(_rhe(v), -q, q) for v in exact]


def _act_sites(sites: dict) -> None:
    dll = ckernels.lib()
    for s in _ACT_SCALES:
        x = _act_values(s)
        exact, want = _act_expected(x, s, 8)
        aq = fixedpoint.ActQuantizer(s, 8)
        sites["act_quant.float32"].add(aq(x).tolist(), want, exact)
        sites["act_quant.fp16"].add(aq(x.half()).tolist(), want, exact)  # every value here is an fp16 value
        strided = torch.stack([x, x], dim=1)[:, 0]  # not contiguous: the torch ops
        sites["act_quant.torch"].add(aq(strided).tolist(), want, exact)
        sm = fixedpoint.smooth_quantize_fp16(aq, x.half()[None, :], torch.ones(x.numel()))
        if sm is not None:
            sites["act_quant.smooth_fp16"].add(sm.reshape(-1).tolist(), want, exact)
        if dll is not None:  # the attention output's head merge with the proj's quantizer, one C pass
            o = x.reshape(1, 1, 1, -1).contiguous()  # [B, H, N, D]
            q = torch.empty((1, 1, x.numel()), dtype=torch.int8)
            dll.qm_merge_heads_quant(o.data_ptr(), 1, 1, 1, x.numel(), aq.recip, float(aq.qmax), q.data_ptr())
            sites["act_quant.merge_heads"].add(q.reshape(-1).tolist(), want, exact)
    # LayerNorm + modulate + quantizer: rows [256, -256] normalise to exactly +-1; shifts put them on halves
    b = 12
    x = torch.tensor([[256.0, -256.0]], dtype=torch.float16).expand(b, 1, 2).contiguous()  # [B, 1, 2]
    shift = torch.tensor([[k + 0.5, -(k + 0.5)] for k in range(b)], dtype=torch.float32)[:, None, :]
    scale = torch.zeros(b, 1, 2)
    out = intops.layernorm_modulate_fp16(x, shift, scale, eps=1e-6, aq=fixedpoint.ActQuantizer(1.0, 8))
    exact = [Fraction(v) for k in range(b) for v in (1 + k + 0.5, -(1 + k + 0.5))]
    sites["act_quant.layernorm_modulate"].add(out.reshape(-1).tolist(), [_rhe(v) for v in exact], exact)


# ---- dynamic per-token, weights, multipliers ------------------------------------------------------------
def _offline_sites(sites: dict) -> None:
    rows = torch.tensor(
        [[127.0] + [k + 0.5 for k in range(-8, 8)], [254.0] + [2 * k + 1 for k in range(-8, 8)]], dtype=torch.float32
    )  # scales 1 and 2: every other value is a half code
    exact = [Fraction(float(v)) / (1 if r == 0 else 2) for r in range(2) for v in rows[r].tolist()]
    want = [_clamp(_rhe(v), -127, 127) for v in exact]
    dll = ckernels.lib()
    if dll is not None:
        q = torch.empty(rows.shape, dtype=torch.int8)
        s = torch.empty(2, dtype=torch.float32)
        dll.qm_dyn_quant(
            rows.data_ptr(), ckernels.IN_KIND_FLOAT[torch.float32], 2, rows.shape[1], 127, q.data_ptr(), s.data_ptr()
        )
        sites["dyn_quant.c"].add(q.reshape(-1).tolist(), want, exact)
    s_row = fixedpoint.symmetric_scale(rows.abs().amax(dim=1).double(), 8)
    sites["dyn_quant.torch"].add(fixedpoint.quantize(rows, s_row, 8, axis=0).reshape(-1).tolist(), want, exact)
    wq, _ = fixedpoint.quantize_weight_per_channel(rows, 8)
    sites["weight_quant"].add(wq.reshape(-1).tolist(), want, exact)
    reals = [(2**31 + 2 * j + 1) / 2**32 for j in range(16)]  # m * 2**31 = 2**30 + j + 0.5
    exact = [Fraction(r) * 2**31 for r in reals]
    got = [fixedpoint.quantize_multiplier(r) for r in reals]
    # compare the multiplier at shift 0 (all these reals have exponent 0); a carry to 2**31 renormalises
    sites["multiplier"].add([m * 2 ** (-sh) for m, sh in got], [_rhe(v) for v in exact], exact)


SITES = (
    "requant.per_channel",
    "requant.per_channel_torch",
    "requant.per_tensor",
    "requant.per_tensor_torch",
    "requant.function",
    "requant.gemm",
    "act_quant.float32",
    "act_quant.fp16",
    "act_quant.torch",
    "act_quant.smooth_fp16",
    "act_quant.merge_heads",
    "act_quant.layernorm_modulate",
    "dyn_quant.c",
    "dyn_quant.torch",
    "weight_quant",
    "multiplier",
)


def run_ties() -> dict:
    """``{site: {cases, ties, mismatches}}`` for every rounding site (sites whose C loop is not built are
    absent); ``ok`` is true when every site saw ties and no mismatch."""
    sites = {s: _Site() for s in SITES}
    _requant_sites(sites)
    _act_sites(sites)
    _offline_sites(sites)
    out = {k: v.to_dict() for k, v in sites.items() if v.cases}
    ok = all(v["ties"] > 0 and v["mismatches"] == 0 for v in out.values())
    return {"sites": out, "ok": ok}
