"""GPU speed goal: the quantized model's integer emulator on one GPU costs at most 2x the bf16 float model.

Side by side in one run, on one GPU, for one full CFG video of a v1.0 workload (random weights: the
values do not change the time): the bf16 float model, the float32 float model, the fake-quant model and the
integer emulator (fp16 and int vector-unit modes), each timed over the whole sampling loop, with peak GPU
memory. Ratios are against the bf16 float model (<= 2.0 meets the goal).

    python benchmarks/bench_gpu.py                                   # 16x256x256, 100 steps, asq-w8a8
    python benchmarks/bench_gpu.py --workload opensora-v1.0-16x512x512 --recipes asq-w8a8 --modes fp16
    python benchmarks/bench_gpu.py --steps 10                        # shorter videos (the ratio holds per step)
    python benchmarks/bench_gpu.py --fused on                        # only the fused CUDA kernels (default: both)
    python benchmarks/bench_gpu.py --graphs both                     # the blocks eager and as a CUDA graph

Each model runs one untimed warm-up forward first (compilation of the fused CUDA kernels, cuBLAS set-up).
Static recipes are calibrated first on the same GPU (one prompt; not timed). TSQ+TSW needs one weight
set per step (about 74.8 GB at W8A8 for full OpenSora), so time it on a machine with that much host memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from quantmodel.emulator import hostmem
from quantmodel.emulator.integer import FakeQuantModel, IntegerEmulator
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.samplers import sampler_for
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import calibrate
from workloads.presets import get_workload
from workloads.recipes import get_recipe


def _video(model_fn, w, cfg, dev) -> tuple[float, float, torch.Tensor]:
    """Seconds, peak GiB and final latent of one CFG video (batch 1, so 2 rows per forward)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, cfg.in_channels, *cfg.input_size, generator=g).to(dev)
    y = torch.randn(1, 1, cfg.model_max_length, cfg.caption_channels, generator=g).to(dev)
    y_null = torch.randn(1, 1, cfg.model_max_length, cfg.caption_channels, generator=g).to(dev)
    with torch.no_grad():  # warm-up: kernel compilation (the fused CUDA kernels) and cuBLAS set-up, not timed
        model_fn(torch.cat([z, z]), torch.full((2,), 999.0, device=dev), torch.cat([y, y_null]), 0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sampler_for(w).sample(model_fn, z, y, y_null, torch.Generator().manual_seed(1))
    torch.cuda.synchronize()
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30, out.cpu()


def _bf16_fn(bf):
    """The bf16 model as a sampler's model_fn: the sampler's arithmetic stays float32, as OpenSora's does."""
    return lambda x, t, y, step: bf(x.bfloat16(), t, y.bfloat16()).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="opensora-v1.0-16x256x256")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--recipes", default="asq-w8a8")
    ap.add_argument("--modes", default="fp16,int")
    ap.add_argument("--no-fakequant", action="store_true")
    ap.add_argument(
        "--fused", default="both", choices=("off", "on", "both"), help="the fused CUDA kernels (QUANTMODEL_CUDA_FUSED)"
    )
    ap.add_argument(
        "--graphs",
        default="on",
        choices=("off", "on", "both"),
        help="the blocks as a CUDA graph (QUANTMODEL_CUDA_GRAPHS)",
    )
    args = ap.parse_args(argv)
    hostmem.keep_freed_host_memory()  # as `codesign ... --device cuda` does: a step's host tensors reuse pages
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    w = dataclasses.replace(get_workload(args.workload), num_steps=args.steps)
    cfg = STDiTConfig.from_workload(w)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; {w.name}, {w.num_steps} steps, CFG batch 2")
    rows = []
    model = build_stdit(cfg, seed=0).to(dev)
    s, m, _ = _video(_bf16_fn(build_stdit(cfg, seed=0).to(dev, torch.bfloat16)), w, cfg, dev)
    rows.append(("float bf16", s, m))
    torch.cuda.empty_cache()
    s, m, _ = _video(lambda x, t, y, step: model(x, t, y), w, cfg, dev)
    rows.append(("float fp32", s, m))
    print(f"  {rows[0][0]}: {rows[0][1]:.2f} s; {rows[1][0]}: {rows[1][1]:.2f} s", flush=True)
    stats = None
    for name in args.recipes.split(","):
        recipe = get_recipe(name)
        if recipe.scheme != "dynamic" and stats is None:
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            stats = calibrate(model, w, num_prompts=1, batch_size=1)
            gib = torch.cuda.max_memory_allocated() / 2**30
            print(f"  calibrated in {time.perf_counter() - t0:.1f} s, peak {gib:.1f} GiB (not timed below)", flush=True)
        art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" else None, w.num_steps, w.name)
        if not args.no_fakequant:
            fq = FakeQuantModel(model, art)
            s, m, _ = _video(fq.model_fn, w, cfg, dev)
            rows.append((f"{name} fakequant", s, m))
            print(f"  {rows[-1][0]}: {s:.2f} s", flush=True)
            del fq
        for mode in args.modes.split(","):
            first = None  # every variant must give the same final latent, bit for bit
            onoff = {"off": ["0"], "on": ["1"], "both": ["0", "1"]}
            for fused in onoff[args.fused]:
                for graphs in onoff[args.graphs]:
                    os.environ["QUANTMODEL_CUDA_FUSED"], os.environ["QUANTMODEL_CUDA_GRAPHS"] = fused, graphs
                    emu = IntegerEmulator(model, art, nonlinear=mode, device=dev)
                    s, m, out = _video(emu.model_fn, w, cfg, dev)
                    label = (
                        f"{name} emulator {mode}"
                        + (" fused" if fused == "1" else "")
                        + (" graph" if graphs == "1" else "")
                    )
                    rows.append((label, s, m))
                    same = f"; graph replays {emu.graphs.replays}"
                    if first is None:
                        first = out
                    else:
                        same += f"; final latent equal to the first variant's bit for bit: {torch.equal(first, out)}"
                    print(f"  {label}: {s:.2f} s{same}", flush=True)
                    del emu
                    torch.cuda.empty_cache()
    base = rows[0][1]
    print(f"\n{'model':<36} {'video s':>9} {'s/step':>8} {'x bf16':>7} {'peak GiB':>9}")
    for label, s, m in rows:
        print(f"{label:<36} {s:>9.2f} {s / w.num_steps:>8.3f} {s / base:>7.2f} {m:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
