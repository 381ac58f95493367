"""Where the emulator's time goes on a GPU: one CFG forward (2 rows) under torch.profiler.

Prints the forward's wall time (and the host's float parts before and after the blocks, timed on
their own), the kernels and ops that take the most device time and the most host
time, and (CUDA) how many host syncs one forward makes and from which source lines. It answers the
question bench_gpu.py's ratio raises: GPU-bound (elementwise kernels, GEMMs) or host-bound (dispatch,
syncs)? Static recipes are calibrated first over the workload's steps (not profiled).

    python benchmarks/profile_gpu.py                                  # 16x256x256, asq-w8a8, int mode
    python benchmarks/profile_gpu.py --mode fp16 --workload opensora-v1.0-16x512x512
    python benchmarks/profile_gpu.py --workload stdit-tiny --device cpu   # a dry run without a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from quantmodel.emulator import hostmem
from quantmodel.emulator.integer import IntegerEmulator
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import calibrate
from workloads.presets import get_workload
from workloads.recipes import get_recipe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="opensora-v1.0-16x256x256")
    ap.add_argument("--recipe", default="asq-w8a8")
    ap.add_argument("--mode", default="int", choices=("int", "fp16"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps calibrated (the forward runs step 0)")
    ap.add_argument("--rows", type=int, default=25, help="rows of each table")
    args = ap.parse_args(argv)
    hostmem.keep_freed_host_memory()  # as `codesign ... --device cuda` does: a step's host tensors reuse pages
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    w = dataclasses.replace(get_workload(args.workload), num_steps=args.steps)
    cfg = STDiTConfig.from_workload(w)
    model = build_stdit(cfg, device=dev, seed=0)
    recipe = get_recipe(args.recipe)
    stats = calibrate(model, w, num_prompts=1, batch_size=1) if recipe.scheme != "dynamic" else None
    emu = IntegerEmulator(
        model, build_artifact(model, recipe, stats, w.num_steps, w.name), nonlinear=args.mode, device=dev
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g).to(dev)  # [2, C, T, H, W]: CFG rows
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g).to(dev)  # [2, 1, L, Ct]
    t = torch.full((2,), 999.0, device=dev)

    def forward():
        with torch.no_grad():
            emu.model_fn(x, t, y, 0)
        if cuda:
            torch.cuda.synchronize()

    forward()  # warm-up: kernel compilation, cuBLAS set-up
    t0 = time.perf_counter()
    forward()
    where = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    print(
        f"{where}, torch {torch.__version__}; {w.name} {recipe.name} {args.mode}: one forward {time.perf_counter() - t0:.3f} s"
    )

    def timed(fn):
        s0 = time.perf_counter()
        with torch.no_grad():
            out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - s0

    # the host's float parts on their own: what the GPU waits for each step
    (h, t_emb, _, _), embed_s = timed(lambda: emu.embed(x, t, y))
    _, finish_s = timed(lambda: emu.finish(h, t_emb))
    print(
        f"  of which on the host before the blocks (embed) {embed_s * 1e3:.1f} ms, after them (finish) {finish_s * 1e3:.1f} ms"
    )
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        forward()
    ka = prof.key_averages()
    if cuda:
        print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70))
    if cuda:  # each sync stalls the host until the GPU drains: the dispatch of later ops cannot run ahead
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forward()
        torch.cuda.set_sync_debug_mode("default")
        sites = Counter(f"{c.filename}:{c.lineno}" for c in caught)
        print(f"host syncs in one forward: {sum(sites.values())}")
        for site, n in sites.most_common(args.rows):
            print(f"  {n:6d}  {site}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
