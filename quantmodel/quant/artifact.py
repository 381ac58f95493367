"""The quantized-model artifact: everything the chip (and the emulator) needs, computed once from the
float model, the recipe and the per-step calibration statistics, and stored without re-calibration.

Per set g (one for dynamic/static/ASQ, one per step for TSQ and TSQ+TSW, K for groups) and per quantized
linear layer (safetensors keys ``"{g}/{layer}/{field}"``):
- ``weight_q`` int8 [n, k] (4/6-bit values held in int8), per-output-channel symmetric scales
  ``w_scale`` f32 [n]; SmoothQuant factors already multiplied in, and for the layers that produce V the
  consumer's factors already divided out of the V rows (``quantmodel.quant.smoothing``);
- static schemes: ``x_scale`` (per-tensor input scale), ``bias_q`` int32 [n] (bias / (x_scale*w_scale)),
  asymmetric recipes also ``x_zero`` int32 [1] (the input's zero point z; the hardware's correction
  ``acc - z * colsum(weight_q)`` is already folded into ``bias_q``, so it costs nothing at run time),
  ``y_scale`` (the int16 output's scale), ``multiplier`` int32 [n] and ``shift`` int32 [n] with
  ``x_scale*w_scale/y_scale ~= multiplier * 2^-shift`` (``quantmodel.intarith.fixedpoint``);
- smoothing schemes: ``smooth`` f32 [k] (the factors s; the emulator applies 1/s where the chip does)
  and ``alpha`` f32 [1] (the migration strength used: the recipe's, or the searched one);
- dynamic: ``bias`` f32 [n] (applied after the on-line per-token rescale).
Quantized attention matmuls get per-set ``a_scale``, ``b_scale``, ``y_scale``, ``multiplier``, ``shift``.
Every leaf op of a block also gets its per-set input/output abs-max (``in0_absmax`` ...), which the
integer-only non-linear mode uses as static scales.

Sets of scales and sets of weights: the sets above are *scale sets* (``step_to_set`` maps each step to
one). ``meta["set_to_wset"]`` maps each scale set to its *weight set*; the weight fields (``WEIGHT_FIELDS``:
``weight_q``, ``w_scale``, ``smooth``, ``bias``) are stored once per weight set under ``"{w}/..."``, and
``get(g, layer, field)`` reads a weight field of scale set g from its weight set. For every recipe but
``tsq`` and ``groupsK-tsq`` the map is the identity (one weight set per scale set). For those two,
every scale set shares weight set 0: one ``weight_q`` per layer, SmoothQuant factors and weights
aggregated over all steps (as ``asq``), while ``x_scale``, ``y_scale``, ``bias_q``, ``multiplier``,
``shift`` (and the attention products' scales) are per step or per group from that range's statistics
of the smoothed activations: the per-step tables the chip loads (``workloads.recipes.scale_table_bytes``).

Static GEMM outputs are requantized to ``OUT_BITS`` = 16-bit integers with ``OUT_HEADROOM`` = 2x the
calibrated output range: the vector unit reads them as FP16-sized values (the trace's FP16 output bytes).

Step grouping (scheme ``groups``): ``uniform`` splits the steps into K equal contiguous ranges;
``calibrated`` chooses the K contiguous ranges by dynamic programming that minimises the total
static-quantization noise increase ``sum_layers sum_steps (range_group / range_step)^2``: a step
quantized with its group's (larger) range instead of its own loses that factor in noise power.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from quantmodel.intarith import fixedpoint
from quantmodel.model.layers import MatMul
from quantmodel.model.stdit import STDiT
from quantmodel.quant import estimators
from quantmodel.quant.calibrate import CalibStats, model_config_dict, model_fingerprint
from quantmodel.quant.smoothing import fold_kind, smooth_factors, vrow_producer
from workloads.errors import ConfigError
from workloads.io import atomic_path
from workloads.recipes import Recipe, recipe_from_dict, scale_table_bytes

ARTIFACT_FORMAT = "stdit-quant-v1"
OUT_BITS = 16  # requantized GEMM output width, read by the vector unit
QK_OUT_BITS = 24  # QK^T scores feed the softmax, whose exp needs a resolution finer than ln 2:
# they are requantized to 24-bit codes (int32 storage) instead of 16
OUT_HEADROOM = 2.0  # output scale covers 2x the calibrated range (test prompts may exceed it)
_MIN_RANGE = 1e-8  # a range never seen non-zero in calibration still gets a finite scale
WEIGHT_FIELDS = ("weight_q", "w_scale", "smooth", "alpha", "bias")  # stored per weight set (the rest per scale set)


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed ``bits``-bit integer (-qmax..qmax; -2^(b-1) unused)."""
    return (1 << (bits - 1)) - 1


# ---- which ops a recipe quantizes -----------------------------------------------------------------
def quantized_linears(model: STDiT, recipe: Recipe) -> list[str]:
    """Names of the linear layers the recipe quantizes, in execution order; a pattern matching no
    linear layer of the model is a ConfigError."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not recipe.quantized:
        return []
    for pattern in recipe.layers:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                "recipe.layers",
                pattern,
                "patterns matching linear layers of the model, e.g. blocks.* or blocks.*.mlp.fc1",
            )
    return [n for n in names if recipe.quantizes(n, "linear")]


def quantized_matmuls(model: STDiT, recipe: Recipe) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, MatMul) and recipe.quantizes(n, "matmul_qk" if n.endswith(".qk") else "matmul_av")
    ]


# ---- step grouping --------------------------------------------------------------------------------
def split_cost_matrix(ranges: torch.Tensor) -> torch.Tensor:
    """cost[i, j] of one group holding steps i..j (inclusive) from per-layer per-step ranges [L, S]:
    ``sum_l sum_{s in i..j} (max_{s' in i..j} r[l, s'] / r[l, s])^2``."""
    r = ranges.double().clamp(min=_MIN_RANGE)
    num_steps = r.shape[1]
    cost = torch.full((num_steps, num_steps), float("inf"), dtype=torch.float64)
    for i in range(num_steps):
        run_max = r[:, i].clone()
        for j in range(i, num_steps):
            run_max = torch.maximum(run_max, r[:, j])
            cost[i, j] = ((run_max[:, None] / r[:, i : j + 1]) ** 2).sum()
    return cost


def optimal_split(ranges: torch.Tensor, k: int) -> list[int]:
    """Step-to-group map of the K contiguous groups minimising ``split_cost_matrix`` (exact DP)."""
    num_steps = ranges.shape[1]
    k = min(k, num_steps)
    cost = split_cost_matrix(ranges)
    inf = float("inf")
    best = [[inf] * (num_steps + 1) for _ in range(k + 1)]  # best[g][j]: steps 0..j-1 in g groups
    arg = [[0] * (num_steps + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, num_steps + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + float(cost[i, j - 1])
                if c < best[g][j]:
                    best[g][j], arg[g][j] = c, i
    bounds, j = [], num_steps
    for g in range(k, 0, -1):
        i = arg[g][j]
        bounds.append((i, j))
        j = i
    step_to_set = [0] * num_steps
    for g, (i, j) in enumerate(reversed(bounds)):
        for s in range(i, j):
            step_to_set[s] = g
    return step_to_set


def split_cost(ranges: torch.Tensor, step_to_set: list[int]) -> float:
    """Total noise-increase cost of a step split (the DP's objective), for comparing splits."""
    cost = split_cost_matrix(ranges)
    total, start = 0.0, 0
    for s in range(1, len(step_to_set) + 1):
        if s == len(step_to_set) or step_to_set[s] != step_to_set[start]:
            total += float(cost[start, s - 1])
            start = s
    return total


def layer_ranges(stats: CalibStats, layers: list[str]) -> torch.Tensor:
    """Per-layer, per-step input abs-max [L, S] (the static activation ranges the split trades)."""
    return torch.stack([stats.get(n, "in0") for n in layers])


def step_to_set_for(recipe: Recipe, num_steps: int, stats: CalibStats | None, layers: list[str]) -> list[int]:
    if recipe.scheme == "groups" and recipe.group_split == "calibrated":
        if stats is None:
            raise ConfigError("stats", None, "calibration stats (a calibrated split needs them)")
        return optimal_split(layer_ranges(stats, layers), recipe.num_scale_sets(num_steps))
    return recipe.uniform_step_to_scale_set(num_steps)


# ---- the artifact -------------------------------------------------------------------------------
@dataclass
class QuantArtifact:
    meta: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return recipe_from_dict(dict(self.meta["recipe"]))

    @property
    def step_to_set(self) -> list[int]:
        return list(self.meta["step_to_set"])

    @property
    def num_sets(self) -> int:
        """Scale sets (what ``step_to_set`` indexes)."""
        return int(self.meta["num_sets"])

    @property
    def set_to_wset(self) -> list[int]:
        """Weight set of each scale set (the identity unless the recipe shares one weight set)."""
        return list(self.meta.get("set_to_wset") or range(self.num_sets))

    @property
    def num_weight_sets(self) -> int:
        return max(self.set_to_wset) + 1

    @property
    def weight_step_to_set(self) -> list[int]:
        """The weight set each step uses (what the chip swaps between)."""
        wmap = self.set_to_wset
        return [wmap[g] for g in self.step_to_set]

    @property
    def linears(self) -> list[str]:
        return list(self.meta["linears"])

    @property
    def matmuls(self) -> list[str]:
        return list(self.meta["matmuls"])

    def _key(self, g: int, name: str, fld: str) -> str:
        if fld in WEIGHT_FIELDS and "set_to_wset" in self.meta:
            g = self.meta["set_to_wset"][g]
        return f"{g}/{name}/{fld}"

    def get(self, wset: int, name: str, fld: str) -> torch.Tensor:
        """Field ``fld`` of layer ``name`` in scale set ``wset`` (weight fields from its weight set)."""
        return self.tensors[self._key(wset, name, fld)]

    def has(self, wset: int, name: str, fld: str) -> bool:
        return self._key(wset, name, fld) in self.tensors

    def check_model(self, model: STDiT) -> None:
        if self.meta["model_config"] != model_config_dict(model) or self.meta["model_fingerprint"] != model_fingerprint(
            model
        ):
            raise ConfigError(
                "artifact",
                f"model fingerprint {self.meta['model_fingerprint']}",
                f"an artifact quantized from this model ({model_fingerprint(model)})",
            )

    def check_use(self, model: STDiT, recipe: str, num_steps: int) -> None:
        """That this artifact may stand for ``recipe`` on ``model`` in a ``num_steps``-step sampler (a
        file named on a command line): one ConfigError naming what differs."""
        self.check_model(model)
        if self.recipe.name != recipe:
            raise ConfigError("artifact", f"recipe {self.recipe.name}", f"an artifact of recipe {recipe}")
        if len(self.step_to_set) != num_steps:
            raise ConfigError("steps", num_steps, f"{len(self.step_to_set)} (the artifact's step count)")

    def annotate(self, trace):
        """The quantized op trace of this artifact (its recipe and its step-to-set map, which for a
        calibrated split is not the uniform one) for the hardware model."""
        from workloads.recipes import annotate_trace

        return annotate_trace(trace, self.recipe, self.weight_step_to_set, self.step_to_set)

    def alphas(self) -> dict[str, list[float]]:
        """The SmoothQuant alpha each smoothed layer got, per weight set (searched ones included)."""
        return {
            n: [round(float(self.get(g, n, "alpha")), 4) for g in range(self.num_sets)]
            for n in self.linears
            if self.has(0, n, "alpha")
        }

    def weight_storage_bytes(self) -> int:
        """Bytes of all weight sets as the chip stores them (the trace's formula, docs/architecture.md): packed integer
        weights + fp32 per-channel scale + int32 bias per quantized linear per set, FP16 factors of the
        explicit smoothing multiplies (and of the caption path's) per set, plus the float weights of
        unquantized layers once. Recipes with per-step scale tables (``tsq``, ``groupsK-tsq``) keep the
        per-channel constants in one table per scale set instead (``scale_table_bytes``)."""
        recipe = self.recipe
        tables = recipe.scale_tables
        total = 0
        for g in range(self.num_weight_sets):
            for name in self.linears:
                n, k = self.tensors[f"{g}/{name}/weight_q"].shape
                total += math.ceil(k * n * recipe.w_bits_for(name) / 8) + (0 if tables else 8 * n)
                if self.meta["folds"].get(name) in ("mul", "text"):
                    total += 2 * k
        if tables:
            per_set = sum(scale_table_bytes("linear", self.tensors[f"0/{n}/weight_q"].shape[0]) for n in self.linears)
            per_set += scale_table_bytes("matmul", 1) * len(self.matmuls)
            total += self.num_sets * per_set
        return total + int(self.meta["float_weight_bytes"])

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.contiguous().cpu() for k, v in self.tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": ARTIFACT_FORMAT, "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuantArtifact:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError("artifact", str(path), "an existing artifact written by codesign quantize")
        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if md.get("format") != ARTIFACT_FORMAT:
                raise ValueError("format")
            art = cls(meta=json.loads(md["meta"]), tensors=tensors)
            art.validate()
        except ConfigError:
            raise
        except Exception:
            raise ConfigError(
                "artifact", str(path), f"a complete {ARTIFACT_FORMAT} safetensors file (written by codesign quantize)"
            ) from None
        return art

    def validate(self) -> None:
        """Every tensor the emulator will read is present with a consistent dtype (corrupt -> error),
        and the artifact was built under this emulator's activation-quantization definition."""
        if self.meta.get("act_quant") != fixedpoint.ACT_QUANT:
            raise ConfigError(
                "artifact act_quant",
                self.meta.get("act_quant"),
                f"{fixedpoint.ACT_QUANT} (rebuild it with codesign quantize)",
            )
        recipe = self.recipe
        static = recipe.scheme != "dynamic"
        sts = self.step_to_set
        if len(sts) != self.meta["num_steps"] or (sts and max(sts) + 1 != self.num_sets):
            raise ValueError("step_to_set")
        wmap = self.set_to_wset
        if len(wmap) != self.num_sets or sorted(set(wmap)) != list(range(max(wmap, default=-1) + 1)):
            raise ValueError("set_to_wset")
        need = ["weight_q", "w_scale"] + (
            ["x_scale", "bias_q", "y_scale", "multiplier", "shift"] if static else ["bias"]
        )
        for g in range(self.num_sets):
            for name in self.linears:
                extra = (["smooth"] if recipe.smoothing else []) + (["x_zero"] if static and recipe.asymmetric else [])
                for fld in need + extra:
                    if not self.has(g, name, fld):
                        raise ValueError(f"{g}/{name}/{fld}")
                if self.get(g, name, "weight_q").dtype != torch.int8:
                    raise ValueError("weight dtype")
            if static:
                for name in self.matmuls:
                    for fld in ("a_scale", "b_scale", "y_scale", "multiplier", "shift"):
                        if not self.has(g, name, fld):
                            raise ValueError(f"{g}/{name}/{fld}")


def _multiplier_shift(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fixedpoint.quantize_multipliers(real.double())


def _per_set(t: torch.Tensor, steps: list[int]) -> torch.Tensor:
    return t[steps].amax(dim=0)


def _vrow_factors(
    mods: dict, linears: list[str], folds: dict, recipe: Recipe, stats: CalibStats | None, steps: list[int]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """SmoothQuant factors of the consumers of V (they fold into the V output rows of their producer),
    every linear's output-row scale [out_features] (the producers' rows divided by those factors),
    and the consumers' alphas."""
    factors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    row_scale: dict[str, torch.Tensor] = {n: torch.ones(mods[n].out_features) for n in linears}
    if recipe.smoothing:  # consumers of V first: their factors divide the producer's V rows
        for n in linears:
            if folds[n] == "vrows":
                s, alphas[n] = layer_factors(n, mods[n].weight.detach().cpu(), recipe, stats, steps)
                factors[n] = s
                prod, part = vrow_producer(n)
                c = s.numel()
                row_scale[prod][part * c : (part + 1) * c] /= s
    return factors, row_scale, alphas


def layer_factors(
    n: str, w: torch.Tensor, recipe: Recipe, stats: CalibStats, steps: list[int]
) -> tuple[torch.Tensor, float]:
    """SmoothQuant factors [k] of a linear (weights w [n, k]) for a weight set, and the alpha used:
    the recipe's channel statistic and alpha, or the alpha search (``estimators.search_alpha``)."""
    from workloads.recipes import ALPHA_GRID

    stat = estimators.channel_stat(stats, n, steps, recipe)
    alpha = recipe.alpha_for(n)
    if alpha == "search":
        return estimators.search_alpha(stats, n, steps, recipe, w, stat, ALPHA_GRID)[::-1]
    return smooth_factors(stat, w, alpha), float(alpha)


def _static_input(tensors: dict, pre: str, n: str, recipe: Recipe, stats, steps, s) -> tuple[float, int]:
    """The input scale and zero point (0 when symmetric) of a static linear, stored in ``tensors``."""
    lo, hi = estimators.act_range(stats, n, steps, recipe, s)
    if recipe.asymmetric:
        x_scale, z = estimators.zero_point(lo, hi, recipe.a_bits)
        tensors[pre + "x_zero"] = torch.tensor([z], dtype=torch.int32)
        return x_scale, z
    return float(fixedpoint.symmetric_scale(hi, recipe.a_bits)), 0


def _quantize_linear(
    tensors: dict,
    pres: tuple[str, str],
    n: str,
    lin: nn.Linear,
    rs: torch.Tensor,
    s: torch.Tensor | None,
    recipe: Recipe,
    stats: CalibStats | None,
    steps: tuple[list[int], list[int]],
    alpha: float | None = None,
) -> None:
    """One linear of one set into ``tensors``: the weight fields (smoothed, per-channel quantized
    weights, from the weight set's steps) under ``pres[0]``, and for static recipes the activation
    scales, integer bias and requantizer (from the scale set's steps) under ``pres[1]``. The two are
    the same set except where one weight set serves several scale sets (tsq, groupsK-tsq); the weight
    fields are then written by the first scale set and identical for the others."""
    (wpre, pre), (wsteps, steps) = pres, steps
    static = recipe.scheme != "dynamic"
    w = lin.weight.detach().float().cpu() * rs[:, None]  # [n, k]
    b = (lin.bias.detach().float().cpu() if lin.bias is not None else torch.zeros(lin.out_features)) * rs
    if recipe.smoothing:
        if s is None:
            s, alpha = layer_factors(n, w, recipe, stats, wsteps)
        w = w * s[None, :]
        tensors[wpre + "smooth"] = s
        tensors[wpre + "alpha"] = torch.tensor([alpha], dtype=torch.float32)
    weight_q, w_scale = fixedpoint.quantize_weight_per_channel(w, recipe.w_bits_for(n))  # [n,k], [n]
    tensors[wpre + "weight_q"] = weight_q
    tensors[wpre + "w_scale"] = w_scale
    if not static:
        tensors[wpre + "bias"] = b
        return
    x_scale, x_zero = _static_input(tensors, pre, n, recipe, stats, steps, s if recipe.smoothing else None)
    y_range = float((_per_set(stats.get(n, "out_ch"), steps) * rs.abs()).max())
    y_scale = float(fixedpoint.symmetric_scale(y_range * OUT_HEADROOM, OUT_BITS))
    acc_scale = x_scale * w_scale.double()  # [n]
    bias_q = torch.round(b.double() / acc_scale)
    if x_zero:  # the zero point's correction -z * colsum(W_q), folded into the int32 bias
        bias_q = bias_q - x_zero * weight_q.double().sum(dim=1)
    if bias_q.abs().max() >= 2**31:
        raise ConfigError("artifact", f"{n} bias overflows int32", "layers with representable bias")
    mult, shift = _multiplier_shift(acc_scale / y_scale)
    tensors[pre + "x_scale"] = torch.tensor([x_scale], dtype=torch.float32)
    tensors[pre + "y_scale"] = torch.tensor([y_scale], dtype=torch.float32)
    tensors[pre + "bias_q"] = bias_q.to(torch.int32)
    tensors[pre + "multiplier"] = mult.to(torch.int32)
    tensors[pre + "shift"] = shift.to(torch.int32)


def _quantize_matmul(
    tensors: dict,
    pre: str,
    n: str,
    factors: dict[str, torch.Tensor],
    recipe: Recipe,
    stats: CalibStats,
    steps: list[int],
) -> None:
    """One attention product (QK^T or AV) of one weight set: operand and output scales, requantizer."""
    a_range = float(_per_set(stats.get(n, "in0"), steps))
    b_range = float(_per_set(stats.get(n, "in1"), steps))
    y_range = float(_per_set(stats.get(n, "out"), steps))
    if n.endswith(".av"):  # V (operand b) and the output carry the proj's folded factors
        proj = n[: -len(".av")] + ".proj"
        if proj in factors:
            prod, part = vrow_producer(proj)
            s = factors[proj]
            c = s.numel()
            v_ch = _per_set(stats.get(prod, "out_ch"), steps)[part * c : (part + 1) * c]
            b_range = float((v_ch / s).max())
            y_range = float((_per_set(stats.get(proj, "in_ch"), steps) / s).max())
    a_scale = float(fixedpoint.symmetric_scale(a_range, recipe.a_bits))
    b_scale = float(fixedpoint.symmetric_scale(b_range, recipe.a_bits))
    y_bits = QK_OUT_BITS if n.endswith(".qk") else OUT_BITS
    y_scale = float(torch.tensor(max(y_range * OUT_HEADROOM, _MIN_RANGE) / qmax(y_bits), dtype=torch.float32))
    mult, shift = _multiplier_shift(torch.tensor([a_scale * b_scale / y_scale], dtype=torch.float64))
    tensors[pre + "a_scale"] = torch.tensor([a_scale], dtype=torch.float32)
    tensors[pre + "b_scale"] = torch.tensor([b_scale], dtype=torch.float32)
    tensors[pre + "y_scale"] = torch.tensor([y_scale], dtype=torch.float32)
    tensors[pre + "multiplier"] = mult.to(torch.int32)
    tensors[pre + "shift"] = shift.to(torch.int32)


def build_artifact(
    model: STDiT, recipe: Recipe, stats: CalibStats | None, num_steps: int, workload_name: str = ""
) -> QuantArtifact:
    """Quantize ``model`` under ``recipe`` from per-step ``stats`` (None only for dynamic)."""
    if not recipe.quantized:
        raise ConfigError("recipe", recipe.name, "a quantized recipe (fp16 needs no artifact)")
    linears = quantized_linears(model, recipe)
    matmuls = quantized_matmuls(model, recipe)
    static = recipe.scheme != "dynamic"
    if static or recipe.smoothing:
        if stats is None:
            raise ConfigError("stats", None, f"calibration stats (recipe {recipe.name} is static or smooths)")
        stats.check_matches(model, num_steps)
    step_to_set = step_to_set_for(recipe, num_steps, stats, linears)
    num_sets = max(step_to_set) + 1
    set_to_wset = [0] * num_sets if recipe.scale_tables else list(range(num_sets))
    lin_set = set(linears)
    folds = {n: fold_kind(n, lin_set) for n in linears} if recipe.smoothing else {}
    tensors: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())

    for g in range(num_sets):
        steps = [s for s in range(num_steps) if step_to_set[s] == g]
        wg = set_to_wset[g]
        wsteps = [s for s in range(num_steps) if set_to_wset[step_to_set[s]] == wg]
        factors, row_scale, alphas = _vrow_factors(mods, linears, folds, recipe, stats, wsteps)
        for n in linears:
            pres = (f"{wg}/{n}/", f"{g}/{n}/")
            args = (row_scale[n], factors.get(n), recipe, stats, (wsteps, steps), alphas.get(n))
            _quantize_linear(tensors, pres, n, mods[n], *args)
        if static:
            for n in matmuls:
                _quantize_matmul(tensors, f"{g}/{n}/", n, factors, recipe, stats, steps)
            # static ranges of every other op of the blocks (integer-only non-linear mode uses them)
            for key in list(stats.tensors):
                name, fld = key.split(":")
                if "blocks." in name and fld in ("in0", "in1", "out"):
                    tensors[f"{g}/{name}/{fld}_absmax"] = _per_set(stats.tensors[key], steps).reshape(1)
    float_bytes = sum(2 * p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in lin_set)
    meta = {
        "format": ARTIFACT_FORMAT,
        "recipe": recipe.to_dict(),
        "scheme": recipe.scheme,
        "w_bits": recipe.w_bits,
        "a_bits": recipe.a_bits,
        "out_bits": OUT_BITS,
        "out_headroom": OUT_HEADROOM,
        "num_steps": num_steps,
        "step_to_set": step_to_set,
        "num_sets": num_sets,
        "set_to_wset": set_to_wset,
        "linears": linears,
        "matmuls": matmuls,
        "folds": folds,
        "model_config": model_config_dict(model),
        "model_fingerprint": model_fingerprint(model),
        "workload": workload_name,
        "float_weight_bytes": float_bytes,
        "stats": dict(stats.meta) if stats is not None else None,
        "act_quant": fixedpoint.ACT_QUANT,
    }  # the activation-quantization definition the integers follow
    return QuantArtifact(meta=meta, tensors=tensors)
