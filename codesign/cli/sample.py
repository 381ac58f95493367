"""`codesign sample`: run the float sampler of a workload (random weights or a real checkpoint)."""

from __future__ import annotations

import json
import time

from workloads.io import atomic_path


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a latent video with the float model")
    p.add_argument("--workload", required=True, help="preset name or YAML file")
    p.add_argument("--checkpoint", help="OpenSora STDiT checkpoint (.pth or .safetensors)")
    p.add_argument(
        "--text",
        help="text features [B,1,L,Ct] (.pt or .safetensors key 'y', optional caption 'mask' [B,L]); "
        "seeded random features otherwise",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="override the workload's step count")
    p.add_argument("--out", help="write the latent (.safetensors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from quantmodel.model.build import build_stdit
    from quantmodel.model.checkpoint import load_checkpoint
    from quantmodel.model.config import STDiTConfig
    from quantmodel.model.samplers import sampler_for
    from workloads.errors import ConfigError, require_positive_int
    from workloads.presets import Gemm, get_workload

    w = get_workload(args.workload)
    if isinstance(w, Gemm):
        raise ConfigError("workload", args.workload, "a model workload (a preset or YAML file), not a GEMM")
    if args.out and not args.out.endswith(".safetensors"):
        raise ConfigError("out", args.out, "a file ending in .safetensors")
    steps = require_positive_int("steps", args.steps) if args.steps is not None else w.num_steps
    cfg = STDiTConfig.from_workload(w)
    model = load_checkpoint(args.checkpoint, cfg) if args.checkpoint else build_stdit(cfg, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    mask = None
    if args.text:
        from quantmodel.model.captions import check_mask
        from quantmodel.model.checkpoint import read_state_dict

        sd = read_state_dict(args.text)
        y = sd.get("y")
        want = (1, cfg.model_max_length, cfg.caption_channels)
        if y is None or y.dim() != 4 or tuple(y.shape[1:]) != want:
            raise ConfigError("text", args.text, f"a tensor 'y' of shape [B, {', '.join(map(str, want))}]")
        mask = check_mask(sd.get("mask"), y.shape[0], cfg.model_max_length, field="text mask")
    else:
        y = torch.randn(1, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    z = torch.randn(y.shape[0], cfg.in_channels, *cfg.input_size, generator=g)
    sampler = sampler_for(w, steps)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = sampler.sample(
            lambda x, t, yy, step, mask=None: model(x, t, yy, mask),
            z,
            y,
            model.null_caption(y.shape[0]),
            g,
            progress=True,
            mask=mask,
        )
    seconds = time.perf_counter() - t0
    if args.out:
        from safetensors.torch import save_file

        with atomic_path(args.out) as tmp:
            save_file({"latent": x.contiguous()}, str(tmp))
    summary = {
        "workload": w.name,
        "steps": steps,
        "shape": list(x.shape),
        "seconds": round(seconds, 3),
        "latent_mean": float(x.mean()),
        "latent_std": float(x.std()),
    }
    print(
        json.dumps(summary)
        if args.json
        else f"sampled {w.name}: {steps} steps in {seconds:.2f} s, latent {tuple(x.shape)}, "
        f"mean {summary['latent_mean']:.4f}, std {summary['latent_std']:.4f}"
    )
    return 0
