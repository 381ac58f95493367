"""Quantization recipes: data that says what to quantize, at which bits, with which activation scheme.

Schemes (docs/architecture.md, "Quantization recipes"):
- ``fp16``: no quantization (the float reference);
- ``dynamic``: per-token activation scales computed on line (ViDiT-Q baseline; needs reduction hardware);
- ``static``: one per-tensor activation scale per layer over all steps, no smoothing (naive);
- ``asq``: static scales + SmoothQuant, both aggregated over all steps (one weight set);
- ``tsq+tsw``: per-step activation scales and per-step smoothed weights (one weight set per step);
- ``tsq``: per-step activation scales and requantization constants, ONE weight set (SmoothQuant factors
  and smoothed weights aggregated over all steps as in ``asq``): TSQ without TSW;
- ``groups``: the steps split into K contiguous ranges, each with its own scales and smoothed weights
  (K=1 is ASQ, K=steps is TSQ+TSW); the split is uniform or chosen from calibration statistics. With
  ``shared_weights`` the K ranges keep their own activation scales but share one weight set (K=1 is
  ASQ, K=steps is TSQ).

Preset names read ``SCHEME-wXaY``: ``static-w8a8``, ``asq-w6a6``, ``tsq-w8a8``, ``tsq-tsw-w4a8``,
``groups4-w8a8`` (uniform split), ``groups4-cal-w8a8`` (calibrated split), ``groups4-tsq-w8a8`` and
``groups4-cal-tsq-w8a8`` (the same splits, per-group scales, one shared weight set), ``dynamic-w8a8``,
and ``fp16``.

Recipes whose activation scales change more often than their weights (``tsq``, ``groupsK-tsq``) keep
per-step constant tables beside their one weight set; the trace charges them as ``table_bytes``
(``scale_table_bytes`` says what a table holds and why).
``annotate_trace`` turns a float op trace into the quantized one the hardware model reads.

Calibration options (fields of :class:`Recipe`; docs/recipes.md, "Calibration options"):
- ``act_range``: how a static per-tensor activation range is estimated from each step's calibration
  data: ``absmax`` (the largest |x| seen), ``percentile`` (the ``act_percentile``-th percentile of
  |x|, or of x at both ends when asymmetric), ``mse`` (the clipping range minimising the quantization
  MSE of the calibration activations), ``ema`` (an exponential moving average, momentum
  ``ema_momentum``, of the per-batch maxima in calibration order);
- ``smooth_stat``: the per-channel statistic SmoothQuant's factors use: ``absmax`` or ``ema`` (EMA of
  the per-batch mean of per-sample channel maxima, ViDiT-Q's ``momentum_act_max``);
- ``alpha``: SmoothQuant's migration strength: a number, a mapping ``{layer glob: alpha}`` (first
  matching pattern wins; layers no pattern matches keep 0.5), or ``search`` (per layer, the value of
  ``ALPHA_GRID`` minimising that layer's quantized output error on the calibration rows);
- ``asq_agg``: how per-step ranges are aggregated over a weight set's steps: ``max``, ``mean``,
  ``percentile`` (``agg_percentile``-th of the per-step ranges) or ``ema`` (in step order);
- ``act_symmetry``: ``symmetric`` (narrow signed range, no zero point) or ``asymmetric`` (full signed
  range with an integer zero point; static: folded into the int32 bias, dynamic: a per-token rank-1
  correction on the vector unit);
- ``channel_balance``: SmoothQuant-style channel balancing for the ``dynamic`` scheme (ViDiT-Q);
- ``layer_w_bits``: ``{layer glob: bits}`` weight bits per layer (mixed precision; others ``w_bits``).

Option suffixes of preset names: ``asq-asym-w8a8`` (asymmetric), ``-pct`` / ``-mse`` / ``-ema``
(range estimator), ``-sema`` (EMA smoothing statistic), ``-asearch`` (searched alpha), ``-aggmean`` /
``-aggpct`` (aggregation), ``-tsq`` (groupsK only: one shared weight set), and the ViDiT-Q
baseline ``vidit-q-w8a8`` / ``-w6a6`` / ``-w4a8``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from workloads.errors import ConfigError, check_known_fields
from workloads.trace import Op, Trace, entry_bytes, reads_str

SCHEMES = ("fp16", "dynamic", "static", "asq", "tsq", "tsq+tsw", "groups")
SMOOTHING_SCHEMES = ("asq", "tsq", "tsq+tsw", "groups")
W_BITS = (4, 6, 8)
A_BITS = (6, 8)
GROUP_SPLITS = ("uniform", "calibrated")
# Layers whose SmoothQuant factors cannot be folded: their input is the raw residual
# (attn_temp.qkv, cross_attn.q_linear) or a GELU output (mlp.fc2), so the chip multiplies on line.
UNFOLDABLE_SUFFIXES = (".attn_temp.qkv", ".cross_attn.q_linear", ".mlp.fc2")
# The caption path's factors: folding them into the text projection (once per prompt) would need one
# projection copy per block, so the emulator (and the chip it models) multiplies the caption tokens by
# 1/s before each block's kv_linear at every step: a smooth_mul in the trace as well.
TEXT_SMOOTH_SUFFIXES = (".cross_attn.kv_linear",)
_NAME_RE = re.compile(r"^(static|asq|tsq-tsw|tsq|dynamic|groups(\d+)(-cal)?)((?:-[a-z]+)*)-w(\d+)a(\d+)$")
ACT_RANGES = ("absmax", "percentile", "mse", "ema")
SMOOTH_STATS = ("absmax", "ema")
ASQ_AGGS = ("max", "mean", "percentile", "ema")
SYMMETRIES = ("symmetric", "asymmetric")
ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # alpha "search" candidates
DEFAULT_ALPHA = 0.5
# preset-name option suffixes -> recipe fields
NAME_OPTIONS = {
    "asym": {"act_symmetry": "asymmetric"},
    "pct": {"act_range": "percentile"},
    "mse": {"act_range": "mse"},
    "ema": {"act_range": "ema"},
    "sema": {"smooth_stat": "ema"},
    "asearch": {"alpha": "search"},
    "aggmean": {"asq_agg": "mean"},
    "aggpct": {"asq_agg": "percentile"},
    "tsq": {"shared_weights": True},  # groupsK-tsq: per-group scales, one shared weight set
}
# ViDiT-Q (thu-nics/ViDiT-Q, t2v/configs/quant/opensora/: viditq_w8a8 -> w8a8_dynamic.yaml,
# viditq_w6a6 -> w6a6_naive_cb.yaml, viditq_w4a8 -> w4a8_timestep_aware_cb.yaml, and the W4A8
# mixed-precision plan mixed_precision/t20_weight_4_mp.yaml): per-channel weights, asymmetric
# per-token dynamic activations (sym: False, min_max), channel balancing with an EMA (momentum 0.95)
# of the per-batch mean channel max, alpha 0.625 (W6A6) / 0.11 (W4A8), MLP weights kept at 8 bits
# at W4A8. Where this model cannot follow it: docs/recipes.md.
VIDIT_Q = {
    (8, 8): {},
    (6, 6): {"channel_balance": True, "alpha": 0.625, "smooth_stat": "ema"},
    (4, 8): {
        "channel_balance": True,
        "alpha": 0.11,
        "smooth_stat": "ema",
        "layer_w_bits": {"*.mlp.fc1": 8, "*.mlp.fc2": 8},
    },
}
_VIDIT_RE = re.compile(r"^vidit-q-w(\d+)a(\d+)$")


@dataclass(frozen=True)
class Recipe:
    name: str
    scheme: str = "fp16"
    w_bits: int = 16
    a_bits: int = 16
    alpha: object = DEFAULT_ALPHA  # SmoothQuant migration strength: number, {glob: number} or "search"
    num_groups: int = 1  # for scheme "groups"
    group_split: str = "uniform"
    shared_weights: bool = False  # scheme "groups": per-group activation scales, one weight set
    quantize_attention: bool = False  # also quantize QK^T and AV (integer-only chips need it)
    layers: tuple[str, ...] = ("*blocks.*",)  # glob patterns over linear-layer names (v1.0 blocks.N,
    # v1.2 spatial_blocks.N / temporal_blocks.N)
    act_range: str = "absmax"  # static activation range estimator (module doc)
    act_percentile: float = 99.99  # for act_range "percentile"
    ema_momentum: float = 0.95  # for act_range / smooth_stat / asq_agg "ema"
    smooth_stat: str = "absmax"  # SmoothQuant channel statistic: absmax or ema
    asq_agg: str = "max"  # per-step ranges -> one weight set's range
    agg_percentile: float = 90.0  # for asq_agg "percentile"
    act_symmetry: str = "symmetric"
    channel_balance: bool = False  # SmoothQuant factors for the dynamic scheme (ViDiT-Q)
    layer_w_bits: object = ()  # {glob: w_bits} (mixed precision), stored as ((glob, bits), ...)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError("recipe.scheme", self.scheme, ", ".join(SCHEMES))
        if self.scheme == "fp16":
            if (self.w_bits, self.a_bits) != (16, 16):
                raise ConfigError("recipe.w_bits", self.w_bits, "16 with scheme fp16")
        else:
            if self.w_bits not in W_BITS:
                raise ConfigError("recipe.w_bits", self.w_bits, " or ".join(map(str, W_BITS)))
            if self.a_bits not in A_BITS:
                raise ConfigError("recipe.a_bits", self.a_bits, " or ".join(map(str, A_BITS)))
        object.__setattr__(self, "alpha", _checked_alpha(self.alpha))
        self._check_calibration_options()
        if isinstance(self.num_groups, bool) or not isinstance(self.num_groups, int) or self.num_groups < 1:
            raise ConfigError("recipe.num_groups", self.num_groups, "a positive integer")
        if self.group_split not in GROUP_SPLITS:
            raise ConfigError("recipe.group_split", self.group_split, " or ".join(GROUP_SPLITS))
        if not isinstance(self.shared_weights, bool) or (self.shared_weights and self.scheme != "groups"):
            raise ConfigError(
                "recipe.shared_weights", self.shared_weights, "true or false (true only with scheme groups)"
            )
        layers_ok = isinstance(self.layers, (list, tuple)) and self.layers  # a number or a string is no list
        if not layers_ok or not all(isinstance(p, str) and p for p in self.layers):
            raise ConfigError("recipe.layers", self.layers, "a non-empty list of layer-name patterns")
        object.__setattr__(self, "layers", tuple(self.layers))

    def _check_calibration_options(self) -> None:
        for fld, allowed in (
            ("act_range", ACT_RANGES),
            ("smooth_stat", SMOOTH_STATS),
            ("asq_agg", ASQ_AGGS),
            ("act_symmetry", SYMMETRIES),
        ):
            if getattr(self, fld) not in allowed:
                raise ConfigError(f"recipe.{fld}", getattr(self, fld), " or ".join(allowed))
        for fld in ("act_percentile", "agg_percentile"):
            v = getattr(self, fld)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 50.0 <= v <= 100.0:
                raise ConfigError(f"recipe.{fld}", v, "a number in [50, 100]")
        m = self.ema_momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise ConfigError("recipe.ema_momentum", m, "a number in [0, 1)")
        if not isinstance(self.channel_balance, bool):
            raise ConfigError("recipe.channel_balance", self.channel_balance, "true or false")
        if self.channel_balance and self.scheme != "dynamic":
            raise ConfigError("recipe.channel_balance", True, "only with scheme dynamic (static schemes smooth anyway)")
        object.__setattr__(self, "layer_w_bits", _checked_layer_bits(self.layer_w_bits, self.quantized))

    @property
    def quantized(self) -> bool:
        return self.scheme != "fp16"

    @property
    def smoothing(self) -> bool:
        return self.scheme in SMOOTHING_SCHEMES or (self.scheme == "dynamic" and self.channel_balance)

    @property
    def asymmetric(self) -> bool:
        return self.act_symmetry == "asymmetric"

    def alpha_for(self, layer: str) -> float | str:
        """The layer's SmoothQuant alpha: a number, or "search"."""
        if isinstance(self.alpha, tuple):
            for pattern, a in self.alpha:
                if fnmatch.fnmatchcase(layer, pattern):
                    return a
            return DEFAULT_ALPHA
        return self.alpha

    def w_bits_for(self, layer: str) -> int:
        """The layer's weight bits (``layer_w_bits``' first matching pattern, else ``w_bits``)."""
        for pattern, b in self.layer_w_bits:
            if fnmatch.fnmatchcase(layer, pattern):
                return b
        return self.w_bits

    def num_scale_sets(self, num_steps: int) -> int:
        """Sets of activation scales (and requantization constants): one per step for tsq and tsq+tsw."""
        if self.scheme in ("tsq", "tsq+tsw"):
            return num_steps
        if self.scheme == "groups":
            return min(self.num_groups, num_steps)
        return 1

    def num_weight_sets(self, num_steps: int) -> int:
        if self.scheme == "tsq" or self.shared_weights:
            return 1
        return self.num_scale_sets(num_steps)

    @property
    def scale_tables(self) -> bool:
        """Whether the activation scales change between steps that share a weight set (tsq,
        groupsK-tsq): the requantization constants then live in per-step tables, not in the weights."""
        return self.scheme == "tsq" or self.shared_weights

    def uniform_step_to_set(self, num_steps: int) -> list[int]:
        """Contiguous, as-equal-as-possible split of the steps into the recipe's weight sets."""
        k = self.num_weight_sets(num_steps)
        return [s * k // num_steps for s in range(num_steps)]

    def uniform_step_to_scale_set(self, num_steps: int) -> list[int]:
        """The same split into the recipe's activation-scale sets."""
        k = self.num_scale_sets(num_steps)
        return [s * k // num_steps for s in range(num_steps)]

    def quantizes(self, name: str, kind: str) -> bool:
        """Whether the op of this name and kind runs in integer arithmetic under this recipe."""
        if not self.quantized:
            return False
        if kind == "linear":
            return any(fnmatch.fnmatchcase(name, p) for p in self.layers)
        if kind in ("matmul_qk", "matmul_av"):
            return self.quantize_attention and "blocks." in name
        return False

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["alpha"] = dict(self.alpha) if isinstance(self.alpha, tuple) else self.alpha
        d["layer_w_bits"] = dict(self.layer_w_bits)
        return d


def _checked_alpha(alpha: object) -> object:
    """A number in [0, 1], "search", or a mapping {glob: number} (stored as a tuple of pairs)."""
    allowed = 'a number in [0, 1], "search", or a mapping {layer glob: number in [0, 1]}'

    def ok(a: object) -> bool:
        return not isinstance(a, bool) and isinstance(a, (int, float)) and 0.0 <= a <= 1.0

    if alpha == "search" or ok(alpha):
        return alpha
    items = alpha.items() if isinstance(alpha, dict) else alpha if isinstance(alpha, tuple) else None
    if items is None:
        raise ConfigError("recipe.alpha", alpha, allowed)
    pairs = tuple(items)
    if not pairs or not all(
        isinstance(pr, tuple) and len(pr) == 2 and isinstance(pr[0], str) and pr[0] and ok(pr[1]) for pr in pairs
    ):
        raise ConfigError("recipe.alpha", alpha, allowed)
    return pairs


def _checked_layer_bits(bits: object, quantized: bool) -> tuple:
    """``{glob: w_bits}`` as a tuple of pairs; each bits value one of ``W_BITS``."""
    allowed = "a mapping {layer glob: " + " or ".join(map(str, W_BITS)) + "}"
    items = bits.items() if isinstance(bits, dict) else bits if isinstance(bits, tuple) else None
    if items is None:
        raise ConfigError("recipe.layer_w_bits", bits, allowed)
    pairs = tuple(items)
    for pr in pairs:
        if not (isinstance(pr, tuple) and len(pr) == 2 and isinstance(pr[0], str) and pr[0] and pr[1] in W_BITS):
            raise ConfigError("recipe.layer_w_bits", bits, allowed)
        if isinstance(pr[1], bool):
            raise ConfigError("recipe.layer_w_bits", bits, allowed)
    if pairs and not quantized:
        raise ConfigError("recipe.layer_w_bits", bits, "empty with scheme fp16")
    return pairs


def recipe_from_name(name: str) -> Recipe:
    if name == "fp16":
        return Recipe(name="fp16")
    v = _VIDIT_RE.match(name)
    if v:
        wa = (int(v.group(1)), int(v.group(2)))
        if wa not in VIDIT_Q:
            raise ConfigError("recipe", name, "vidit-q-w8a8, vidit-q-w6a6 or vidit-q-w4a8 (ViDiT-Q's published plans)")
        return Recipe(name=name, scheme="dynamic", w_bits=wa[0], a_bits=wa[1], act_symmetry="asymmetric", **VIDIT_Q[wa])
    m = _NAME_RE.match(name)
    allowed = (
        "fp16, SCHEME[-OPTION...]-wXaY with SCHEME in static, asq, tsq, tsq-tsw, dynamic, groupsK, groupsK-cal "
        f"and OPTION in {', '.join(NAME_OPTIONS)}, vidit-q-wXaY (codesign recipes lists them), or a YAML file"
    )
    if not m:
        raise ConfigError("recipe", name, allowed)
    head, k, cal, opts, w, a = m.groups()
    options: dict = {}
    for tok in (t for t in opts.split("-") if t):
        if tok not in NAME_OPTIONS:
            raise ConfigError("recipe", name, allowed)
        options.update(NAME_OPTIONS[tok])
    scheme = "groups" if head.startswith("groups") else head.replace("tsq-tsw", "tsq+tsw")
    return Recipe(
        name=name,
        scheme=scheme,
        w_bits=int(w),
        a_bits=int(a),
        num_groups=int(k) if k else 1,
        group_split="calibrated" if cal else "uniform",
        **options,
    )


def recipe_from_dict(data: object, default_name: str = "custom") -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    check_known_fields("recipe", data, known)
    data = dict(data)
    data.setdefault("name", default_name)
    if "layers" in data and isinstance(data["layers"], list):
        data["layers"] = tuple(data["layers"])
    for fld in ("alpha", "layer_w_bits"):  # YAML mappings -> the recipe's tuples of pairs
        if isinstance(data.get(fld), dict):
            data[fld] = tuple(data[fld].items())
    return Recipe(**data)


def get_recipe(name_or_path: str) -> Recipe:
    """A preset name (``codesign recipes``) or a YAML recipe file."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError("recipe", name_or_path, "an existing YAML recipe file or a preset name")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            raise ConfigError("recipe", name_or_path, "a valid YAML recipe file") from None
        return recipe_from_dict(data, default_name=path.stem)
    return recipe_from_name(name_or_path)


def preset_recipe_names(group_counts: tuple[int, ...] = (2, 4, 10)) -> list[str]:
    """The named presets users pick from (any K works; these are the ones listed)."""
    names = ["fp16"]
    for w, a in ((8, 8), (6, 6), (4, 8)):
        sfx = f"w{w}a{a}"
        names += [f"dynamic-{sfx}", f"static-{sfx}", f"asq-{sfx}", f"tsq-{sfx}", f"tsq-tsw-{sfx}"]
        names += [f"groups{k}-{sfx}" for k in group_counts]
        names += [f"groups{k}-cal-{sfx}" for k in group_counts]
        names += [f"groups{k}-tsq-{sfx}" for k in group_counts]
        names += [f"groups{k}-cal-tsq-{sfx}" for k in group_counts]
        names += [f"vidit-q-{sfx}"]
    return names


# ---- the quantized op trace -------------------------------------------------------------------
_QSET = -2  # placeholder weight set of a step template's quantized ops (stamped per step)


def _bytes(elements: int, bits: int) -> int:
    return math.ceil(elements * bits / 8)


def scale_table_bytes(kind: str, n: int) -> int:
    """Bytes of one quantized GEMM's per-step constant table (recipes with ``scale_tables``).

    What a real NPU keeps per output channel when the scales change but the weights do not: the
    requantization multiplier and shift and the integer bias (they all carry ``x_scale`` of the step),
    precomputed as TFLite's per-channel quantization and Arm Ethos-U's weight-stream "scale and bias"
    entries are, because the requantizer runs on integers only: int32 bias + int32 multiplier + int8
    shift = 9 B per channel, plus the step's fp32 input scale (the producer's quantize-on-write) and
    fp32 output scale (the readers' dequantization) = 8 B. Folding the per-channel weight scale on chip
    instead (storing one scalar per step) would need a float multiply, a normalisation and a division
    for the bias per channel per step in the requantizer's setup path (about 5 n operations per layer
    per step), which integer requantizers do not have. A quantized attention product has per-tensor
    operands: fp32 a/b/output scales + int32 multiplier + int8 shift = 17 B.
    Cost for OpenSora v1.0 (28 blocks, 19,584 output channels per block): ~4.9 MB per step."""
    return 9 * n + 8 if kind == "linear" else 17


def annotate_trace(
    trace: Trace,
    recipe: Recipe,
    step_to_set: list[int] | None = None,
    step_to_scale_set: list[int] | None = None,
) -> Trace:
    """The op trace as the chip runs it under ``recipe`` (the trace contract: docs/architecture.md).

    Quantized GEMMs get their bit-widths, integer weight bytes and weight set, and every tensor is
    written at the width its readers read it (``_annotate_step``): the ops that do a conversion are
    named in the trace (quantize-on-write, requantization and dequantization epilogues, explicit
    quantize, smoothing and dynamic-statistics ops), so the hardware model charges each to its unit.
    ``step_to_set`` overrides the uniform step split into weight sets and ``step_to_scale_set`` the
    one into activation-scale sets (a calibrated split comes from the artifact). Recipes with
    ``scale_tables`` (one weight set, per-step scales) charge each quantized GEMM its step's constant
    table (``table_bytes``, :func:`scale_table_bytes`) instead of keeping those constants in the weights.
    """
    steps = trace.num_steps
    single = bool(trace.meta.get("single_gemm"))
    if single:  # `gemm:M,K,N`: the one GEMM is the layer being checked
        recipe = dataclasses.replace(recipe, layers=("*",))
    if step_to_set is None:
        step_to_set = recipe.uniform_step_to_set(steps)
    if len(step_to_set) != steps:
        raise ConfigError("step_to_set", len(step_to_set), f"one weight-set index per step ({steps})")
    if step_to_scale_set is None:
        step_to_scale_set = recipe.uniform_step_to_scale_set(steps)
    if len(step_to_scale_set) != steps:
        raise ConfigError("step_to_scale_set", len(step_to_scale_set), f"one scale-set index per step ({steps})")
    if recipe.quantized:
        linear_names = {op.name for op in trace.ops if op.kind == "linear"}
        for pattern in recipe.layers:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in linear_names):
                raise ConfigError(
                    "recipe.layers",
                    pattern,
                    "patterns matching linear layers of the model, e.g. blocks.* or blocks.*.mlp.fc1",
                )
    out: list[Op] = list(trace.ops)
    if recipe.quantized:
        by_step: dict[int, list[Op]] = {}
        for op in trace.ops:
            by_step.setdefault(op.step, []).append(op)
        templates: dict[tuple, list[Op]] = {}
        out = []
        for step, ops in by_step.items():
            key = tuple(
                (op.name, op.kind, op.batch, op.m, op.k, op.n, op.elements, op.input_bytes, op.output_bytes, op.reads)
                for op in ops
            )
            tpl = templates.get(key)
            if tpl is None:
                tpl = templates[key] = _annotate_step(ops, recipe, single)
            wset = step_to_set[step]
            for t in tpl:
                out.append(_stamped(t, step, wset))
    meta = {
        **trace.meta,
        "recipe": recipe.name,
        "scheme": recipe.scheme,
        "w_bits": recipe.w_bits,
        "a_bits": recipe.a_bits,
        "num_weight_sets": (max(step_to_set) + 1) if recipe.quantized else 0,
        "step_to_set": list(step_to_set) if recipe.quantized else [],
        "num_scale_sets": (max(step_to_scale_set) + 1) if recipe.quantized else 0,
        "step_to_scale_set": list(step_to_scale_set) if recipe.quantized else [],
    }
    return Trace(ops=out, meta=meta, version=trace.version)


def _smooth_op(op: Op, elements: int, out_bits: int) -> Op:
    """The vector unit's on-line SmoothQuant multiply before ``op`` (fp16 factors, one per input
    channel), writing ``out_bits``-wide values: 16 when a dynamic quantizer reads them next, the
    activation width when the multiply quantizes as it writes."""
    return Op(
        op.step,
        f"{op.name}.smooth",
        "smooth_mul",
        op.batch,
        op.m,
        op.k,
        0,
        elements=elements,
        weight_bytes=2 * op.k,
        output_bytes=_bytes(elements, out_bits),
        weight_set=_QSET,
        out_bits=out_bits,
        block=op.block,
    )


def _stamped(op: Op, step: int, wset: int) -> Op:
    new = object.__new__(Op)  # dataclasses.replace is ~10x slower; 50k ops per trace
    new.__dict__.update(op.__dict__)
    new.__dict__["step"] = step
    if op.weight_set == _QSET:
        new.__dict__["weight_set"] = wset
    return new


def _annotate_step(ops: list[Op], recipe: Recipe, single: bool) -> list[Op]:
    """One step's ops under a quantized recipe, with what each op writes and reads.

    Static schemes (what ``quantmodel.emulator`` runs): a quantized GEMM reads int8 codes, adds its
    int32 bias and requantizes its int32 sums to int16 codes, which its float readers turn to FP16.
    When all its readers are float the GEMM's epilogue makes that FP16 value where it writes
    (``epilogue="requant_dequant"``, the same numbers); when an integer GEMM also reads the codes it
    writes them (``"requant"``) and each float reader converts on read (``dequant_elements``).
    Its int8 input is written by the producer when the GEMM is the producer's only reader
    (``epilogue="quant"``: quantize on write; folded SmoothQuant factors ride in that producer's
    parameters), by a SmoothQuant multiply for the layers whose factors cannot be folded
    (``smooth_mul``: multiply, then quantize), and otherwise by a ``quantize`` op of its own (the
    producer's other readers keep FP16; each layer has its own static scale). Dynamic: ``dyn_stats``
    reads the FP16 tensor and writes int8 codes plus a scale per row; the GEMM writes its int32
    sums; ``dyn_rescale`` reads them and the row scales and writes FP16 for the GEMM's readers.
    Template ops of the quantized weight set carry ``_QSET``.
    """
    return _StepAnnotator(ops, recipe, single).run()


class _StepAnnotator:
    """The decisions of ``_annotate_step`` (which op writes which width, which ops are inserted),
    then the ops emitted with their ``reads`` and byte counts made to match."""

    def __init__(self, ops: list[Op], recipe: Recipe, single: bool):
        self.ops, self.recipe, self.single, self.a = ops, recipe, single, recipe.a_bits
        self.index = {op.name: i for i, op in enumerate(ops)}
        self.entries = [op.read_entries() for op in ops]
        self.readers: dict[str, list[str]] = {}  # producer -> the ops that read it (once per tensor read)
        for op, ents in zip(ops, self.entries):
            for p, _, _, _ in ents:
                self.readers.setdefault(p, []).append(op.name)
        self.quant = [recipe.quantizes(op.name, op.kind) for op in ops]
        self.new_entries = [list(e) for e in self.entries]
        self.before: dict[int, list[tuple[Op, list]]] = {}
        self.after: dict[int, tuple[Op, list]] = {}
        self.write_quant: set[int] = set()
        self.rename: dict[str, str] = {}

    def _is_quant(self, name: str) -> bool:
        return name in self.index and self.quant[self.index[name]]

    def run(self) -> list[Op]:
        for j, op in enumerate(self.ops):
            if self.quant[j]:
                (self._dynamic if self.recipe.scheme == "dynamic" else self._static)(j, op)
        out: list[Op] = []
        for j, op in enumerate(self.ops):
            for q, src in self.before.get(j, ()):
                out.append(self._emitted(q, src, {}))
            out.append(self._emitted(op, self.new_entries[j], self._own_changes(j, op)))
            if j in self.after:
                out.append(self._emitted(*self.after[j], {}))
        return out

    def _dynamic(self, j: int, op: Op) -> None:
        """Per-token dynamic quantization around a GEMM; asymmetric recipes mark the stats and rescale
        ops ``epilogue="zero_point"`` (their extra vector work); channel balancing multiplies the input
        of a layer whose factors cannot be folded by 1/s first (``smooth_mul`` writing FP16)."""
        a, ents, rows = self.a, self.new_entries[j], op.batch * op.m
        n_operands = 1 if op.kind == "linear" else 2
        src = ents[:n_operands]
        el = sum(e for _, _, e, _ in src)
        zp = "zero_point" if self.recipe.asymmetric and op.kind == "linear" else ""
        pre: list = []
        if self.recipe.smoothing and op.kind == "linear" and op.name.endswith(UNFOLDABLE_SUFFIXES):
            sm = _smooth_op(op, el, 16)
            pre.append((sm, list(src)))
            src = [(sm.name, 0, el, 16)]
        d = Op(
            op.step,
            f"{op.name}.dyn_stats",
            "dyn_stats",
            op.batch,
            op.m,
            op.k,
            0,
            elements=el,
            output_bytes=_bytes(el, a) + 4 * rows,
            out_bits=a,
            block=op.block,
            epilogue=zp,
        )
        self.before[j] = pre + [(d, list(src))]
        offs = [sum(e for _, _, e, _ in src[:i]) for i in range(len(src))]
        ents[:n_operands] = [(d.name, o, e, a) for o, (_, _, e, _) in zip(offs, src)]
        r = Op(
            op.step,
            f"{op.name}.dyn_rescale",
            "dyn_rescale",
            op.batch,
            op.m,
            0,
            op.n,
            elements=rows * op.n,
            output_bytes=rows * op.n * 2,
            block=op.block,
            epilogue=zp,
        )
        self.after[j] = (r, [(op.name, 0, rows * op.n, 32), (d.name, el, rows, 32)])
        self.rename[op.name] = r.name

    def _static(self, j: int, op: Op) -> None:
        a, ents = self.a, self.new_entries[j]
        smooth = (
            self.recipe.smoothing
            and op.kind == "linear"
            and op.name.endswith(UNFOLDABLE_SUFFIXES + TEXT_SMOOTH_SUFFIXES)
        )
        for e_i in range(1 if op.kind == "linear" else 2):
            p, part, el, bits = ents[e_i]
            if smooth:  # SmoothQuant factors multiplied on line, then quantized, by the vector unit
                q = _smooth_op(op, el, a)
            elif (p == "" and self.single) or (p in self.index and not self._is_quant(p) and len(self.readers[p]) == 1):
                if p:  # the only reader: the producer quantizes as it writes
                    self.write_quant.add(self.index[p])
                ents[e_i] = (p, part, el, a)
                continue
            else:  # the producer's other readers keep FP16 (or int16 codes): a quantize op of its own
                q = Op(
                    op.step,
                    op.name + (".quant" if e_i == 0 else f".quant{e_i}"),
                    "quantize",
                    op.batch,
                    op.m,
                    op.k,
                    0,
                    elements=el,
                    output_bytes=_bytes(el, a),
                    out_bits=a,
                    block=op.block,
                )
            self.before.setdefault(j, []).append((q, [(p, part, el, bits)]))
            ents[e_i] = (q.name, 0, el, a)

    def _own_changes(self, j: int, op: Op) -> dict:
        """Field changes of an op of the float trace: its width on write and, for a quantized GEMM,
        its bits, weights and output."""
        a, changes = self.a, {}
        if j in self.write_quant:
            changes.update(out_bits=a, output_bytes=_bytes(op.elements, a), epilogue="quant")
        if self.quant[j]:
            rows = op.batch * op.m
            w_bits = self.recipe.w_bits_for(op.name)  # mixed precision: the layer's own bits
            changes.update(w_bits=w_bits if op.kind == "linear" else a, a_bits=a)
            if op.kind == "linear":
                # packed weights + 8 B per channel of requantization constants (with the weights), or
                # the weights alone and the constants in the step's table (scale_tables recipes)
                consts = 0 if self.recipe.scale_tables else 8 * op.n
                changes.update(weight_set=_QSET, weight_bytes=_bytes(op.k * op.n, w_bits) + consts)
            if self.recipe.scale_tables:
                changes.update(table_bytes=scale_table_bytes(op.kind, op.n))
            if self.recipe.scheme == "dynamic":
                changes.update(out_bits=32, output_bytes=rows * op.n * 4)
            else:  # int16 codes or their FP16 values: the same bytes
                codes = any(self._is_quant(c) for c in self.readers.get(op.name, ()))
                changes.update(
                    out_bits=16, output_bytes=rows * op.n * 2, epilogue="requant" if codes else "requant_dequant"
                )
        return changes

    def _emitted(self, op: Op, ents: list, changes: dict) -> Op:
        """``op`` reading ``ents`` (producers renamed where a rescale now writes for them), with its
        input bytes and, in static schemes, the codes it converts on read."""
        ents = [(p if self.rename.get(p, op.name) == op.name else self.rename[p], o, e, b) for p, o, e, b in ents]
        if ents != op.read_entries():
            changes["reads"] = reads_str(ents)
            used = ents[:1] if op.kind in ("linear", "conv") else ents
            changes["input_bytes"] = sum(entry_bytes(e, b) for _, _, e, b in used)
        if self.recipe.scheme != "dynamic" and op.kind != "quantize" and not self._is_quant(op.name):
            deq = sum(
                e
                for p, _, e, _ in ents
                if self._is_quant(p) and p != op.name and any(self._is_quant(c) for c in self.readers[p])
            )
            if deq:  # reading a static GEMM's int16 codes (also read by an integer GEMM) as floats
                changes["dequant_elements"] = deq
        return dataclasses.replace(op, **changes) if changes else op
