"""Activation range estimators and step aggregation: the calibration choices a recipe names.

A static activation quantizer needs one range per layer and weight set. It is built in two stages
from the per-step records of ``quantmodel.quant.calibrate`` (optionally on the SmoothQuant-scaled
input ``X / s``):

1. per step, an estimator (``recipe.act_range``) turns that step's calibration data into a range
   ``(lo, hi)`` with ``lo <= 0 <= hi`` (symmetric recipes use ``(-a, a)``):
   - ``absmax``: the largest value seen (the classic min-max / abs-max calibration);
   - ``percentile``: the ``act_percentile``-th percentile of |x| (symmetric) or the two tails of x
     (asymmetric) over the sampled input rows (``in_rows``);
   - ``mse``: the clipping range ``f * absmax``, f on ``MSE_GRID``, minimising the mean squared
     quantization error of the sampled rows at the recipe's activation bits;
   - ``ema``: an exponential moving average over the calibration batches (in calibration order) of
     each batch's max, ``v = m * v + (1 - m) * x`` with the first batch as the start value;
2. the per-step ranges of a weight set's steps are aggregated (``recipe.asq_agg``): ``max`` (every
   step's range covered), ``mean``, ``percentile`` (``agg_percentile``-th) or ``ema`` (in step order).

The SmoothQuant channel statistic (``recipe.smooth_stat``) is ``absmax`` (per step, aggregated the
same way) or ``ema``: ViDiT-Q's momentum statistic, an EMA over the set's calibration batches in
step-major order of each batch's mean over samples of the per-sample channel abs-max.
"""

from __future__ import annotations

import torch

from workloads.errors import ConfigError
from workloads.recipes import Recipe

MSE_GRID = tuple(round(0.30 + 0.025 * i, 3) for i in range(29))  # clipping factors 0.30 .. 1.00
_MIN_RANGE = 1e-8


def ema(seq: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA over dim 0 of ``seq`` [n, ...]: ``v_0 = x_0``, ``v_i = m * v_(i-1) + (1 - m) * x_i``."""
    v = seq[0].double()
    for x in seq[1:]:
        v = momentum * v + (1.0 - momentum) * x.double()
    return v.float()


def aggregate(per_step: torch.Tensor, rule: str, percentile: float = 90.0, momentum: float = 0.95) -> torch.Tensor:
    """Per-step values [S, ...] -> one value [...] by ``rule`` (``max``, ``mean``, ``percentile``, ``ema``)."""
    x = per_step.float()
    if rule == "max":
        return x.amax(dim=0)
    if rule == "mean":
        return x.mean(dim=0)
    if rule == "percentile":
        return torch.quantile(x.double(), percentile / 100.0, dim=0).float()
    if rule == "ema":
        return ema(x, momentum)
    raise ConfigError("recipe.asq_agg", rule, "max, mean, percentile or ema")


def _fq_error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, asymmetric: bool) -> torch.Tensor:
    """Mean squared error of quantizing x [N] with each candidate range (lo, hi) [C] -> [C]."""
    if asymmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = ((hi - lo) / (2**bits - 1)).clamp(min=_MIN_RANGE)
        z = (qmin - torch.round(lo / s)).clamp(qmin, qmax)  # zero_point()'s convention
        q = torch.clamp(torch.round(x[None] / s[:, None]) + z[:, None], qmin, qmax)
        xq = (q - z[:, None]) * s[:, None]
    else:
        qm = 2 ** (bits - 1) - 1
        s = (hi / qm).clamp(min=_MIN_RANGE)
        xq = torch.clamp(torch.round(x[None] / s[:, None]), -qm, qm) * s[:, None]
    return ((xq - x[None]) ** 2).mean(dim=1)


def _rows(stats, layer: str, step: int, s: torch.Tensor | None) -> torch.Tensor:
    if not stats.has(layer, "in_rows"):
        raise ConfigError(
            "calibration stats",
            f"{layer}: no sampled input rows",
            "stats from this version of codesign calibrate (re-run it for percentile / mse / search)",
        )
    r = stats.get(layer, "in_rows")[step].float()  # [R, k]
    return r if s is None else r / s


def _extreme(stats, layer: str, s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step (neg, pos) maxima [S]: of -x and x (floored at 0), on X / s when smoothed."""
    if s is None:
        return stats.get(layer, "in_neg"), stats.get(layer, "in_pos")
    return (stats.get(layer, "in_ch_neg") / s).amax(dim=1), (stats.get(layer, "in_ch_pos") / s).amax(dim=1)


def step_ranges(stats, layer: str, steps: list[int], recipe: Recipe, s: torch.Tensor | None = None):
    """Per-step (neg, pos) range magnitudes [len(steps)] of the layer's input under the recipe's
    estimator (``lo = -neg``, ``hi = pos``; symmetric recipes get ``neg == pos``)."""
    asym, est, bits = recipe.asymmetric, recipe.act_range, recipe.a_bits
    if est == "absmax":
        if not asym:  # the classic records (stats files from before the signed records work)
            a = stats.get(layer, "in0")[steps] if s is None else (stats.get(layer, "in_ch")[steps] / s).amax(dim=1)
            return a.float(), a.float()
        neg, pos = _extreme(stats, layer, s)
        neg, pos = neg[steps].float(), pos[steps].float()
    elif est == "ema":
        pos_b, neg_b = stats.get(layer, "in_ch_pos_b"), stats.get(layer, "in_ch_neg_b")  # [S, B, k]
        if s is not None:
            pos_b, neg_b = pos_b / s, neg_b / s
        pos = torch.stack([ema(pos_b[t].amax(dim=-1), recipe.ema_momentum) for t in steps])
        neg = torch.stack([ema(neg_b[t].amax(dim=-1), recipe.ema_momentum) for t in steps])
    elif est == "percentile":
        q = recipe.act_percentile / 100.0
        pos, neg = [], []
        for t in steps:
            x = _rows(stats, layer, t, s).reshape(-1).double()
            if asym:
                pos.append(torch.quantile(x, q).clamp(min=0))
                neg.append((-torch.quantile(x, 1.0 - q)).clamp(min=0))
            else:
                a = torch.quantile(x.abs(), q)
                pos.append(a)
                neg.append(a)
        pos, neg = torch.stack(pos).float(), torch.stack(neg).float()
    elif est == "mse":
        full_neg, full_pos = _extreme(stats, layer, s)
        grid = torch.tensor(MSE_GRID)
        pos, neg = [], []
        for t in steps:
            x = _rows(stats, layer, t, s).reshape(-1).float()
            hi = full_pos[t].float() if asym else torch.maximum(full_pos[t], full_neg[t]).float()
            lo = -full_neg[t].float() if asym else -hi
            err = _fq_error(x, lo * grid, hi * grid, bits, asym)
            f = grid[int(torch.argmin(err))]  # first minimum: the widest of equal errors is not preferred
            pos.append(hi * f)
            neg.append(-lo * f)
        pos, neg = torch.stack(pos), torch.stack(neg)
    else:
        raise ConfigError("recipe.act_range", est, "absmax, percentile, mse or ema")
    if not asym:
        a = torch.maximum(pos, neg)
        return a, a
    return neg, pos


def act_range(
    stats, layer: str, steps: list[int], recipe: Recipe, s: torch.Tensor | None = None
) -> tuple[float, float]:
    """The weight set's input range ``(lo, hi)`` of a linear: per-step estimates aggregated by
    ``recipe.asq_agg`` (symmetric: ``lo == -hi``)."""
    neg, pos = step_ranges(stats, layer, steps, recipe, s)
    agg = (recipe.asq_agg, recipe.agg_percentile, recipe.ema_momentum)
    hi = float(aggregate(pos, *agg))
    lo = -float(aggregate(neg, *agg))
    return lo, hi


def channel_stat(stats, layer: str, steps: list[int], recipe: Recipe) -> torch.Tensor:
    """SmoothQuant's per-input-channel activation statistic [k] for a weight set's steps."""
    if recipe.smooth_stat == "ema":
        seq = stats.get(layer, "in_ch_bm")[steps]  # [S, B, k], step-major calibration order
        return ema(seq.reshape(-1, seq.shape[-1]), recipe.ema_momentum)
    return aggregate(stats.get(layer, "in_ch")[steps], recipe.asq_agg, recipe.agg_percentile, recipe.ema_momentum)


def zero_point(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Asymmetric scale and zero point of the range [lo, hi] (lo <= 0 <= hi) on the full signed range
    ``[-2^(b-1), 2^(b-1) - 1]``: ``s = (hi - lo) / (2^b - 1)`` (float32), ``z = -2^(b-1) - round(lo / s)``
    clamped to the code range, so that ``q = clamp(round(x / s) + z)`` and ``x ~= (q - z) * s``; 0 is
    exactly the code z. A degenerate range gets scale 1, z at the bottom code."""
    qmin = -(2 ** (bits - 1))
    span = hi - lo
    s = float(torch.tensor(span / (2**bits - 1) if span > 0 else 1.0, dtype=torch.float32))
    z = qmin - int(torch.round(torch.tensor(lo / s, dtype=torch.float64)))
    return s, max(qmin, min(2 ** (bits - 1) - 1, z))


# ---- SmoothQuant alpha search ------------------------------------------------------------------------
def fake_quant_rows(x: torch.Tensor, lo: float | None, hi: float | None, bits: int, asymmetric: bool) -> torch.Tensor:
    """Quantize-dequantize x [R, k] with the static range (lo, hi), or per row (token) when lo is None."""
    if lo is None:
        hi_r = x.amax(dim=1, keepdim=True).clamp(min=0)
        lo_r = x.amin(dim=1, keepdim=True).clamp(max=0)
        if not asymmetric:
            hi_r = torch.maximum(hi_r, -lo_r)
            lo_r = -hi_r
    else:
        lo_r, hi_r = torch.tensor(lo), torch.tensor(hi)
    if asymmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = ((hi_r - lo_r) / (2**bits - 1)).clamp(min=_MIN_RANGE)
        z = (qmin - torch.round(lo_r / s)).clamp(qmin, qmax)
        return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s
    qm = 2 ** (bits - 1) - 1
    s = (hi_r / qm).clamp(min=_MIN_RANGE)
    return torch.clamp(torch.round(x / s), -qm, qm) * s


def search_alpha(
    stats, layer: str, steps: list[int], recipe: Recipe, w: torch.Tensor, stat: torch.Tensor, grid: tuple
) -> tuple[float, torch.Tensor]:
    """(alpha, factors s [k]) of the grid value whose smoothed, quantized layer output on the set's
    sampled calibration rows is closest (mean squared error) to the float layer's; ties keep the
    first grid value. Static recipes quantize the rows with the recipe's range estimator on X / s,
    dynamic ones per token; weights per output channel at the layer's bits."""
    from quantmodel.intarith import fixedpoint
    from quantmodel.quant.smoothing import smooth_factors

    x = torch.cat([_rows(stats, layer, t, None) for t in steps])  # [R, k]
    w = w.float()
    ref = x @ w.t()
    best = None
    for a in grid:
        s = smooth_factors(stat, w, a)
        wq, ws = fixedpoint.quantize_weight_per_channel(w * s[None, :], recipe.w_bits_for(layer))
        if recipe.scheme == "dynamic":
            xq = fake_quant_rows(x / s, None, None, recipe.a_bits, recipe.asymmetric)
        else:
            lo, hi = act_range(stats, layer, steps, recipe, s)
            xq = fake_quant_rows(x / s, lo, hi, recipe.a_bits, recipe.asymmetric)
        err = float(((xq @ (wq.float() * ws[:, None]).t() - ref) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, a, s)
    return best[1], best[2]
