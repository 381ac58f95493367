"""Mutation test of ``codesign verify``: plant each known class of quantizer / emulator bug in-process
(monkeypatching, no file is edited), run verify, and report which of its checks caught it.

    python tests/mutation/run_mutations.py                 # stdit-tiny, asq-w8a8, fp16 mode: the table
    python tests/mutation/run_mutations.py --steps 2       # faster, without the SQNR baseline (other settings)

Every planted bug must be caught (exit 1 otherwise). ``tests/mutation/test_mutations.py`` runs a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from quantmodel.intarith import fixedpoint, intgemm, intops  # noqa: E402
from quantmodel.quant import artifact  # noqa: E402


@contextlib.contextmanager
def _patched(obj, name: str, new) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, new)
    try:
        yield
    finally:
        setattr(obj, name, old)


# ---- half away from zero, planted on top of the real results -----------------------------------------------
def _away_requant(rq, acc: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """``res`` with every exact tie of ``acc * m / 2**s`` rounded away from zero instead of to even."""
    m, s = rq.m.cpu(), rq.s.cpu()
    if m.dim() and acc.dim():
        shape = [1] * (acc.dim() - 1) + [-1]
        m, s = m.reshape(shape), s.reshape(shape)
    p = acc.cpu().to(torch.int64) * m
    sc = s.clamp(1, 62)
    half = torch.bitwise_left_shift(torch.ones_like(sc), sc - 1)
    tie = (torch.remainder(p, 2 * half) == half) & (s >= 1) & (s <= 62)
    away = torch.div(p, 2 * half, rounding_mode="floor") + (p > 0).to(torch.int64)
    away = away.clamp(rq.qmin, rq.qmax).to(res.dtype)
    out = res.clone()
    out[tie.expand_as(out)] = away.expand_as(out)[tie.expand_as(out)]
    return out


@contextlib.contextmanager
def half_away_requant() -> Iterator[None]:
    """Requantization rounds ties half away from zero (gemmlowp's rule) in every entry point."""
    call, fused, gemm = fixedpoint.Requantizer.__call__, fixedpoint.Requantizer.fused, intgemm.PreparedLinear.__call__

    def new_call(self, acc, out=None):
        res = call(self, acc)
        res = _away_requant(self, acc, res)
        if out is not None:
            out.copy_(res)
            return out
        return res

    def new_fused(self, acc2, out2, bias=None):
        if not fused(self, acc2, out2, bias):
            return False
        a = acc2.to(torch.int64) + (0 if bias is None else bias.to(torch.int64))
        out2.copy_(_away_requant(self, a, out2))
        return True

    def new_gemm(self, x):
        res = gemm(self, x)
        acc = x.reshape(-1, self.k).to(torch.int64) @ self.w_t.to(torch.int64)
        if self.bias is not None:
            acc = acc + self.bias.to(torch.int64)
        return _away_requant(self.rq, acc, res.reshape(acc.shape)).reshape(res.shape)

    with (
        _patched(fixedpoint.Requantizer, "__call__", new_call),
        _patched(fixedpoint.Requantizer, "fused", new_fused),
        _patched(intgemm.PreparedLinear, "__call__", new_gemm),
    ):
        yield


@contextlib.contextmanager
def half_away_act_quant() -> Iterator[None]:
    """Activation quantization (the vector unit's float -> int) rounds ties half away from zero."""
    call = fixedpoint.ActQuantizer.__call__

    def new_call(self, x):
        res = call(self, x)
        v = x.to(torch.float32) * self.recip  # the definition's one float32 product
        tie = (v - v.floor()) == 0.5
        away = (v.abs() + 0.5).floor().copysign(v).clamp(-self.qmax, self.qmax).to(res.dtype)
        return torch.where(tie, away, res)

    with _patched(fixedpoint.ActQuantizer, "__call__", new_call):
        yield


# ---- quantizer bugs (the artifact) -------------------------------------------------------------------------
@contextlib.contextmanager
def rolled_weight_scales() -> Iterator[None]:
    """The quantizer's per-channel weight scales rolled by one channel (codes, bias and requantizer follow)."""
    orig = fixedpoint.quantize_weight_per_channel

    def rolled(w, bits):
        q, s = orig(w, bits)
        return q, s.roll(1)

    with _patched(fixedpoint, "quantize_weight_per_channel", rolled):
        yield


@contextlib.contextmanager
def wrong_smoothing() -> Iterator[None]:
    """SmoothQuant factors computed with alpha 0.55 instead of the recipe's (the weights follow)."""
    orig = artifact.smooth_factors
    with _patched(artifact, "smooth_factors", lambda x, w, alpha: orig(x, w, alpha + 0.05)):
        yield


@contextlib.contextmanager
def wrong_bias() -> Iterator[None]:
    """The int32 bias one LSB high on every channel of every layer."""
    orig = artifact._quantize_linear

    def biased(tensors, pres, *args, **kw):
        orig(tensors, pres, *args, **kw)
        pre = pres[1]  # (weight-set prefix, scale-set prefix): the int32 bias belongs to the scale set
        if pre + "bias_q" in tensors:
            tensors[pre + "bias_q"] = tensors[pre + "bias_q"] + 1

    with _patched(artifact, "_quantize_linear", biased):
        yield


@contextlib.contextmanager
def wrong_zero_point() -> Iterator[None]:
    """Asymmetric activations: every zero point one code off (the bias correction follows it)."""
    from quantmodel.quant import estimators

    orig = estimators.zero_point

    def shifted(lo, hi, bits):
        scale, z = orig(lo, hi, bits)
        return scale, z + 1

    with _patched(estimators, "zero_point", shifted):
        yield


# ---- vector-unit bugs -----------------------------------------------------------------------------------
@contextlib.contextmanager
def gelu_dropped_rounding() -> Iterator[None]:
    """fp16 GELU with the cube kept in float32 (one fp16 rounding of the definition dropped)."""

    def gelu(x):
        xf = x.float()
        inner = intops._h(0.7978845608028654 * (xf + intops._h(0.044715 * (xf * xf * xf)).float()))
        return intops._h(0.5 * xf * (1.0 + intops._h(torch.tanh(inner.float())).float()))

    with _patched(intops, "gelu_fp16", gelu):
        yield


@contextlib.contextmanager
def modulate_dropped_rounding() -> Iterator[None]:
    """fp16 modulate computing x * (1 + scale) + shift with one rounding at the end instead of two."""

    def modulate(x, shift, scale):
        one_p = intops._h(1.0 + intops._h(scale).float())
        return intops._h(x.float() * one_p.float() + intops._h(shift).float())

    with _patched(intops, "modulate_fp16", modulate):
        yield


MUTANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "rolled per-channel weight scales": rolled_weight_scales,
    "half away from zero in requantization": half_away_requant,
    "half away from zero in activation quantization": half_away_act_quant,
    "dropped fp16 rounding in GELU": gelu_dropped_rounding,
    "dropped fp16 rounding in modulate": modulate_dropped_rounding,
    "wrong smoothing factors (alpha + 0.05)": wrong_smoothing,
    "int32 bias off by one": wrong_bias,
    "zero point one code off": wrong_zero_point,
}
# mutants that need a recipe with the feature they break (the others run on the --recipe given)
RECIPE_OF = {"zero point one code off": "asq-asym-w8a8"}


def caught_by(rep: dict) -> list[str]:
    """The verify checks that failed, by name."""
    out = []
    if rep["mismatches"]:
        out.append("datapath")
    if not rep["constants"].get("ok", False):
        out.append("constants")
    if any(
        c["mismatches"] and (not c["tolerant"] or c["mismatches"] > 1e-3 * c["elements"] or c["max_ulp"] > 1)
        for c in rep["vector_kernels"].values()
    ):
        out.append("fp16 kernels")
    if not rep["ties"]["ok"]:
        out.append("ties")
    if rep["sqnr_baseline"].get("applies") and not rep["sqnr_baseline"]["ok"]:
        out.append("sqnr baseline")
    if rep["fast_path_equal"] is False:
        out.append("fast path")
    if rep["overflow"]:
        out.append("overflow")
    return out


def run(
    names: list[str] | None = None,
    recipe: str = "asq-w8a8",
    steps: int | None = None,
    nonlinear: str = "fp16",
    prompts: int = 4,
    clean: bool = True,
):
    """Rows (bug, caught by, verdict, final SQNR) for the named mutants (all by default), plus the clean run."""
    from quantmodel.eval.quality import load_model, verify_recipe
    from workloads.presets import get_workload

    w = get_workload("stdit-tiny")
    if steps is not None:
        w = dataclasses.replace(w, num_steps=steps)
    model = load_model(w)
    rows = []
    names = names or list(MUTANTS)
    recipes = list(dict.fromkeys([recipe] + [RECIPE_OF[n] for n in names if n in RECIPE_OF])) if clean else []
    for name, rec in [(None, r) for r in recipes] + [(n, RECIPE_OF.get(n, recipe)) for n in names]:
        ctx = MUTANTS[name]() if name else contextlib.nullcontext()
        with ctx:
            rep = verify_recipe(model, w, rec, nonlinear, num_prompts=prompts, seed=0)
        by = caught_by(rep)
        ok_verdict = (not by and rep["ok"]) if name is None else (bool(by) and not rep["ok"])
        rows.append(
            {
                "bug": name or "(none: the clean build)",
                "recipe": rec,
                "caught_by": ", ".join(by) or "-",
                "verdict": ("clean" if ok_verdict else "FALSE ALARM")
                if name is None
                else ("caught" if ok_verdict else "MISSED"),
                "sample_sqnr_db": rep["sample_sqnr_db"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plant each bug, run codesign verify, report which check caught it")
    p.add_argument("--recipe", default="asq-w8a8")
    p.add_argument("--steps", type=int, help="denoising steps (default: the workload's; the SQNR baseline needs it)")
    p.add_argument("--nonlinear", default="fp16")
    a = p.parse_args(argv)
    rows = run(recipe=a.recipe, steps=a.steps, nonlinear=a.nonlinear)
    print(f"{'bug':<48} {'recipe':<14} {'caught by':<28} {'verdict':<8} final SQNR")
    for r in rows:
        print(f"{r['bug']:<48} {r['recipe']:<14} {r['caught_by']:<28} {r['verdict']:<8} {r['sample_sqnr_db']:.2f} dB")
    return 0 if all(r["verdict"] in ("caught", "clean") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
