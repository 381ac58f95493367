"""An independent re-derivation of every constant of a quantized-model artifact, for ``codesign verify``.

``verify`` checks the integer datapath against a float64 reference, but on constants read from the
artifact: a bug in the quantizer (a rolled scale vector, a wrong bias, a smoothing factor of the wrong
layer) would pass it. This module recomputes each constant from the two things the artifact is
defined by, the float weights and the calibration statistics, and compares them exactly (integers
equal, float32 values bit for bit), layer by layer.

It is written apart from ``quantmodel.quant.artifact`` and does not call its helpers, nor those of
``quantmodel.intarith.fixedpoint`` or ``quantmodel.quant.smoothing``: the arithmetic is spelled out here
from the documented definitions (docs/verify.md), in a different formulation where one exists:

- per-channel weights: numpy float64 ``absmax / qmax`` rounded once to float32, codes
  ``round_half_even(w / scale)`` in float64 (numpy's ``rint``);
- multiplier and shift of a requantizer: exact rational arithmetic (``fractions.Fraction``) on the
  float64 real scale, the exponent from integer bit lengths (the artifact uses ``frexp``);
- SmoothQuant factors ``max|X_j|^a / max|W_j|^(1-a)``: float32 as the artifact stores them. Only the
  power is torch's float32 ``pow`` (numpy's float32 power is another libm and may differ in the last
  bit); the clamps, the quotient and the dead-channel rule are written here;
- static activation ranges, V-row folds, int32 biases, the integer-only mode's abs-max tables: numpy
  float32 / float64 steps in the order the quantizer's definition gives (docs/verify.md);
- the calibrated step split: an own dynamic programme over the same cost; since two optimal splits
  may tie, the artifact's split is accepted when its cost equals the optimum (to 1e-9 relative).

What it does not prove: that the definitions themselves are the right ones (that is the final-sample
SQNR baseline's job), nor anything about the calibration statistics (they are the input).

Calibration options (``workloads.recipes``): per-layer alphas and weight bits, zero points (scale
``(hi - lo) / (2^b - 1)``, ``z = clamp(-2^(b-1) - rint(lo / s))``, the bias ``rint(b / acc) - z * colsum``)
are re-derived here. Two inputs are taken, not re-derived, and the report lists them
(``taken_from``): a searched alpha is read back from the artifact (its factors, codes and scales are
then re-derived), and the range of a non-default estimator, aggregation or smoothing statistic comes
from ``quantmodel.quant.estimators`` (unit-tested against hand-computed cases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import nn

OUT_CODE_MAX = 2**15 - 1  # int16 GEMM outputs (the vector unit reads FP16-sized values)
QK_CODE_MAX = 2**23 - 1  # QK^T scores: 24-bit codes
HEADROOM = 2.0  # output scales cover twice the calibrated range
MIN_RANGE = 1e-8  # the attention products' floor on a range never seen
SMOOTH_EPS = 1e-5  # SmoothQuant's clamp on both maxima
# consumer suffix -> (producer suffix, first V row block): proj inputs are softmax(QK^T) V
_VROW = {
    ".attn.proj": (".attn.qkv", 2),
    ".attn_temp.proj": (".attn_temp.qkv", 2),
    ".cross_attn.proj": (".cross_attn.kv_linear", 1),
}
_MODULATE = (".attn.qkv", ".mlp.fc1")
_TEXT = (".cross_attn.kv_linear",)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).astype(np.float32)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def code_max(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def scale_of(absmax, bits: int) -> np.ndarray:
    """float32 scale ``absmax / qmax`` (float64 quotient rounded once); a zero range gets 1.0."""
    a = np.asarray(absmax, dtype=np.float64)
    return np.where(a > 0, a / code_max(bits), 1.0).astype(np.float32)


def multiplier_shift(real: float) -> tuple[int, int]:
    """(m, shift) with ``real ~= m * 2**-(31 + shift)``, m in [2**30, 2**31), m rounded half to even,
    by exact rational arithmetic: k = 31 + shift is the power with 2**30 <= real * 2**k < 2**31."""
    if real == 0.0:
        return 0, 0
    r = Fraction(real)
    k = 30 - (r.numerator.bit_length() - r.denominator.bit_length())
    while r * 2**k >= 2**31:
        k -= 1
    while r * 2**k < 2**30:
        k += 1
    v = r * 2**k
    m = round(v)  # Fraction.__round__: half to even, exact
    if m == 2**31:
        m, k = 2**30, k - 1
    return int(m), k - 31


def fold_of(name: str, quantized: set[str]) -> str:
    """Where a layer's SmoothQuant factors go (docs/verify.md): modulate, vrows, text or mul."""
    if name.endswith(_MODULATE):
        return "modulate"
    for sfx, (prod, _) in _VROW.items():
        if name.endswith(sfx):
            return "vrows" if name[: -len(sfx)] + prod in quantized else "mul"
    if name.endswith(_TEXT):
        return "text"
    return "mul"


def smoothing(x_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """float32 factors [k] from the per-input-channel activation abs-max [k] and weights [n, k]."""
    xa = x_absmax.astype(np.float32)
    wa = np.abs(w.astype(np.float32)).max(axis=0)
    num = torch.from_numpy(np.maximum(xa, np.float32(SMOOTH_EPS))).pow(alpha).numpy()
    den = torch.from_numpy(np.maximum(wa, np.float32(SMOOTH_EPS))).pow(1 - alpha).numpy()
    return np.where(xa > 0, num / den, np.float32(1.0)).astype(np.float32)


def weight_codes(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes [n, k], float32 scales [n]) of symmetric per-output-channel quantization."""
    w64 = w.astype(np.float64)
    scale = scale_of(np.abs(w64).max(axis=1), bits)
    q = np.clip(np.rint(w64 / scale.astype(np.float64)[:, None]), -code_max(bits), code_max(bits))
    return q.astype(np.int8), scale


# ---- step split -----------------------------------------------------------------------------------------
def _split_cost(ranges: np.ndarray, lo: int, hi: int) -> float:
    r = np.maximum(ranges[:, lo:hi].astype(np.float64), MIN_RANGE)
    return float(((r.max(axis=1, keepdims=True) / r) ** 2).sum())


def best_split_cost(ranges: np.ndarray, k: int) -> float:
    """Least total cost of K contiguous groups over the steps (ranges [layers, steps])."""
    n = ranges.shape[1]
    k = min(k, n)
    best = {(0, 0): 0.0}
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            best[(g, j)] = min(
                best[(g - 1, i)] + _split_cost(ranges, i, j) for i in range(g - 1, j) if (g - 1, i) in best
            )
    return best[(k, n)]


def split_cost_of(ranges: np.ndarray, step_to_set: list[int]) -> float:
    total, start = 0.0, 0
    for s in range(1, len(step_to_set) + 1):
        if s == len(step_to_set) or step_to_set[s] != step_to_set[start]:
            total += _split_cost(ranges, start, s)
            start = s
    return total


# ---- the re-derivation --------------------------------------------------------------------------------
@dataclass
class RederiveReport:
    """Per-layer mismatches (``{layer: [field, ...]}``), counts, and what could not be re-derived."""

    compared: int = 0
    mismatches: dict = field(default_factory=dict)
    not_rederived: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # constants the definition needs that the artifact lacks
    problems: list = field(default_factory=list)  # meta-level findings (step split, layer list, folds)
    taken_from: dict = field(default_factory=dict)  # input -> where it came from (not re-derived here)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.problems)

    def to_dict(self) -> dict:
        return {
            "compared": self.compared,
            "mismatched_constants": sum(len(v) for v in self.mismatches.values()),
            "mismatches": {k: sorted(v) for k, v in sorted(self.mismatches.items())},
            "missing": sorted(self.missing),
            "problems": list(self.problems),
            "not_rederived": sorted(self.not_rederived),
            "taken_from": dict(sorted(self.taken_from.items())),
            "ok": self.ok,
        }


def _set_max(stats, layer: str, fld: str, steps: list[int]) -> np.ndarray:
    return _np(stats.get(layer, fld))[steps].max(axis=0)


class _Deriver:
    """Expected tensors of one artifact, keyed as the artifact keys them (``set/layer/field``)."""

    def __init__(self, model: nn.Module, recipe, stats, meta: dict, tensors: dict | None = None):
        self.recipe, self.stats = recipe, stats
        self.tensors = tensors or {}
        self.taken_from: dict[str, str] = {}
        self.default_stats = (recipe.act_range, recipe.asq_agg, recipe.smooth_stat) == ("absmax", "max", "absmax")
        self.mods = dict(model.named_modules())
        self.linears = [
            n for n, m in model.named_modules() if isinstance(m, nn.Linear) and recipe.quantizes(n, "linear")
        ]
        self.static = recipe.scheme != "dynamic"
        qset = set(self.linears)
        self.folds = {n: fold_of(n, qset) for n in self.linears} if recipe.smoothing else {}
        self.expected: dict[str, np.ndarray] = {}
        self.meta = meta

    def weights(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        lin = self.mods[name]
        w = _np(lin.weight).astype(np.float32)
        b = _np(lin.bias).astype(np.float32) if lin.bias is not None else np.zeros(w.shape[0], np.float32)
        return w, b

    def one_set(self, g: int, steps: list[int], wg: int | None = None, wsteps: list[int] | None = None) -> None:
        """Scale set ``g`` (its ``steps``) of weight set ``wg`` (the steps ``wsteps`` of all the scale
        sets sharing it: tsq, groupsK-tsq); by default each scale set is its own weight set."""
        wg, wsteps = (g, steps) if wg is None else (wg, wsteps)
        vfactor, rows = {}, {n: np.ones(self.mods[n].out_features, np.float32) for n in self.linears}
        for n in self.linears:  # proj factors first: they divide the V rows of their producer
            if self.folds.get(n) == "vrows":
                sfx = next(s for s in _VROW if n.endswith(s))
                prod, part = n[: -len(sfx)] + _VROW[sfx][0], _VROW[sfx][1]
                s = self.factors(wg, n, wsteps, self.weights(n)[0])
                vfactor[n] = s
                c = s.size
                rows[prod][part * c : (part + 1) * c] = rows[prod][part * c : (part + 1) * c] / s
        for n in self.linears:
            self.linear((wg, g), n, (wsteps, steps), rows[n], vfactor.get(n))
        if self.static:
            for n in self.meta.get("matmuls", []):
                self.matmul(g, n, steps, vfactor)
            for key, t in self.stats.tensors.items():
                layer, fld = key.split(":")
                if "blocks." in layer and fld in ("in0", "in1", "out"):
                    self.expected[f"{g}/{layer}/{fld}_absmax"] = _np(t)[steps].max(axis=0).reshape(1).astype(np.float32)

    def alpha(self, g: int, n: str) -> float:
        """The layer's alpha: the recipe's, or (search) the artifact's, mapped back onto the grid."""
        from workloads.recipes import ALPHA_GRID

        a = self.recipe.alpha_for(n)
        if a != "search":
            return float(a)
        self.taken_from["alpha (searched)"] = "the artifact's alpha tensors"
        t = self.tensors.get(f"{g}/{n}/alpha")
        got = float(t) if t is not None else float("nan")
        return min(ALPHA_GRID, key=lambda v: abs(v - got))

    def channel_stat(self, n: str, steps: list[int]) -> np.ndarray:
        if self.recipe.smooth_stat == "absmax" and self.recipe.asq_agg == "max":
            return _set_max(self.stats, n, "in_ch", steps)
        from quantmodel.quant import estimators

        self.taken_from["smoothing statistic"] = "quantmodel.quant.estimators.channel_stat"
        return _np(estimators.channel_stat(self.stats, n, steps, self.recipe))

    def factors(self, g: int, n: str, steps: list[int], w: np.ndarray) -> np.ndarray:
        a = self.alpha(g, n)
        self.expected[f"{g}/{n}/alpha"] = _f32([a])
        return smoothing(self.channel_stat(n, steps), w, a)

    def input_range(self, n: str, steps: list[int], in_ch, s) -> tuple[float, float]:
        """(lo, hi) of a static layer's input: the definition's abs-max ranges, or the estimators'."""
        r = self.recipe
        if self.default_stats and not r.asymmetric:
            hi = float((in_ch / s).max()) if s is not None else float(_set_max(self.stats, n, "in0", steps))
            return -hi, hi
        if self.default_stats:  # asymmetric abs-max: the signed extremes, floored at 0
            if s is None:
                pos, neg = _set_max(self.stats, n, "in_pos", steps), _set_max(self.stats, n, "in_neg", steps)
            else:
                pos = (_set_max(self.stats, n, "in_ch_pos", steps).astype(np.float32) / s).max()
                neg = (_set_max(self.stats, n, "in_ch_neg", steps).astype(np.float32) / s).max()
            return -float(neg), float(pos)
        from quantmodel.quant import estimators

        self.taken_from["activation range"] = "quantmodel.quant.estimators.act_range"
        return estimators.act_range(self.stats, n, steps, r, None if s is None else torch.from_numpy(s))

    def linear(self, sets: tuple, n: str, step_sets: tuple, rs: np.ndarray, s: np.ndarray | None) -> None:
        """Weight fields of weight set ``sets[0]`` (from the steps ``step_sets[0]``), scales and
        requantizer of scale set ``sets[1]`` (from ``step_sets[1]``)."""
        (wg, g), (wsteps, steps) = sets, step_sets
        wpre, pre, r = f"{wg}/{n}/", f"{g}/{n}/", self.recipe
        w, b = self.weights(n)
        w = w * rs[:, None]  # float32 products
        b = b * rs
        in_ch = None
        if r.smoothing:
            in_ch = _set_max(self.stats, n, "in_ch", steps).astype(np.float32)
            if s is None:
                s = self.factors(wg, n, wsteps, w)
            w = w * s[None, :]
            self.expected[wpre + "smooth"] = s
        q, w_scale = weight_codes(w, r.w_bits_for(n))
        self.expected[wpre + "weight_q"] = q
        self.expected[wpre + "w_scale"] = w_scale
        if not self.static:
            self.expected[wpre + "bias"] = b.astype(np.float32)
            return
        lo, hi = self.input_range(n, steps, in_ch, s if r.smoothing else None)
        z = 0
        if r.asymmetric:  # full signed range with a zero point
            qmin = -(2 ** (r.a_bits - 1))
            span = hi - lo
            x_scale = float(_f32(span / (2**r.a_bits - 1) if span > 0 else 1.0))
            z = int(np.clip(qmin - np.rint(lo / x_scale), qmin, -qmin - 1))
            self.expected[pre + "x_zero"] = np.array([z], dtype=np.int32)
        else:
            x_scale = float(scale_of(hi, r.a_bits))
        y_range = float((_set_max(self.stats, n, "out_ch", steps).astype(np.float32) * np.abs(rs)).max())
        y_scale = float(scale_of(y_range * HEADROOM, 16))
        acc_scale = x_scale * w_scale.astype(np.float64)  # float64 products [n]
        self.expected[pre + "x_scale"] = _f32([x_scale])
        self.expected[pre + "y_scale"] = _f32([y_scale])
        colsum = q.astype(np.int64).sum(axis=1)  # the zero point's correction, folded into the bias
        self.expected[pre + "bias_q"] = (np.rint(b.astype(np.float64) / acc_scale) - z * colsum).astype(np.int32)
        ms = [multiplier_shift(float(v)) for v in acc_scale / y_scale]
        self.expected[pre + "multiplier"] = np.array([m for m, _ in ms], dtype=np.int32)
        self.expected[pre + "shift"] = np.array([k for _, k in ms], dtype=np.int32)

    def matmul(self, g: int, n: str, steps: list[int], vfactor: dict) -> None:
        pre, bits = f"{g}/{n}/", self.recipe.a_bits
        a_range = float(_set_max(self.stats, n, "in0", steps))
        b_range = float(_set_max(self.stats, n, "in1", steps))
        y_range = float(_set_max(self.stats, n, "out", steps))
        proj = n[: -len(".av")] + ".proj" if n.endswith(".av") else ""
        if proj in vfactor:  # V and the output are at the proj's folded scale
            sfx = next(s for s in _VROW if proj.endswith(s))
            prod, part = proj[: -len(sfx)] + _VROW[sfx][0], _VROW[sfx][1]
            s = vfactor[proj]
            c = s.size
            v_ch = _set_max(self.stats, prod, "out_ch", steps).astype(np.float32)[part * c : (part + 1) * c]
            b_range = float((v_ch / s).max())
            y_range = float((_set_max(self.stats, proj, "in_ch", steps).astype(np.float32) / s).max())
        a_scale = float(scale_of(a_range, bits))
        b_scale = float(scale_of(b_range, bits))
        top = QK_CODE_MAX if n.endswith(".qk") else OUT_CODE_MAX
        y_scale = float(_f32(max(y_range * HEADROOM, MIN_RANGE) / top))
        m, k = multiplier_shift(a_scale * b_scale / y_scale)
        for fld, v in (("a_scale", a_scale), ("b_scale", b_scale), ("y_scale", y_scale)):
            self.expected[pre + fld] = _f32([v])
        self.expected[pre + "multiplier"] = np.array([m], dtype=np.int32)
        self.expected[pre + "shift"] = np.array([k], dtype=np.int32)


def _same(got: torch.Tensor, want: np.ndarray) -> bool:
    """Integers equal, floats bit for bit (dtype and shape included)."""
    g = _np(got)
    if g.dtype != want.dtype or g.shape != want.shape:
        return False
    if g.dtype.kind == "f":
        return g.tobytes() == want.tobytes()
    return bool(np.array_equal(g, want))


def _check_split(rep: RederiveReport, recipe, stats, linears: list[str], meta: dict) -> list[int]:
    sts = list(meta["step_to_set"])
    n = int(meta["num_steps"])
    k = recipe.num_scale_sets(n)
    if recipe.scheme == "groups" and recipe.group_split == "calibrated":
        contiguous = all(b in (a, a + 1) for a, b in zip(sts, sts[1:], strict=False)) and sts[:1] == [0]
        ranges = np.stack([_np(stats.get(x, "in0")) for x in linears])
        best = best_split_cost(ranges, k)
        if not contiguous or max(sts) + 1 != min(k, n) or split_cost_of(ranges, sts) > best * (1 + 1e-9):
            rep.problems.append(f"step_to_set {sts} is not an optimal contiguous split into {k} groups")
    elif sts != [s * k // n for s in range(n)]:
        rep.problems.append(f"step_to_set {sts} != the uniform split into {k} sets")
    return sts


def rederive(model: nn.Module, artifact, stats=None) -> RederiveReport:
    """Re-derive every constant of ``artifact`` (a QuantArtifact of ``model``) from the float weights
    and ``stats`` (the calibration statistics it was built from; None for dynamic recipes) and compare."""
    recipe, meta = artifact.recipe, artifact.meta
    rep = RederiveReport()
    d = _Deriver(model, recipe, stats, meta, artifact.tensors)
    if list(meta["linears"]) != d.linears:
        rep.problems.append("the artifact's quantized layers differ from the recipe's")
    if d.folds != dict(meta.get("folds", {})):
        rep.problems.append("the artifact's smoothing placements (folds) differ from the definition")
    sts = _check_split(rep, recipe, stats, d.linears, meta)
    num_sets = max(sts) + 1 if sts else 1
    wmap = [0] * num_sets if recipe.scale_tables else list(range(num_sets))  # scale set -> weight set
    if list(meta.get("set_to_wset") or range(num_sets)) != wmap:
        rep.problems.append(f"set_to_wset {meta.get('set_to_wset')} != {wmap} (the recipe's weight sets)")
    for g in range(num_sets):
        wsteps = [s for s in range(len(sts)) if wmap[sts[s]] == wmap[g]]
        d.one_set(g, [s for s in range(len(sts)) if sts[s] == g], wmap[g], wsteps)
    for key, want in d.expected.items():
        if key not in artifact.tensors:
            rep.missing.append(key)
            continue
        rep.compared += 1
        if not _same(artifact.tensors[key], want):
            _, layer, fld = key.split("/")
            rep.mismatches.setdefault(layer, set()).add(fld)
    rep.not_rederived = [k for k in artifact.tensors if k not in d.expected]
    rep.taken_from = dict(d.taken_from)
    return rep
