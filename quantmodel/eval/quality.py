"""Quality of a quantization recipe: how far the quantized model's final sample drifts from the float
model's, plus what the recipe costs in weight storage. The entry points other layers call:

- :func:`recipe_model_fn` -> ``model_fn(x, t, y, step)`` for any recipe (float, fake-quant or the
  integer emulator), so samplers and metrics can run it;
- :func:`evaluate_recipe` -> dict with the final sample's SQNR / PSNR against the float model (same
  noise, same prompts), the worst layer's SQNR, weight storage bytes and weight-set count;
- :func:`verify_recipe` -> the ``codesign verify`` report (integer ops vs the float64 reference).

Metrics. ``sqnr_db = 10 log10(sum ref^2 / sum (q - ref)^2)`` over the whole final latent;
``psnr_db = 20 log10((max ref - min ref) / rmse)`` (peak = the float sample's dynamic range).
Evaluation prompts are seeded differently from calibration prompts (held out).

On a trained workload (one whose preset names a ``trained`` module: ``stdit-shapes`` names
``shapes.trained``) the prompts are real captions (calibration too, with captions no evaluation
prompt uses), the sampler clips the predicted x0 to the pixel range, and the row
also carries the video metrics that module computes (``shapes.videometrics`` for the shapes model): semantic
accuracy of the clips against their prompts (the CLIP-score analogue), the Frechet distance of
classifier features to real clips (the FVD analogue) and a temporal-consistency figure. That is the
quality axis the design-space sweep uses for the small workload.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from quantmodel.emulator.integer import NONLINEAR_MODES, FakeQuantModel, IntegerEmulator, sqnr_db
from quantmodel.emulator.ties import run_ties
from quantmodel.eval.baseline import check_sqnr
from quantmodel.model.build import build_stdit
from quantmodel.model.captions import packed_caption_fn
from quantmodel.model.config import STDiTConfig
from quantmodel.model.samplers import sampler_for
from quantmodel.model.stdit import STDiT
from quantmodel.quant.artifact import QuantArtifact, build_artifact, quantized_linears
from quantmodel.quant.calibrate import CalibStats, calibrate, calibration_inputs
from workloads.errors import ConfigError
from workloads.presets import Gemm, Workload, get_workload
from workloads.recipes import Recipe, get_recipe

BACKENDS = ("emulator", "fakequant")
EVAL_SEED = 1234  # evaluation prompts and noise; calibration uses its own seed (default 0)


def load_model(workload: Workload | str, checkpoint: str | None = None, seed: int = 0, device: str = "cpu") -> STDiT:
    """The float model of a workload: a checkpoint, the trained weights of a trained workload,
    or a seeded random init."""
    w = get_workload(workload) if isinstance(workload, str) else workload
    if isinstance(w, Gemm):
        raise ConfigError("workload", w.name, "a model workload (a preset or YAML file), not a GEMM")
    if w.model.arch != "stdit":
        raise ConfigError(
            "workload.model.arch", w.model.arch, "stdit (the quantizer and emulator implement OpenSora v1.0 blocks)"
        )
    cfg = STDiTConfig.from_workload(w)
    if checkpoint:
        from quantmodel.model.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint, cfg, device=device)
    trained = trained_module(w)
    if trained is not None:
        return trained.load_model(device=device)
    return build_stdit(cfg, device=device, seed=seed)


def trained_module(workload: Workload | None) -> ModuleType | None:
    """The module a trained workload names in its ``trained`` field (``stdit-shapes``:
    ``shapes.trained``), else None. It provides ``load_model(device)``, ``prompts(n, seed) -> (labels,
    y [n, 1, L, Ct])`` (evaluation), ``calibration_prompts(n, seed)`` (the same, from captions no
    evaluation prompt uses) and ``video_metrics(video, reference, labels) -> dict``; loading it by name
    keeps this package free of imports of its clients."""
    if workload is None or not getattr(workload, "trained", ""):
        return None
    return importlib.import_module(workload.trained)


def trained_prompts(workload: Workload, num_samples: int, seed: int) -> tuple[dict, torch.Tensor]:
    """(labels, caption features [n, 1, L, Ct]) of a trained workload's prompt set drawn with ``seed``."""
    return trained_module(workload).prompts(num_samples, seed)


def get_stats(
    model: STDiT,
    workload: Workload,
    stats: CalibStats | str | Path | None = None,
    num_prompts: int = 4,
    seed: int = 0,
    text_features: str | None = None,
    text_tokens: int | None = None,
    wrap_model_fn=None,
) -> CalibStats:
    """Stats from a file (checked against the model and step count) or a fresh calibration
    (on ``stdit-shapes``: real caption features of captions no evaluation prompt uses, the trained
    module's ``calibration_prompts``; ``text_tokens``: prompts masked to that many real caption tokens;
    ``wrap_model_fn``: see ``calibrate``; the workload's sampler already clips x0 on pixel-space models)."""
    tt = {"text_tokens": text_tokens, "wrap_model_fn": wrap_model_fn}
    if stats is None and text_features is None and trained_module(workload) is not None:
        import tempfile

        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "calib_y.safetensors")
            y = trained_module(workload).calibration_prompts(num_prompts, seed + 101)[1]  # held-out captions
            save_file({"y": y.contiguous()}, path)
            stats = calibrate(model, workload, num_prompts=num_prompts, seed=seed, text_features=path, **tt)
    elif stats is None:
        stats = calibrate(model, workload, num_prompts=num_prompts, seed=seed, text_features=text_features, **tt)
    elif not isinstance(stats, CalibStats):
        stats = CalibStats.load(stats)
    stats.check_matches(model, workload.num_steps)
    return stats


def quantize_model(
    model: STDiT, workload: Workload, recipe: Recipe | str, stats: CalibStats | str | Path | None = None, **calib
) -> QuantArtifact:
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    quantized_linears(model, recipe)  # a bad layer pattern fails before any calibration work
    need_stats = recipe.scheme != "dynamic" or recipe.smoothing  # channel balancing calibrates too
    st = get_stats(model, workload, stats, **calib) if need_stats else None
    return build_artifact(model, recipe, st, workload.num_steps, workload.name)


def recipe_model_fn(
    model: STDiT,
    workload: Workload,
    recipe: Recipe | str,
    backend: str = "emulator",
    nonlinear: str = "fp16",
    stats: CalibStats | str | Path | None = None,
    artifact: QuantArtifact | None = None,
    device: str | None = None,
    verify: bool = False,
    layer_sqnr: bool = False,
    **calib,
) -> tuple[Callable, object]:
    """``(model_fn, runner)`` for a recipe: ``fp16`` gives the float model; otherwise the integer
    emulator (``backend='emulator'``, bit-exact) or the float fake-quant simulation (``'fakequant'``)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if backend not in BACKENDS:
        raise ConfigError("backend", backend, " or ".join(BACKENDS))
    if nonlinear not in NONLINEAR_MODES:
        raise ConfigError("nonlinear", nonlinear, " or ".join(NONLINEAR_MODES))
    if not recipe.quantized:
        return float_model_fn(model), model
    art = artifact or quantize_model(model, workload, recipe, stats, **calib)
    if backend == "fakequant":
        runner = FakeQuantModel(model, art)
    else:
        runner = IntegerEmulator(model, art, nonlinear=nonlinear, device=device, verify=verify, layer_sqnr=layer_sqnr)
    return packed_caption_fn(runner.model_fn), runner


def float_model_fn(model: STDiT) -> Callable:
    """``model_fn(x, t, y, step, mask=None)`` of the float model (the samplers' interface)."""
    return lambda x, t, y, step, mask=None: model(x, t, y, mask)


def eval_batch(
    model: STDiT,
    num_samples: int = 1,
    seed: int = EVAL_SEED,
    text_features: str | None = None,
    workload: Workload | None = None,
    text_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(z [n, C, T, H, W] initial noise, y [n, 1, L, Ct] prompts, caption mask [n, L] or None),
    seeded; real captions on ``stdit-shapes``; ``text_tokens`` masks all but that many tokens."""
    cfg = model.cfg
    if trained_module(workload) is not None and text_features is None:
        y = trained_prompts(workload, num_samples, seed)[1]
        mask = calibration_inputs(model, y.shape[0], seed, None, text_tokens)[1]
    else:
        y, mask = calibration_inputs(model, num_samples, seed, text_features, text_tokens)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(y.shape[0], cfg.in_channels, *cfg.input_size, generator=g)
    return z, y, mask


def eval_inputs(
    model: STDiT,
    num_samples: int = 1,
    seed: int = EVAL_SEED,
    text_features: str | None = None,
    workload: Workload | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, y) of :func:`eval_batch` for callers that run without a caption mask."""
    z, y, mask = eval_batch(model, num_samples, seed, text_features, workload)
    if mask is not None:
        raise ConfigError("text_features", text_features, "features without a mask here (use eval_batch)")
    return z, y


@torch.no_grad()
def sample(
    model_fn: Callable,
    model: STDiT,
    workload: Workload,
    z: torch.Tensor,
    y: torch.Tensor,
    seed: int = EVAL_SEED,
    progress: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed + 2)  # CPU noise: the same sample on every device
    mask = None if mask is None else mask.to(dev)
    out = sampler_for(workload).sample(
        model_fn, z.to(dev), y.to(dev), model.null_caption(y.shape[0]).to(dev), g, progress=progress, mask=mask
    )
    return out.float().cpu()


def sample_metrics(ref: torch.Tensor, out: torch.Tensor) -> dict:
    ref, out = ref.double(), out.double()
    err = float(((out - ref) ** 2).sum())
    rmse = math.sqrt(err / ref.numel())
    peak = float(ref.max() - ref.min())
    return {
        "sqnr_db": sqnr_db(float((ref * ref).sum()), err),
        "psnr_db": float("inf") if rmse == 0 else 20 * math.log10(peak / rmse),
    }


def clip_energies(ref: torch.Tensor, out: torch.Tensor) -> dict:
    """Per-clip signal and error energy of ``out`` [n, ...] against ``ref`` [n, ...], as comma lists
    (``repr`` of each float64: exact when read back). Why: the SQNR of any subset of the clips is
    ``10 log10(sum signal / sum error)`` over it, so a report can put a bootstrap interval over the
    clips on the figure without resampling anything (``shapes.intervals.clip_sqnr_intervals``)."""
    ref, out = ref.double(), out.double()
    sig = ref.pow(2).flatten(1).sum(1)  # [n]
    err = (out - ref).pow(2).flatten(1).sum(1)  # [n]
    return {
        "clip_signal_energy": ",".join(repr(float(v)) for v in sig),
        "clip_error_energy": ",".join(repr(float(v)) for v in err),
    }


def video_metrics(
    workload: Workload, video: torch.Tensor, reference: torch.Tensor, num_samples: int, seed: int = EVAL_SEED
) -> dict:
    """The video metrics of a trained workload's clips (empty for other workloads); ``stdit-shapes``: semantic accuracy
    (mean over attributes, and all five right), Frechet distance to real clips with its real-vs-real
    floor, and centroid jerk (temporal consistency)."""
    trained = trained_module(workload)
    if trained is None:
        return {}
    labels, _ = trained.prompts(num_samples, seed)
    return trained.video_metrics(video, reference, labels)


def float_weight_bytes(model: STDiT) -> int:
    return sum(2 * p.numel() for p in model.parameters())


def evaluate_recipe(
    model: STDiT,
    workload: Workload,
    recipe: Recipe | str,
    stats=None,
    backend: str = "emulator",
    nonlinear: str = "fp16",
    num_samples: int = 1,
    seed: int = EVAL_SEED,
    artifact: QuantArtifact | None = None,
    reference_sample: torch.Tensor | None = None,
    text_tokens: int | None = None,
    layer_sqnr: bool | None = None,
    **calib,
) -> dict:
    """Final-sample SQNR/PSNR vs the float model, worst-layer SQNR (emulator backend), weight storage
    bytes of all weight sets and the number of weight sets. ``text_tokens`` masks the evaluation
    prompts (and calibration, when it runs here) to that many real caption tokens. ``layer_sqnr``
    (default: with the emulator) measures every layer against its float input, which runs the eager
    emulator; without it the emulator runs its compiled program (the same sample bit for bit, faster)
    and the worst-layer columns are NaN and ""."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    z, y, mask = eval_batch(model, num_samples, seed, workload=workload, text_tokens=text_tokens)
    if reference_sample is None:
        reference_sample = sample(float_model_fn(model), model, workload, z, y, seed, mask=mask)
    row = {
        "recipe": recipe.name,
        "scheme": recipe.scheme,
        "w_bits": recipe.w_bits,
        "a_bits": recipe.a_bits,
        "backend": backend if recipe.quantized else "float",
        "nonlinear": nonlinear,
    }
    if not recipe.quantized:
        row.update(
            sqnr_db=float("inf"),
            psnr_db=float("inf"),
            worst_layer_sqnr_db=float("inf"),
            worst_layer="",
            weight_storage_bytes=float_weight_bytes(model),
            num_weight_sets=0,
            step_to_set="",
            **clip_energies(reference_sample, reference_sample),
        )
        row.update(video_metrics(workload, reference_sample, reference_sample, num_samples, seed))
        return row
    layer_sqnr = backend == "emulator" if layer_sqnr is None else layer_sqnr and backend == "emulator"
    art = artifact or quantize_model(model, workload, recipe, stats, text_tokens=text_tokens, **calib)
    fn, runner = recipe_model_fn(model, workload, recipe, backend, nonlinear, artifact=art, layer_sqnr=layer_sqnr)
    out = sample(fn, model, workload, z, y, seed, mask=mask)
    row.update(sample_metrics(reference_sample, out))
    row.update(clip_energies(reference_sample, out))
    row.update(video_metrics(workload, out, reference_sample, num_samples, seed))
    worst, worst_db = "", float("nan")
    if layer_sqnr:
        layers = runner.verifier.layer_sqnr_db()
        worst = min(layers, key=layers.get)
        worst_db = layers[worst]
    row.update(
        worst_layer_sqnr_db=worst_db,
        worst_layer=worst,
        weight_storage_bytes=art.weight_storage_bytes(),
        num_weight_sets=art.num_weight_sets,
        step_to_set=",".join(map(str, art.weight_step_to_set)),
    )
    return row


def verify_recipe(
    model: STDiT,
    workload: Workload,
    recipe: Recipe | str,
    nonlinear: str = "fp16",
    stats=None,
    artifact: QuantArtifact | None = None,
    device: str | None = None,
    num_samples: int = 1,
    eval_seed: int = EVAL_SEED,
    text_tokens: int | None = None,
    blocks: list[int] | None = None,
    steps: list[int] | None = None,
    **calib,
) -> dict:
    """Run one sampling loop in the emulator with every integer op checked against the float64
    reference on the same integer inputs; per-layer SQNR and the final sample's SQNR/PSNR.
    ``text_tokens`` masks the prompts to that many real caption tokens (calibration too). ``calib`` are the
    calibration settings (``num_prompts``, ``seed``, ``text_features``); the evaluation prompts and noise
    use ``eval_seed`` (held out from calibration). Besides the datapath it runs the quantizer checks of
    docs/verify.md (re-derived constants, fp16 kernel references, rounding ties, the SQNR baseline).
    ``blocks`` / ``steps`` (None: all) limit the datapath checks to those blocks in those steps. Most
    of its length is the report, one field per line (the runs are :func:`_checked_runs`)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if not recipe.quantized:
        raise ConfigError("recipe", recipe.name, "a quantized recipe (fp16 has no integer ops)")
    quantized_linears(model, recipe)  # a bad layer pattern fails before any calibration work
    if device is not None:  # calibration and the float reference run there (a full-size one on the CPU takes hours)
        model = model.to(device)
    st = _verify_stats(model, workload, recipe, stats, artifact, text_tokens, calib)
    art = artifact or build_artifact(model, recipe, st, workload.num_steps, workload.name)
    constants = _rederive_report(model, art, st)
    z, y, mask = eval_batch(model, num_samples, eval_seed, workload=workload, text_tokens=text_tokens)
    emu, fast, overflow, metrics, fast_equal = _checked_runs(
        model, workload, art, nonlinear, device, (z, y, mask), eval_seed, (blocks, steps)
    )
    ties = run_ties()  # every rounding site on crafted x.5 inputs (real runs never hit a tie)
    baseline = check_sqnr(workload.name, recipe.name, nonlinear, art.meta, metrics["sqnr_db"], num_samples, eval_seed)
    v = emu.verifier
    layers = v.layer_sqnr_db()
    worst = min(layers, key=layers.get) if layers else ""
    return {
        "workload": workload.name,
        "recipe": recipe.name,
        "nonlinear": nonlinear,
        "device": str(emu.device),
        "num_steps": workload.num_steps,
        "caption_mask": "all tokens" if mask is None else f"{text_tokens} of {mask.shape[1]} tokens",
        "num_weight_sets": art.num_weight_sets,
        "step_to_set": art.weight_step_to_set,
        "blocks_checked": "all" if emu.verify_blocks is None else sorted(emu.verify_blocks),
        "steps_checked": "all" if emu.verify_steps is None else sorted(emu.verify_steps),
        "layers_checked": len(v.checked_names),
        "checks": v.checks,
        "mismatches": v.mismatches,
        "max_abs_diff_lsb": v.max_abs_diff_lsb,
        "overflow": overflow,
        "saturated_codes": sum(v.saturated.values()),
        "fp16_saturated": v.fp16_saturated,
        "worst_layer": worst,
        "worst_layer_sqnr_db": layers.get(worst, float("nan")),
        "layer_sqnr_db": layers,
        "sample_sqnr_db": metrics["sqnr_db"],
        "sample_psnr_db": metrics["psnr_db"],
        "fast_path": "compiled" if any(p is not None for p in fast._programs.values()) else "eager",
        "fast_path_equal": fast_equal,
        "constants": constants,
        "vector_kernels": v.vector,
        "ties": ties,
        "sqnr_baseline": baseline,
        "ok": v.mismatches == 0
        and ties["ok"]
        and baseline.get("ok", True)
        and overflow is None
        and fast_equal is True
        and constants.get("ok", False)
        and v.vector_ok(),
    }


def _checked_runs(model, workload, art, nonlinear, device, batch, eval_seed, subset=(None, None)) -> tuple:
    """(checked emulator, unchecked emulator, overflow message or None, final-sample metrics, whether the
    unchecked emulator, as users run it with its compiled blocks where they apply, gives the checked run's
    final sample bit for bit)."""
    from quantmodel.intarith.intgemm import AccumulatorOverflowError

    z, y, mask = batch
    ref = sample(float_model_fn(model), model, workload, z, y, eval_seed, mask=mask)
    emu = IntegerEmulator(
        model, art, nonlinear=nonlinear, device=device, verify=True, verify_blocks=subset[0], verify_steps=subset[1]
    )
    overflow = None
    try:
        out = sample(packed_caption_fn(emu.model_fn), model, workload, z, y, eval_seed, mask=mask)
        metrics = sample_metrics(ref, out)
    except AccumulatorOverflowError as e:
        overflow, metrics = str(e), {"sqnr_db": float("nan"), "psnr_db": float("nan")}
    fast_equal, fast = None, IntegerEmulator(model, art, nonlinear=nonlinear, device=device)
    if overflow is None:
        fast_out = sample(packed_caption_fn(fast.model_fn), model, workload, z, y, eval_seed, mask=mask)
        fast_equal = bool(torch.equal(fast_out, out))
    return emu, fast, overflow, metrics, fast_equal


def _verify_stats(model, workload, recipe, stats, artifact, text_tokens, calib) -> CalibStats | None:
    """The calibration statistics the artifact's constants are re-derived from: the given ones, or
    (an artifact given without them) a fresh calibration with the settings the artifact records
    (calibration is seeded, so it gives the same statistics)."""
    if recipe.scheme == "dynamic" and not recipe.smoothing:
        return None
    if artifact is not None and stats is None:
        rec = artifact.meta.get("stats") or {}
        if rec.get("text_features") == "random-normal" or trained_module(workload) is not None:
            calib = {**calib, "num_prompts": int(rec.get("num_prompts", 1)), "seed": int(rec.get("seed", 0))}
    return get_stats(model, workload, stats, text_tokens=text_tokens, **calib)


def _rederive_report(model: STDiT, art: QuantArtifact, st: CalibStats | None) -> dict:
    """:func:`quantmodel.quant.rederive.rederive` of the artifact, or why it could not run (statistics
    other than those the artifact was built from)."""
    from quantmodel.quant.rederive import rederive

    if st is not None:
        want = {k: v for k, v in (art.meta.get("stats") or {}).items() if k != "text_features"}
        have = {k: v for k, v in st.meta.items() if k != "text_features"}
        if want != have:
            return {"ok": False, "skipped": "the artifact was built from other calibration statistics (pass --stats)"}
    return rederive(model, art, st).to_dict()
