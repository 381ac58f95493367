"""`codesign sample`: sample a latent video with the float model, or with a quantized recipe run by the
integer emulator (bit-exact) or the fake-quant float simulation, on the CPU or a CUDA GPU.

With ``--compare`` the float model samples the same noise and prompts too; both latents are written
(``latent`` and ``latent_float``) and the quantized sample's SQNR / PSNR against the float one printed.
"""

from __future__ import annotations

import dataclasses
import time

from codesign.cli import jsonout, progress_enabled
from workloads.io import atomic_path

BACKENDS = ("emulator", "fakequant")


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a latent video with the float or a quantized model")
    p.add_argument("--workload", required=True, help="preset name or YAML file")
    p.add_argument("--checkpoint", help="OpenSora STDiT checkpoint (.pth or .safetensors)")
    p.add_argument(
        "--text",
        help="text features [B,1,L,Ct] (.pt or .safetensors key 'y', optional caption 'mask' [B,L]); "
        "seeded random features otherwise",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="override the workload's step count")
    p.add_argument("--recipe", help="quantized recipe (codesign recipes); default: the float model")
    p.add_argument("--backend", default="emulator", help="emulator (integer, bit-exact) or fakequant")
    p.add_argument("--nonlinear", default="fp16", help="emulator vector-unit mode: fp16 or int")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--artifact", help="quantized-model artifact (codesign quantize); default: quantize now")
    p.add_argument("--stats", help="calibration stats (codesign calibrate) when quantizing now")
    p.add_argument("--prompts", type=int, default=4, help="calibration prompts when calibrating now")
    p.add_argument("--compare", action="store_true", help="also sample the float model; write and compare both")
    p.add_argument("--out", help="write the latent (.safetensors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _check_args(args):
    """Every argument checked before any model is built (one line, exit 2 on a bad one)."""
    from codesign.cli.checks import MAX_PROMPTS, check_count, check_device, check_in_file, check_out_file
    from quantmodel.emulator.integer import NONLINEAR_MODES
    from workloads.errors import ConfigError, require_positive_int
    from workloads.presets import Gemm, get_workload
    from workloads.recipes import get_recipe

    w = get_workload(args.workload)
    if isinstance(w, Gemm):
        raise ConfigError("workload", args.workload, "a model workload (a preset or YAML file), not a GEMM")
    if args.out:
        check_out_file("out", args.out, (".safetensors",))
    if args.steps is not None:
        w = dataclasses.replace(w, num_steps=require_positive_int("steps", args.steps))
    check_count("prompts", args.prompts, MAX_PROMPTS)
    if args.backend not in BACKENDS:
        raise ConfigError("backend", args.backend, " or ".join(BACKENDS))
    if args.nonlinear not in NONLINEAR_MODES:
        raise ConfigError("nonlinear", args.nonlinear, " or ".join(NONLINEAR_MODES))
    check_device(args.device)
    recipe = get_recipe(args.recipe) if args.recipe else None
    if recipe is None and (args.artifact or args.stats or args.compare):
        flag = "artifact" if args.artifact else "stats" if args.stats else "compare"
        raise ConfigError(flag, getattr(args, flag), "used only with --recipe")
    for flag in ("artifact", "stats", "text", "checkpoint"):
        if getattr(args, flag):
            check_in_file(flag, getattr(args, flag))
    return w, recipe


def _text(args, cfg, g):
    """(y [B, 1, L, Ct], caption mask [B, L] bool or None): the file's features and mask, or seeded noise."""
    import torch

    from workloads.errors import ConfigError

    if not args.text:
        return torch.randn(1, 1, cfg.model_max_length, cfg.caption_channels, generator=g), None
    from quantmodel.model.captions import check_mask
    from quantmodel.model.checkpoint import read_state_dict

    sd = read_state_dict(args.text)
    y = sd.get("y")
    want = (1, cfg.model_max_length, cfg.caption_channels)
    if y is None or y.dim() != 4 or tuple(y.shape[1:]) != want:
        raise ConfigError("text", args.text, f"a tensor 'y' of shape [B, {', '.join(map(str, want))}]")
    return y.float(), check_mask(sd.get("mask"), y.shape[0], cfg.model_max_length, field="text mask")


def run(args) -> int:
    """`codesign sample`: the float or quantized model's sampling loop on the chosen device, the latent
    (and with --compare the float one) written atomically. One piece: both loops share the prompts,
    noise, timing and summary."""
    import torch

    from quantmodel.eval.quality import load_model, recipe_model_fn, sample_metrics
    from quantmodel.model.config import STDiTConfig
    from quantmodel.model.samplers import sampler_for
    from quantmodel.quant.artifact import QuantArtifact

    w, recipe = _check_args(args)
    cfg = STDiTConfig.from_workload(w)
    g = torch.Generator().manual_seed(args.seed)
    y, mask = _text(args, cfg, g)
    z = torch.randn(y.shape[0], cfg.in_channels, *cfg.input_size, generator=g)
    model = load_model(w, args.checkpoint, args.seed, device=args.device)
    dev = torch.device(args.device)

    def run_sampler(fn, label: str, sdev: torch.device = dev):
        """``sdev``: where the sampler's float arithmetic runs (the integer emulator runs its float host
        parts and the sampler on the CPU, so a CUDA run gives the CPU run's latent)."""
        if dev.type == "cuda":
            torch.cuda.synchronize()
        gen = torch.Generator().manual_seed(args.seed + 1)  # CPU noise: the same sample on every device
        t0 = time.perf_counter()
        with torch.no_grad():
            x = sampler_for(w).sample(
                fn,
                z.to(sdev),
                y.to(sdev),
                model.null_caption(y.shape[0]).to(sdev),
                gen,
                progress=progress_enabled(args),
                mask=None if mask is None else mask.to(sdev),
            )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return x.float().cpu(), time.perf_counter() - t0

    summary = {"workload": w.name, "steps": w.num_steps, "device": args.device, "recipe": "fp16"}
    latents = {}
    if recipe is None or not recipe.quantized:
        x, seconds = run_sampler(lambda x, t, yy, step, mask=None: model(x, t, yy, mask), "float")
    else:
        art = None
        if args.artifact:
            art = QuantArtifact.load(args.artifact)
            art.check_use(model, recipe.name, w.num_steps)
        fn, _ = recipe_model_fn(
            model,
            w,
            recipe,
            args.backend,
            args.nonlinear,
            stats=args.stats,
            artifact=art,
            device=args.device,
            num_prompts=args.prompts,
            seed=args.seed,
            text_features=args.text,
        )
        x, seconds = run_sampler(fn, recipe.name, torch.device("cpu") if args.backend == "emulator" else dev)
        summary.update(recipe=recipe.name, backend=args.backend, nonlinear=args.nonlinear)
        if args.compare:
            xf, seconds_f = run_sampler(lambda x, t, yy, step, mask=None: model(x, t, yy, mask), "float")
            latents["latent_float"] = xf.contiguous()
            summary.update(float_seconds=round(seconds_f, 3), **sample_metrics(xf, x))
    latents["latent"] = x.contiguous()
    if args.out:
        from safetensors.torch import save_file

        with atomic_path(args.out) as tmp:
            save_file(latents, str(tmp))
    summary.update(
        shape=list(x.shape),
        seconds=round(seconds, 3),
        latent_mean=float(x.mean()),
        latent_std=float(x.std()),
    )
    if args.json:
        print(jsonout.dumps(summary))
        return 0
    line = (
        f"sampled {w.name} ({summary['recipe']}"
        + (f", {args.backend}, {args.nonlinear}" if "backend" in summary else "")
        + f", {args.device}): {w.num_steps} steps in {seconds:.2f} s, latent {tuple(x.shape)}, "
        f"mean {summary['latent_mean']:.4f}, std {summary['latent_std']:.4f}"
    )
    if "sqnr_db" in summary:
        line += f"; vs float: SQNR {summary['sqnr_db']:.2f} dB, PSNR {summary['psnr_db']:.2f} dB"
    print(line)
    return 0
