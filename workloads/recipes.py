"""Quantization recipes: data that says what to quantize, at which bits, with which activation scheme.

Schemes (docs/architecture.md, "Quantization recipes"):
- ``fp16``: no quantization (the float reference);
- ``dynamic``: per-token activation scales computed on line (ViDiT-Q baseline; needs reduction hardware);
- ``static``: one per-tensor activation scale per layer over all steps, no smoothing (naive);
- ``asq``: static scales + SmoothQuant, both aggregated over all steps (one weight set);
- ``tsq+tsw``: per-step activation scales and per-step smoothed weights (one weight set per step);
- ``groups``: the steps split into K contiguous ranges, each with its own scales and smoothed weights
  (K=1 is ASQ, K=steps is TSQ+TSW); the split is uniform or chosen from calibration statistics.

Preset names read ``SCHEME-wXaY``: ``static-w8a8``, ``asq-w6a6``, ``tsq-tsw-w4a8``, ``groups4-w8a8``
(uniform split), ``groups4-cal-w8a8`` (calibrated split), ``dynamic-w8a8``, and ``fp16``.
``annotate_trace`` turns a float op trace into the quantized one the hardware model reads.
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
from workloads.trace import Op, Trace

SCHEMES = ("fp16", "dynamic", "static", "asq", "tsq+tsw", "groups")
SMOOTHING_SCHEMES = ("asq", "tsq+tsw", "groups")
W_BITS = (4, 6, 8)
A_BITS = (6, 8)
GROUP_SPLITS = ("uniform", "calibrated")
# Layers whose SmoothQuant factors cannot be folded: their input is the raw residual
# (attn_temp.qkv, cross_attn.q_linear) or a GELU output (mlp.fc2), so the chip multiplies on line.
UNFOLDABLE_SUFFIXES = (".attn_temp.qkv", ".cross_attn.q_linear", ".mlp.fc2")
_NAME_RE = re.compile(r"^(static|asq|tsq-tsw|dynamic|groups(\d+)(-cal)?)-w(\d+)a(\d+)$")


@dataclass(frozen=True)
class Recipe:
    name: str
    scheme: str = "fp16"
    w_bits: int = 16
    a_bits: int = 16
    alpha: float = 0.5  # SmoothQuant migration strength
    num_groups: int = 1  # for scheme "groups"
    group_split: str = "uniform"
    quantize_attention: bool = False  # also quantize QK^T and AV (integer-only chips need it)
    layers: tuple[str, ...] = ("*blocks.*",)  # glob patterns over linear-layer names (v1.0 blocks.N,
    # v1.2 spatial_blocks.N / temporal_blocks.N)

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
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("recipe.alpha", self.alpha, "a number in [0, 1]")
        if isinstance(self.num_groups, bool) or not isinstance(self.num_groups, int) \
                or self.num_groups < 1:
            raise ConfigError("recipe.num_groups", self.num_groups, "a positive integer")
        if self.group_split not in GROUP_SPLITS:
            raise ConfigError("recipe.group_split", self.group_split, " or ".join(GROUP_SPLITS))
        if isinstance(self.layers, str) or not self.layers \
                or not all(isinstance(p, str) and p for p in self.layers):
            raise ConfigError("recipe.layers", self.layers, "a non-empty list of layer-name patterns")
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def quantized(self) -> bool:
        return self.scheme != "fp16"

    @property
    def smoothing(self) -> bool:
        return self.scheme in SMOOTHING_SCHEMES

    def num_weight_sets(self, num_steps: int) -> int:
        if self.scheme == "tsq+tsw":
            return num_steps
        if self.scheme == "groups":
            return min(self.num_groups, num_steps)
        return 1

    def uniform_step_to_set(self, num_steps: int) -> list[int]:
        """Contiguous, as-equal-as-possible split of the steps into the recipe's weight sets."""
        k = self.num_weight_sets(num_steps)
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
        return d


def recipe_from_name(name: str) -> Recipe:
    if name == "fp16":
        return Recipe(name="fp16")
    m = _NAME_RE.match(name)
    if not m:
        raise ConfigError("recipe", name, "fp16, SCHEME-wXaY with SCHEME in static, asq, tsq-tsw, "
                          "dynamic, groupsK, groupsK-cal (codesign recipes lists them), or a YAML file")
    head, k, cal, w, a = m.groups()
    scheme = "groups" if head.startswith("groups") else head.replace("tsq-tsw", "tsq+tsw")
    return Recipe(name=name, scheme=scheme, w_bits=int(w), a_bits=int(a),
                  num_groups=int(k) if k else 1, group_split="calibrated" if cal else "uniform")


def recipe_from_dict(data: object, default_name: str = "custom") -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    check_known_fields("recipe", data, known)
    data = dict(data)
    data.setdefault("name", default_name)
    if "layers" in data and isinstance(data["layers"], list):
        data["layers"] = tuple(data["layers"])
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
        names += [f"dynamic-{sfx}", f"static-{sfx}", f"asq-{sfx}", f"tsq-tsw-{sfx}"]
        names += [f"groups{k}-{sfx}" for k in group_counts]
        names += [f"groups{k}-cal-{sfx}" for k in group_counts]
    return names


# ---- the quantized op trace -------------------------------------------------------------------
def _bytes(elements: int, bits: int) -> int:
    return math.ceil(elements * bits / 8)


def annotate_trace(trace: Trace, recipe: Recipe, step_to_set: list[int] | None = None) -> Trace:
    """The op trace as the chip runs it under ``recipe`` (the trace contract: docs/architecture.md).

    Quantized GEMMs get their bit-widths, integer weight bytes and weight set; smoothing multiplies
    that cannot be folded and the dynamic-statistics ops are inserted where the chip runs them.
    ``step_to_set`` overrides the uniform step split (a calibrated split comes from the artifact).
    """
    steps = trace.num_steps
    if trace.meta.get("single_gemm"):  # `gemm:M,K,N`: the one GEMM is the layer being checked
        recipe = dataclasses.replace(recipe, layers=("*",))
    if step_to_set is None:
        step_to_set = recipe.uniform_step_to_set(steps)
    if len(step_to_set) != steps:
        raise ConfigError("step_to_set", len(step_to_set), f"one weight-set index per step ({steps})")
    if recipe.quantized:
        linear_names = {op.name for op in trace.ops if op.kind == "linear"}
        for pattern in recipe.layers:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in linear_names):
                raise ConfigError("recipe.layers", pattern, "patterns matching linear layers of the "
                                  "model, e.g. blocks.* or blocks.*.mlp.fc1")
    out: list[Op] = []
    for op in trace.ops:
        if not recipe.quantizes(op.name, op.kind):
            out.append(op)
            continue
        wset = step_to_set[op.step]
        rows = op.batch * op.m
        if op.kind == "linear":
            q = dataclasses.replace(
                op, w_bits=recipe.w_bits, a_bits=recipe.a_bits, weight_set=wset,
                weight_bytes=_bytes(op.k * op.n, recipe.w_bits) + 8 * op.n,
                input_bytes=_bytes(rows * op.k, recipe.a_bits))
        else:  # attention matmul: both operands are activations at a_bits
            q = dataclasses.replace(
                op, w_bits=recipe.a_bits, a_bits=recipe.a_bits,
                input_bytes=_bytes(op.batch * (op.m * op.k + op.k * op.n), recipe.a_bits))
        if recipe.scheme == "dynamic":
            out.append(Op(op.step, f"{op.name}.dyn_stats", "dyn_stats", op.batch, op.m, op.k, 0,
                          elements=rows * op.k, input_bytes=rows * op.k * 2,
                          output_bytes=_bytes(rows * op.k, recipe.a_bits) + 4 * rows, block=op.block))
            out.append(q)
            out.append(Op(op.step, f"{op.name}.dyn_rescale", "dyn_rescale", op.batch, op.m, 0, op.n,
                          elements=rows * op.n, input_bytes=rows * op.n * 2,
                          output_bytes=rows * op.n * 2, block=op.block))
            continue
        if recipe.smoothing and op.kind == "linear" and op.name.endswith(UNFOLDABLE_SUFFIXES):
            out.append(Op(op.step, f"{op.name}.smooth", "smooth_mul", op.batch, op.m, op.k, 0,
                          elements=rows * op.k, weight_bytes=2 * op.k, input_bytes=rows * op.k * 2,
                          output_bytes=rows * op.k * 2, weight_set=wset, block=op.block))
        out.append(q)
    meta = {**trace.meta, "recipe": recipe.name, "scheme": recipe.scheme, "w_bits": recipe.w_bits,
            "a_bits": recipe.a_bits, "num_weight_sets": (max(step_to_set) + 1) if recipe.quantized else 0,
            "step_to_set": list(step_to_set) if recipe.quantized else []}
    return Trace(ops=out, meta=meta, version=trace.version)
