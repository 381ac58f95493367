"""SmoothQuant for STDiT: per-input-channel factors that move activation outliers into the weights,
and where each layer's factors go on a chip without dynamic-quantization hardware.

``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``, ``X' = X / s``, ``W' = W * s`` (so ``X' W'^T == X W^T``).
The division ``X / s`` must happen somewhere before the GEMM. Per layer of a block:

- ``attn.qkv``, ``mlp.fc1``: input is a LayerNorm without affine, modulated per step
  (``x * (1 + scale) + shift``): fold into the modulation, ``x * ((1 + scale) / s) + shift / s``;
- ``attn.proj``, ``attn_temp.proj``, ``cross_attn.proj``: input is ``softmax(QK^T) V``, linear in V:
  fold into the V output rows (weights and bias) of the layer that produces V;
- ``cross_attn.kv_linear``: input is the projected text, the same at every step: fold into the text
  projection's output (``y_embedder.y_proj.fc2``), one copy per block, computed once per prompt;
- ``attn_temp.qkv`` (raw residual), ``cross_attn.q_linear`` (raw residual), ``mlp.fc2`` (GELU output):
  nothing to fold into, so the chip runs an explicit per-channel multiply (``smooth_mul`` in the trace).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantmodel.model.layers import Modulate
from quantmodel.model.stdit import STDiT
from workloads.recipes import UNFOLDABLE_SUFFIXES

EPS = 1e-5  # SmoothQuant's clamp on both maxima (keeps factors finite for dead channels)

# how the factors of a layer (by name suffix) reach the chip
FOLD_MODULATE = {".attn.qkv": "modulate1", ".mlp.fc1": "modulate2"}
FOLD_VROWS = {
    ".attn.proj": ".attn.qkv",
    ".attn_temp.proj": ".attn_temp.qkv",
    ".cross_attn.proj": ".cross_attn.kv_linear",
}
FOLD_TEXT = (".cross_attn.kv_linear",)


def smooth_factors(x_ch_absmax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """Factors s [k] from per-input-channel activation abs-max [k] and weights [n, k].
    A channel never seen active in calibration keeps s = 1 (no reason to move it)."""
    xa = x_ch_absmax.float()
    wa = w.detach().float().abs().amax(dim=0)  # [k]
    s = xa.clamp(min=EPS) ** alpha / wa.clamp(min=EPS) ** (1 - alpha)
    return torch.where(xa > 0, s, torch.ones_like(s))


def fold_kind(layer: str, quantized_layers: set[str] | None = None) -> str:
    """Where a layer's factors go: 'modulate', 'vrows', 'text' or 'mul' (explicit multiply).

    V-row folding needs the producer's weights to be re-quantized with the fold, so it is used only
    when the producer is quantized by the same recipe; otherwise the multiply stays explicit."""
    for sfx in FOLD_MODULATE:
        if layer.endswith(sfx):
            return "modulate"
    for sfx, prod in FOLD_VROWS.items():
        if layer.endswith(sfx):
            producer = layer[: -len(sfx)] + prod
            if quantized_layers is None or producer in quantized_layers:
                return "vrows"
            return "mul"
    if layer.endswith(FOLD_TEXT):
        return "text"
    if layer.endswith(UNFOLDABLE_SUFFIXES):
        return "mul"
    return "mul"  # any other linear a custom recipe names: an explicit multiply is always correct


def vrow_producer(layer: str) -> tuple[str, int]:
    """(producer layer, first V row) for a proj layer whose factors fold into V rows."""
    for sfx, prod in FOLD_VROWS.items():
        if layer.endswith(sfx):
            producer = layer[: -len(sfx)] + prod
            # qkv rows are [q | k | v]; kv_linear rows are [k | v]
            return producer, (2 if prod.endswith("qkv") else 1)
    raise KeyError(layer)


def modulate_name(layer: str) -> str:
    for sfx, mod in FOLD_MODULATE.items():
        if layer.endswith(sfx):
            return layer[: -len(sfx)] + "." + mod
    raise KeyError(layer)


# ---- a smoothed float model (checks the algebra; the quantizers reuse the same placement) ---------
class SmoothedModulate(Modulate):
    """Modulation with SmoothQuant factors folded in: ``x * ((1 + scale) / s) + shift / s``."""

    def __init__(self, inv_s: torch.Tensor):
        super().__init__()
        self.register_buffer("inv_s", inv_s)

    def forward(self, x, shift, scale):
        return x * ((1 + scale) * self.inv_s) + shift * self.inv_s


class PreScaledLinear(nn.Module):
    """``linear(x * inv_s)``: the explicit per-channel multiply (or the text-path fold) before a GEMM."""

    def __init__(self, linear: nn.Linear, inv_s: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_s", inv_s)

    def forward(self, x):
        return self.linear(x * self.inv_s)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def smoothed_model(model: STDiT, factors: dict[str, torch.Tensor], fold: bool = True) -> STDiT:
    """A float copy of ``model`` with each named linear's weights multiplied by its factors and its
    input divided by them — folded where STDiT allows (``fold=True``) or as explicit multiplies.
    Its output equals the original's up to float rounding (SmoothQuant's invariance)."""
    m = copy.deepcopy(model)
    names = set(factors)
    with torch.no_grad():
        # fold proj factors into producer V rows first (the producer's own factors then see the rows)
        for layer, s in factors.items():
            if fold and fold_kind(layer, None) == "vrows":
                prod, part = vrow_producer(layer)
                lin = m.get_submodule(prod)
                c = s.numel()
                lin.weight[part * c : (part + 1) * c] /= s[:, None]
                lin.bias[part * c : (part + 1) * c] /= s
        for layer, s in factors.items():
            lin = m.get_submodule(layer)
            lin.weight.mul_(s[None, :])
            kind = fold_kind(layer, None) if fold else "mul"
            if kind == "modulate":
                _set_module(m, modulate_name(layer), SmoothedModulate(1.0 / s))
            elif kind in ("mul", "text"):
                _set_module(m, layer, PreScaledLinear(lin, 1.0 / s))
            # vrows: already divided in the producer
    del names
    return m
