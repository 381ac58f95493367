"""`codesign recipes | calibrate | quantize | verify | quality`: the quantization half of the project.

- ``recipes``: the preset recipe names with scheme, bits and weight sets;
- ``calibrate``: per-step activation statistics of a workload's float model -> safetensors file;
- ``quantize``: recipe + stats -> the quantized-model artifact (safetensors + JSON header);
- ``verify``: one sampling loop in the integer emulator, every integer op checked against the float64
  reference (exit 1 on any mismatch or overflow), per-layer SQNR, final sample SQNR/PSNR;
- ``quality``: recipe x bits -> final-sample SQNR/PSNR, worst-layer SQNR, weight storage, weight sets.
"""

from __future__ import annotations

import json
import math
import sys

from codesign.cli import progress_enabled
from codesign.cli.checks import check_device
from workloads.io import atomic_path

BITS_DEFAULT = "w8a8,w6a6,w4a8"


def _common(p, stats: bool = True) -> None:
    p.add_argument("--workload", required=True, help="preset name or YAML file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the model, calibration and emulator run there)")
    p.add_argument(
        "--checkpoint",
        help="OpenSora STDiT checkpoint (default: shipped weights of stdit-shapes, else a seeded random init)",
    )
    p.add_argument("--seed", type=int, default=0, help="random-init and calibration seed")
    if stats:
        p.add_argument("--stats", help="calibration stats file (default: calibrate now)")
        p.add_argument("--prompts", type=int, default=4, help="calibration prompts when calibrating now")
        p.add_argument("--text", help="T5 features [n,1,L,Ct] (.pt/.safetensors, optional 'mask') for calibration")
        _text_tokens(p)


def _text_tokens(p) -> None:
    p.add_argument(
        "--text-tokens",
        type=int,
        help="real caption tokens per prompt; the rest are masked as T5 padding (default: all tokens)",
    )


def register(sub) -> None:
    p = sub.add_parser("recipes", help="list the preset quantization recipes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_recipes)

    p = sub.add_parser("calibrate", help="per-step activation statistics of a workload")
    _common(p, stats=False)
    p.add_argument("--prompts", type=int, default=4, help="number of calibration prompts")
    p.add_argument(
        "--text",
        help="T5 features [n,1,L,Ct] (.pt/.safetensors, optional caption 'mask' [n,L]); seeded random otherwise",
    )
    _text_tokens(p)
    p.add_argument("--out", required=True, help="stats file (.safetensors)")
    p.set_defaults(func=run_calibrate)

    p = sub.add_parser("quantize", help="build the quantized-model artifact of a recipe")
    _common(p)
    p.add_argument("--recipe", required=True, help="preset name (codesign recipes) or YAML file")
    p.add_argument("--out", required=True, help="artifact file (.safetensors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_quantize)

    p = sub.add_parser("verify", help="integer emulator vs float64 reference, layer by layer")
    _common(p)
    p.add_argument("--recipe", required=True)
    p.add_argument("--artifact", help="use this artifact instead of quantizing now")
    p.add_argument("--nonlinear", default="fp16", help="vector-unit mode: fp16 or int")
    p.add_argument("--layers", help="check only these blocks, e.g. 0,13,27 (default: all)")
    p.add_argument("--steps", help="check only these sampling steps, e.g. 0,50,99 (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_verify)

    p = sub.add_parser("quality", help="quality table: recipe x bits -> SQNR/PSNR, storage")
    _common(p)
    p.add_argument(
        "--recipes", required=True, help="comma list; names without -wXaY are crossed with --bits (e.g. asq,tsq-tsw)"
    )
    p.add_argument("--bits", default=BITS_DEFAULT, help=f"bit pairs for bare names (default {BITS_DEFAULT})")
    p.add_argument("--backend", default="emulator", help="emulator (integer, default) or fakequant")
    p.add_argument("--nonlinear", default="fp16", help="fp16 or int")
    p.add_argument("--samples", type=int, default=1, help="evaluation samples")
    p.add_argument("--out", help="write the table (.csv or .parquet)")
    p.set_defaults(func=run_quality)


def _workload(name: str):
    from workloads.errors import ConfigError
    from workloads.presets import Gemm, get_workload

    w = get_workload(name)
    if isinstance(w, Gemm):
        raise ConfigError("workload", name, "a model workload (a preset or YAML file), not a GEMM")
    return w


def _check_out(path: str, suffixes: tuple[str, ...]) -> None:
    from codesign.cli.checks import check_out_file

    check_out_file("out", path, suffixes)


def _calib_kwargs(args) -> dict:
    from codesign.cli.checks import MAX_PROMPTS, check_count
    from workloads.errors import require_positive_int

    tokens = args.text_tokens
    return {
        "num_prompts": check_count("prompts", args.prompts, MAX_PROMPTS),
        "seed": args.seed,
        "text_features": args.text,
        "text_tokens": None if tokens is None else require_positive_int("text-tokens", tokens),
    }


def run_recipes(args) -> int:
    from workloads.recipes import get_recipe, preset_recipe_names

    rows = []
    for name in preset_recipe_names():
        r = get_recipe(name)
        sets = {"tsq+tsw": "steps", "groups": str(r.num_groups)}.get(r.scheme, "1" if r.quantized else "0")
        sets = "1" if r.scale_tables else sets
        scale_sets = {"tsq": "steps", "tsq+tsw": "steps", "groups": str(r.num_groups)}.get(
            r.scheme, "1" if r.quantized and r.scheme != "dynamic" else "0"
        )
        rows.append(
            {
                "name": name,
                "scheme": r.scheme,
                "w_bits": r.w_bits,
                "a_bits": r.a_bits,
                "weight_sets": sets,
                "scale_sets": scale_sets,
                "split": r.group_split if r.scheme == "groups" else "",
                "smoothing": r.smoothing,
                "activations": (
                    "dynamic per-token"
                    if r.scheme == "dynamic"
                    else ("float" if not r.quantized else "static per-tensor")
                )
                + (", asymmetric" if r.asymmetric else "")
                + (", channel-balanced" if r.channel_balance else "")
                + (", mixed-precision weights" if r.layer_w_bits else ""),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(
        f"{'name':<24} {'scheme':<8} {'W':>2} {'A':>2} {'sets':>5} {'scales':>6}  {'split':<10} {'smooth':<6} activations"
    )
    for r in rows:
        print(
            f"{r['name']:<24} {r['scheme']:<8} {r['w_bits']:>2} {r['a_bits']:>2} {r['weight_sets']:>5} "
            f"{r['scale_sets']:>6}  "
            f"{r['split']:<10} {str(r['smoothing']):<6} {r['activations']}"
        )
    return 0


def run_calibrate(args) -> int:
    from quantmodel.eval.quality import load_model
    from quantmodel.quant.calibrate import calibrate

    _check_out(args.out, (".safetensors",))
    w = _workload(args.workload)
    calib = _calib_kwargs(args)  # checked before the model is built
    model = load_model(w, args.checkpoint, args.seed, device=check_device(args.device))
    st = calibrate(model, w, progress=progress_enabled(args), **calib)
    st.save(args.out)
    print(
        f"calibrated {w.name}: {st.num_steps} steps, {st.meta['num_prompts']} prompts, "
        f"{len(st.layers())} ops -> {args.out}"
    )
    return 0


def run_quantize(args) -> int:
    from quantmodel.eval.quality import load_model, quantize_model
    from workloads.recipes import get_recipe

    _check_out(args.out, (".safetensors",))
    w = _workload(args.workload)
    recipe = get_recipe(args.recipe)
    calib = _calib_kwargs(args)  # checked before the model is built
    model = load_model(w, args.checkpoint, args.seed, device=check_device(args.device))
    art = quantize_model(model, w, recipe, args.stats, **calib)
    art.save(args.out)
    summary = {
        "recipe": recipe.name,
        "workload": w.name,
        "num_weight_sets": art.num_weight_sets,
        "step_to_set": art.weight_step_to_set,
        "weight_storage_bytes": art.weight_storage_bytes(),
        "layers": len(art.linears),
        "out": args.out,
    }
    if recipe.alpha == "search":  # the searched SmoothQuant alphas (also stored in the artifact)
        summary["alphas"] = art.alphas()
    print(
        json.dumps(summary)
        if args.json
        else f"quantized {w.name} with {recipe.name}: {art.num_weight_sets} weight set(s), {art.num_sets} scale set(s), "
        f"{summary['weight_storage_bytes']} weight bytes, step->set {art.weight_step_to_set} -> {args.out}"
    )
    if "alphas" in summary and not args.json:
        for name, a in summary["alphas"].items():
            print(f"  searched alpha {name}: {', '.join(f'{v:g}' for v in a)}")
    return 0


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _index_list(field_name: str, text: str | None, n: int) -> list[int] | None:
    """``"0,13,27"`` -> [0, 13, 27], each in 0..n-1 (None: all), or one line naming the value."""
    from workloads.errors import ConfigError

    if text is None:
        return None
    try:
        out = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise ConfigError(field_name, text, f"comma-separated indices in 0..{n - 1}") from None
    if not out or out[0] < 0 or out[-1] >= n:
        raise ConfigError(field_name, text, f"comma-separated indices in 0..{n - 1}")
    return out


def run_verify(args) -> int:
    from quantmodel.emulator.integer import NONLINEAR_MODES
    from quantmodel.eval.quality import load_model, verify_recipe
    from quantmodel.quant.artifact import QuantArtifact
    from workloads.errors import ConfigError
    from workloads.recipes import get_recipe

    if args.nonlinear not in NONLINEAR_MODES:
        raise ConfigError("nonlinear", args.nonlinear, " or ".join(NONLINEAR_MODES))
    check_device(args.device)
    w = _workload(args.workload)
    recipe = get_recipe(args.recipe)
    calib = _calib_kwargs(args)  # checked before the model is built
    blocks = _index_list("layers", args.layers, w.model.depth)
    steps = _index_list("steps", args.steps, w.num_steps)
    model = load_model(w, args.checkpoint, args.seed)
    art = None
    if args.artifact:
        art = QuantArtifact.load(args.artifact)
        art.check_use(model, recipe.name, w.num_steps)
    rep = verify_recipe(
        model,
        w,
        recipe,
        args.nonlinear,
        stats=args.stats,
        artifact=art,
        device=args.device,
        blocks=blocks,
        steps=steps,
        **calib,
    )
    if args.json:
        print(json.dumps(_json_safe(rep)))
    else:
        print(
            f"verify {rep['workload']} {rep['recipe']} ({rep['nonlinear']}, {rep['device']}, "
            f"captions: {rep['caption_mask']}): "
            f"{rep['layers_checked']} integer ops checked in {rep['checks']} calls "
            f"(blocks {_which(rep['blocks_checked'])}, steps {_which(rep['steps_checked'])}), "
            f"{rep['mismatches']} mismatches (max |diff| {rep['max_abs_diff_lsb']} LSB), "
            f"overflow: {rep['overflow'] or 'none'}; worst layer {rep['worst_layer']} "
            f"{rep['worst_layer_sqnr_db']:.2f} dB; final sample SQNR {rep['sample_sqnr_db']:.2f} dB, "
            f"PSNR {rep['sample_psnr_db']:.2f} dB; unchecked {rep['fast_path']} path "
            f"{'equal' if rep['fast_path_equal'] else 'NOT equal' if rep['fast_path_equal'] is False else 'not run'}"
            f" to the checked one"
        )
        print(_constants_line(rep["constants"]))
        if rep["vector_kernels"]:
            print(_vector_line(rep["vector_kernels"]))
        print(_ties_line(rep["ties"]))
        print(_baseline_line(rep["sqnr_baseline"]))
    return 0 if rep["ok"] else 1


def _which(v) -> str:
    return v if isinstance(v, str) else ",".join(map(str, v))


def _baseline_line(b: dict) -> str:
    """The final-sample SQNR against the stored per-recipe baseline."""
    if not b["applies"]:
        return f"final-sample SQNR baseline: not checked ({b['reason']})"
    verdict = "ok" if b["ok"] else f"REGRESSION ({b['drop_db']:.2f} dB lower)"
    return (
        f"final-sample SQNR baseline {b['baseline_db']:.2f} dB (fails below "
        f"{b['baseline_db'] - b['margin_db']:.2f} dB): {verdict}"
    )


def _ties_line(t: dict) -> str:
    """The tie test: exact x.5 inputs at every rounding site, half to even expected."""
    sites = t["sites"]
    bad = [f"{k} ({v['mismatches']} of {v['ties']} ties wrong)" for k, v in sites.items() if v["mismatches"]]
    n = sum(v["ties"] for v in sites.values())
    line = f"rounding ties: {n} exact x.5 inputs at {len(sites)} rounding sites, "
    return line + ("all rounded half to even" if not bad else "MISMATCH at " + ", ".join(bad))


def _vector_line(kernels: dict) -> str:
    """The fp16 vector-unit kernels against their independent reference: mismatching elements per kernel."""
    parts = [
        f"{k} {c['mismatches']}/{c['elements']}" + (f" (<= {c['max_ulp']} ULP)" if c["mismatches"] else "")
        for k, c in sorted(kernels.items())
    ]
    return "fp16 vector kernels vs reference, mismatching elements: " + ", ".join(parts)


def _constants_line(c: dict) -> str:
    """The re-derivation of the artifact's constants, with the mismatching fields per layer."""
    if "skipped" in c:
        return f"artifact constants NOT re-derived: {c['skipped']}"
    line = f"artifact constants re-derived from weights and statistics: {c['compared']} compared, "
    line += f"{c['mismatched_constants']} mismatched"
    for layer, fields in c["mismatches"].items():
        line += f"\n  {layer}: {', '.join(fields)}"
    for key in c["missing"][:10]:
        line += f"\n  missing from the artifact: {key}"
    for p in c["problems"]:
        line += f"\n  {p}"
    if c["not_rederived"]:
        line += f"\n  not re-derived ({len(c['not_rederived'])}): {', '.join(c['not_rederived'][:5])}"
    return line


def expand_recipes(spec: str, bits: str) -> list[str]:
    """``asq,tsq-tsw-w4a8,fp16`` with bits ``w8a8,w6a6`` -> asq-w8a8, asq-w6a6, tsq-tsw-w4a8, fp16."""
    import re

    names = []
    pairs = [b.strip() for b in bits.split(",") if b.strip()]
    for r in (s.strip() for s in spec.split(",")):
        if not r:
            continue
        if r == "fp16" or re.search(r"-w\d+a\d+$", r) or r.endswith((".yaml", ".yml")):
            names.append(r)
        else:
            names += [f"{r}-{b}" for b in pairs]
    return names


def run_quality(args) -> int:
    """`codesign quality`: each recipe x bits evaluated on the same prompts and noise, one table. One
    piece: the float reference, calibration and progress bar are shared by every row."""
    import pandas as pd
    from tqdm import tqdm

    from codesign.cli.checks import MAX_SAMPLES, check_count
    from quantmodel.eval.quality import (
        BACKENDS,
        eval_batch,
        evaluate_recipe,
        float_model_fn,
        get_stats,
        load_model,
        sample,
    )
    from workloads.errors import ConfigError
    from workloads.recipes import get_recipe

    if args.out:
        _check_out(args.out, (".csv", ".parquet"))
    if args.backend not in BACKENDS:
        raise ConfigError("backend", args.backend, " or ".join(BACKENDS))
    check_count("samples", args.samples, MAX_SAMPLES)
    w = _workload(args.workload)
    recipes = [get_recipe(n) for n in expand_recipes(args.recipes, args.bits)]  # all validated first
    if not recipes:
        raise ConfigError("recipes", args.recipes, "a comma-separated list of recipe names")
    calib = _calib_kwargs(args)  # checked before the model is built
    model = load_model(w, args.checkpoint, args.seed, device=check_device(args.device))
    stats = None
    if any(r.quantized and (r.scheme != "dynamic" or r.smoothing) for r in recipes):
        stats = get_stats(model, w, args.stats, **calib)
    z, y, mask = eval_batch(model, args.samples, workload=w, text_tokens=calib["text_tokens"])
    ref = sample(float_model_fn(model), model, w, z, y, mask=mask)
    rows = []
    for r in tqdm(recipes, desc="recipes", file=sys.stderr, leave=False, disable=not progress_enabled(args)):
        rows.append(
            evaluate_recipe(
                model,
                w,
                r,
                stats=stats,
                backend=args.backend,
                nonlinear=args.nonlinear,
                num_samples=args.samples,
                reference_sample=ref,
                text_tokens=calib["text_tokens"],
            )
        )
    df = pd.DataFrame(rows)
    if args.out:
        with atomic_path(args.out) as tmp:
            (df.to_csv(tmp, index=False) if args.out.endswith(".csv") else df.to_parquet(tmp, index=False))
    cols = [
        "recipe",
        "w_bits",
        "a_bits",
        "num_weight_sets",
        "weight_storage_bytes",
        "sqnr_db",
        "psnr_db",
        "worst_layer_sqnr_db",
        "worst_layer",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0
