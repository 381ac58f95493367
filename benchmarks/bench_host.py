"""The host's part of one denoising step of the integer emulator at full size, as a GPU run pays it.

On a GPU the emulator runs the float parts around the blocks on the host CPU (so a CUDA run gives
the CPU run's sample bit for bit): patch and position embedding, timestep and caption embedders, the
final layer. The GPU waits for them every step, so they count against the GPU speed goal
(``bench_gpu.py``). This benchmark times them on this CPU (no GPU needed; the blocks are not run):
``IntegerEmulator.embed`` and ``finish`` of one CFG step (batch 2) at full size, in two child processes
side by side, glibc's default allocator against the kept host memory that ``--device cuda`` runs turn
on (:mod:`quantmodel.emulator.hostmem`), with the minor page faults per step; and the caption
projection, which the emulator does once per prompt, against doing it every step.

    python benchmarks/bench_host.py                                        # 16x256x256, 2 threads
    python benchmarks/bench_host.py --workload opensora-v1.0-16x512x512 --threads 16

The model is the workload's at full width but one block deep (the host parts do not depend on the
depth), with random weights; its artifact is calibrated on one prompt, two steps (not timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import torch

from quantmodel.emulator import hostmem
from quantmodel.emulator.integer import IntegerEmulator
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import calibrate
from workloads.presets import get_workload
from workloads.recipes import get_recipe


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child(workload: str, steps: int, threads: int, kept: bool) -> dict:
    """ms and page faults per step of the host parts, in this process (``kept``: the setting on)."""
    torch.set_num_threads(threads)
    applied = hostmem.keep_freed_host_memory() if kept else False
    w = dataclasses.replace(get_workload(workload), num_steps=2)  # the sampler needs two
    cfg = dataclasses.replace(STDiTConfig.from_workload(w), depth=1)
    model = build_stdit(cfg, seed=0)
    art = build_artifact(model, get_recipe("asq-w8a8"), calibrate(model, w, num_prompts=1), 2)
    emu = IntegerEmulator(model, art, nonlinear="int")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)  # [B, Cin, T, H, W]
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)  # [B, 1, L, Cy]
    t = torch.tensor([500.0, 500.0])
    out = torch.randn(2, cfg.num_temporal * cfg.num_spatial, cfg.hidden_size, generator=g)  # blocks' output

    def step() -> None:
        _, t_emb, _, _ = emu.embed(x, t, y)
        emu.finish(out, t_emb)

    def caption_anew() -> None:
        emu._caption_memo = None
        emu._caption(y)

    res = {"applied": applied}
    with torch.no_grad():
        for name, fn in (("step", step), ("caption", caption_anew)):
            for _ in range(3):  # warm-up: the heap grows to a step's peak
                fn()
            f0, t0 = _faults(), time.perf_counter()
            for _ in range(steps):
                fn()
            res[name + "_ms"] = (time.perf_counter() - t0) / steps * 1e3
            res[name + "_faults"] = (_faults() - f0) / steps
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="opensora-v1.0-16x256x256")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=("default", "kept"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.workload, args.steps, args.threads, args.child == "kept")))
        return 0
    rows = {}
    for which in ("default", "kept"):
        cmd = [sys.executable, __file__, "--child", which, "--workload", args.workload]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
        rows[which] = json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout)
    d, k = rows["default"], rows["kept"]
    print(
        f"host part of one CFG step (batch 2), {args.workload}, {args.steps} steps, {args.threads} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"{'allocator':<24} {'ms/step':>8} {'faults/step':>12}")
    print(f"{'glibc default':<24} {d['step_ms']:>8.1f} {d['step_faults']:>12.0f}")
    label = "kept host memory" + ("" if k["applied"] else " (not glibc: unset)")
    print(f"{label:<24} {k['step_ms']:>8.1f} {k['step_faults']:>12.0f}")
    print(f"kept / default: {k['step_ms'] / d['step_ms']:.2f}")
    print(
        f"caption projection, saved each step after the first by the emulator's memo: "
        f"{k['caption_ms']:.1f} ms (kept), {d['caption_ms']:.1f} ms (default)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
