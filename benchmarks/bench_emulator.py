"""Speed goal: the integer emulator must cost no more than the float32 forward pass, on CPUs with and
without AVX-512.

GEMM level: for every GEMM shape of one STDiT block, time the integer path
(int_linear_requant: int8 GEMM + int32 bias + per-channel requantize to int8, fused) and the float32 path (matmul + bias)
side by side in one run and print the ratio int/float (<= 1.0 meets the goal). GEMM paths: each exact
int8 GEMM path of quantmodel.intarith.gemmpaths (torch._int_mm, chunked float32, float64, C kernel) on each linear shape,
with the path the per-shape choice takes on this CPU.

    python benchmarks/bench_emulator.py [--configs tiny,mid,mid768] [--repeats 5] [--threads 1,2]
    python benchmarks/bench_emulator.py --forward-only --threads 1,2   # whole model, the speed goal
    python benchmarks/bench_emulator.py --forward-only --threads 1 --configs tiny,mid \
        --recipes asq-w8a8,dynamic-w8a8 --isa native,avx2   # + the same in a forced AVX2-only child
    QUANTMODEL_CKERNELS=0 python benchmarks/bench_emulator.py --forward-only   # torch ops only (no C loops)

``--isa avx2`` reruns the benchmark in a child process limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``, C kernels built for ``-march=x86-64-v3``); every table names the CPU
capability it ran on. Timings are best of ``--repeats`` runs, the compared functions interleaved (the
machine is shared: load hits all alike, the minimum is the least disturbed run).

Functions are kept small so the full-forward comparison can be added here as further functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from quantmodel.intarith import gemmpaths
from quantmodel.intarith.fixedpoint import (
    Requantizer,
    qrange,
    quantize_multipliers,
    requantize,
)
from quantmodel.intarith.intgemm import int_linear_requant, int_matmul


@dataclass(frozen=True)
class BenchConfig:
    name: str
    hidden: int
    frames: int  # latent frames T
    tokens_per_frame: int  # S
    heads: int
    text_tokens: int
    batch: int = 2  # CFG doubles the batch


CONFIGS = {
    # stdit-tiny preset: hidden 64, 8x64x64 video -> latent 8x8x8, patch 1x2x2 -> 8 frames x 16 tokens
    "tiny": BenchConfig("stdit-tiny", 64, 8, 16, 4, 8),
    # mid-size: hidden 384 (6 heads), 16x128x128 video -> latent 16x16x16 -> 16 frames x 64 tokens
    "mid": BenchConfig("hidden384-16x128x128", 384, 16, 64, 6, 120),
    # second mid-size: hidden 768 (12 heads), same video
    "mid768": BenchConfig("hidden768-16x128x128", 768, 16, 64, 12, 120),
}


def linear_shapes(c: BenchConfig) -> list[tuple[str, int, int, int]]:
    """(layer, M, K, N) of the linear layers of one block."""
    m = c.batch * c.frames * c.tokens_per_frame
    h = c.hidden
    return [
        ("attn.qkv", m, h, 3 * h),
        ("attn.proj", m, h, h),
        ("attn_temp.qkv", m, h, 3 * h),
        ("cross_attn.q_linear", m, h, h),
        ("cross_attn.kv_linear", c.batch * c.text_tokens, h, 2 * h),
        ("mlp.fc1", m, h, 4 * h),
        ("mlp.fc2", m, 4 * h, h),
    ]


def attention_shapes(c: BenchConfig) -> list[tuple[str, int, int, int, int]]:
    """(name, batch, M, K, N) of the batched attention products of one block."""
    d = c.hidden // c.heads
    sb = c.batch * c.frames * c.heads  # spatial: one attention per frame
    tb = c.batch * c.tokens_per_frame * c.heads  # temporal: one per spatial position
    s, t = c.tokens_per_frame, c.frames
    return [
        ("attn.qk", sb, s, d, s),
        ("attn.av", sb, s, s, d),
        ("attn_temp.qk", tb, t, d, t),
        ("attn_temp.av", tb, t, t, d),
    ]


# the timer: wall clock, or (--clock cpu) this process's CPU time, which leaves out the time the process
# waits for a core on a machine loaded by others (a tiny forward of a few ms is otherwise measured in
# scheduler slices)
CLOCK = [time.perf_counter]


def _interleaved(fns, repeats: int, min_s: float = 0.0) -> list[list[float]]:
    """Seconds of ``repeats`` runs of each function, measured interleaved (a, b, ..., a, b, ...) after one
    warm-up each, so that load from other processes on the shared machine hits all alike. With ``min_s``,
    fast functions get more runs (up to 200), so that each is timed for about ``min_s`` seconds."""
    t0 = CLOCK[0]()
    for fn in fns:  # warm-up
        fn()
    warm = (CLOCK[0]() - t0) / len(fns)
    if min_s > 0:
        repeats = max(repeats, min(200, int(min_s / max(warm, 1e-6))))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            t0 = CLOCK[0]()
            fn()
            acc.append(CLOCK[0]() - t0)
    return times


def _time_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two functions: the minimum is the least disturbed run."""
    ta, tb = _interleaved((fn_a, fn_b), repeats)
    return min(ta), min(tb)


def isa_label() -> str:
    """The CPU capability this process runs with, and the settings that limit it."""
    env = ", ".join(f"{k}={os.environ[k]}" for k in (*AVX2_ENV, "QUANTMODEL_GEMM") if k in os.environ)
    return f"CPU capability {torch.backends.cpu.get_cpu_capability()}" + (f" ({env})" if env else " (native)")


def bench_linear(m: int, k: int, n: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    """(int_s, float_s): int8 GEMM + bias + per-channel requant (the fused ``int_linear_requant``,
    which emits the same integers as ``rq(int_linear(...))``) vs float32 GEMM + bias."""
    g = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w_t = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)  # stored transposed, contiguous
    bias = torch.randint(-(2**16), 2**16, (n,), generator=g, dtype=torch.int32)
    mult, shift = quantize_multipliers(torch.rand(n, generator=g, dtype=torch.float64) * 1e-3)
    rq = Requantizer(mult, shift, *qrange(8), torch.int8)  # prepared once per layer
    x_f, w_f, b_f = x_q.float(), w_t.float().t().contiguous(), bias.float()

    def run_int():
        return int_linear_requant(x_q, w_t, bias, rq)

    def run_float():
        return torch.nn.functional.linear(x_f, w_f, b_f)

    return _time_pair(run_int, run_float, repeats)


def bench_attention(b: int, m: int, k: int, n: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    """(int_s, float_s): batched int8 product (exact float path) vs float32 bmm."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (b, m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (b, k, n), generator=g, dtype=torch.int8)
    a_f, w_f = a.float(), w.float()
    return _time_pair(lambda: int_matmul(a, w), lambda: torch.matmul(a_f, w_f), repeats)


def run_gemm_comparison(names: list[str], repeats: int) -> float:
    """Print one row per shape and per config the totals; returns the worst total ratio."""
    worst = 0.0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {isa_label()}")
    print(f"{'config':22s} {'op':22s} {'shape':>24s} {'int_ms':>8s} {'f32_ms':>8s} {'int/f32':>8s}")
    for name in names:
        c = CONFIGS[name]
        tot_i = tot_f = 0.0
        for layer, m, k, n in linear_shapes(c):
            ti, tf = bench_linear(m, k, n, repeats)
            tot_i, tot_f = tot_i + ti, tot_f + tf
            print(f"{c.name:22s} {layer:22s} {f'{m}x{k}x{n}':>24s} {ti * 1e3:8.3f} {tf * 1e3:8.3f} {ti / tf:8.2f}")
        for op, b, m, k, n in attention_shapes(c):
            ti, tf = bench_attention(b, m, k, n, repeats)
            tot_i, tot_f = tot_i + ti, tot_f + tf
            print(f"{c.name:22s} {op:22s} {f'{b}x[{m}x{k}x{n}]':>24s} {ti * 1e3:8.3f} {tf * 1e3:8.3f} {ti / tf:8.2f}")
        ratio = tot_i / tot_f
        worst = max(worst, ratio)
        print(f"{c.name:22s} {'TOTAL one block':22s} {'':>24s} {tot_i * 1e3:8.3f} {tot_f * 1e3:8.3f} {ratio:8.2f}")
    return worst


def run_gemm_paths(names: list[str], repeats: int) -> None:
    """Each exact int8 GEMM path on each distinct linear shape of the configs, best of ``repeats``
    interleaved runs, and the path the per-shape choice takes here (gemmpaths.choose)."""
    cal = gemmpaths.calibration()
    print(f"int8 GEMM paths, {isa_label()}, threads {torch.get_num_threads()}; calibrated choice {cal['choice']}")
    print(f"{'shape MxKxN':>18s} " + " ".join(f"{p + '_ms':>11s}" for p in gemmpaths.PATHS) + "  chosen")
    g = torch.Generator().manual_seed(0)
    seen = set()
    for name in names:
        for _, m, k, n in linear_shapes(CONFIGS[name]):
            if (m, k, n) in seen:
                continue
            seen.add((m, k, n))
            a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
            b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
            want = gemmpaths.mm(a, b, path="float64")  # exact by construction
            exact = [torch.equal(gemmpaths.mm(a, b, path=p), want) for p in gemmpaths.PATHS]
            fns = [functools.partial(gemmpaths.mm, a, b, path=p) for p in gemmpaths.PATHS]
            best = [min(t) for t in _interleaved(fns, repeats)]
            cells = [f"{t * 1e3:10.3f}" + (" " if ok else "!") for t, ok in zip(best, exact)]
            print(f"{f'{m}x{k}x{n}':>18s} " + " ".join(cells) + f"  {gemmpaths.choose(m, k, n)}", flush=True)
    print("(!: that path returned wrong integers for this shape here; the choice never takes such a path)")


def cuda_check(seed: int = 0) -> int:
    """CUDA == CPU bit for bit for int_matmul (int_mm path with padding, batched path) and
    requantize; prints the number of mismatching elements per case and returns their total."""
    g = torch.Generator().manual_seed(seed)
    bad = 0
    mult, shift = quantize_multipliers(torch.rand(40, generator=g, dtype=torch.float64) * 1e-3)
    for m, k, n, lead in ((5, 13, 40, ()), (300, 384, 40, ()), (7, 1536, 40, (3,)), (64, 64, 40, (2,))):
        a = torch.randint(-128, 128, (*lead, m, k), generator=g, dtype=torch.int8)
        w = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
        bias = torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32)
        cpu = requantize(int_matmul(a, w, bias), mult, shift, -127, 127)
        acc_gpu = int_matmul(a, w, bias, device="cuda")
        gpu = requantize(acc_gpu, mult.cuda(), shift.cuda(), -127, 127)
        wb = torch.randint(-128, 128, (*lead, k, n), generator=g, dtype=torch.int8)
        nb = int((int_matmul(a, wb).cpu() != int_matmul(a, wb, device="cuda").cpu()).sum())
        nacc = int((int_matmul(a, w, bias) != acc_gpu.cpu()).sum())
        nreq = int((cpu != gpu.cpu()).sum())
        print(f"cuda check {lead}x{m}x{k}x{n}: acc mismatches {nacc}, requant {nreq}, batched {nb}")
        bad += nacc + nreq + nb
    return bad


# ---- full forward: emulator forward vs float32 PyTorch forward of the whole model ------------------
FORWARD_CONFIGS = ("tiny", "mid", "mid768")


def _forward_workload(name: str):
    """stdit-tiny, or a mid-size STDiT of depth 4 on a 16x128x128 video (16 frames x 64 tokens,
    T5-width captions of 120 tokens): ``mid`` hidden 384 (6 heads), ``mid768`` hidden 768 (12 heads);
    both between tiny's 64 and OpenSora's 1152. 2 sampling steps for a quick calibration."""

    from workloads.presets import get_workload

    w = get_workload("stdit-tiny")
    if name in ("mid", "mid768"):
        hidden, heads = (384, 6) if name == "mid" else (768, 12)
        w = dataclasses.replace(
            w,
            name=f"stdit-{name}",
            num_frames=16,
            height=128,
            width=128,
            model=dataclasses.replace(
                w.model, hidden_size=hidden, num_heads=heads, depth=4, caption_channels=4096, model_max_length=120
            ),
        )
    elif name != "tiny":
        raise ValueError(name)
    return dataclasses.replace(w, num_steps=2)


def forward_pair(name: str, recipe: str, mode: str, device: str = "cpu"):
    """(run_emulator, run_float): one model forward (CFG batch 2) at step 0 each. ``recipe``: a preset
    name, ``+attn`` appended for its variant with integer attention products (QK^T, AV)."""
    from quantmodel.emulator.integer import IntegerEmulator
    from quantmodel.model.build import build_stdit
    from quantmodel.model.config import STDiTConfig
    from quantmodel.quant.artifact import build_artifact
    from quantmodel.quant.calibrate import calibrate
    from workloads.recipes import get_recipe

    w = _forward_workload(name)
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    attn = recipe.endswith("+attn")
    r = get_recipe(recipe[: -len("+attn")] if attn else recipe)
    if attn:
        r = dataclasses.replace(r, name=recipe, quantize_attention=True)
    stats = calibrate(model, w, num_prompts=1) if r.scheme != "dynamic" or r.smoothing else None
    art = build_artifact(model, r, stats, w.num_steps, w.name)
    model = model.to(device)
    emu = IntegerEmulator(model, art, nonlinear=mode, device=device)
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g).to(device)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g).to(device)
    t = torch.tensor([999, 999], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_emu():
        emu.forward(x, t, y, 0)
        sync()

    def run_float():
        with torch.no_grad():
            model(x, t, y)
        sync()

    return run_emu, run_float


def bench_forward(name: str, recipe: str, mode: str, repeats: int, device: str = "cpu") -> tuple[float, float]:
    """(emulator_s, float_s): best of ``repeats`` forwards each, timed interleaved."""
    return _time_pair(*forward_pair(name, recipe, mode, device), repeats)


def _forced(path: str, fn):
    def run():
        with gemmpaths.forced(path):
            fn()

    return run


def run_forward_comparison(
    names: list[str],
    repeats: int,
    device: str = "cpu",
    recipes: tuple[str, ...] = ("asq-w8a8",),
    threads: tuple[int, ...] = (1, 2),
    modes: tuple[str, ...] = ("fp16", "int"),
    f32path: bool = True,
) -> float:
    """For each config, recipe and mode: emulator vs float32 forward, side by side, at each thread
    count (the pair is built once and re-timed per thread count); on the CPU also the emulator with
    every 2-D GEMM forced to the chunked float32 path (what CPUs with a slow ``_int_mm`` get).
    Returns the worst median ratio of the emulator as it runs here (its GEMM path chosen per shape).

    Ratios: ``med`` is the median over the interleaved rounds of (emulator run / the float32 run next to
    it), so load from other processes mostly cancels; ``best`` is best emulator run / best float32 run."""
    worst = 0.0
    cpu = device == "cpu" and f32path
    print(
        f"full forward on {device}, {isa_label()}: emulator (integer GEMMs, vector unit in each mode) vs "
        f"float32 model; >= {repeats} interleaved rounds (more for fast ones: ~1 s each), medians"
        + ("; f32path: every int8 GEMM on the chunked float32 path" if cpu else "")
    )
    print(
        f"{'config':8s} {'recipe':19s} {'mode':5s} {'thr':>3s} {'rounds':>6s} {'emu_ms':>9s} {'f32_ms':>9s} "
        f"{'med':>6s} {'best':>6s}" + (f" {'f32path_ms':>10s} {'f32path/f32':>11s}" if cpu else "")
    )
    for name in names:
        for recipe in recipes:
            for mode in modes:
                run_emu, run_float = forward_pair(name, recipe, mode, device)
                fns = (run_emu, run_float) + ((_forced("float32", run_emu),) if cpu else ())
                for nt in threads:
                    torch.set_num_threads(nt)
                    times = _interleaved(fns, repeats, min_s=1.0)
                    med = [statistics.median(t) for t in times]
                    ratio = statistics.median(a / b for a, b in zip(times[0], times[1]))
                    worst = max(worst, ratio)
                    extra = ""
                    if cpu:
                        extra = f" {med[2] * 1e3:10.2f} {statistics.median(a / b for a, b in zip(times[2], times[1])):11.2f}"
                    print(
                        f"{name:8s} {recipe:19s} {mode:5s} {nt:3d} {len(times[0]):6d} {med[0] * 1e3:9.2f} "
                        f"{med[1] * 1e3:9.2f} {ratio:6.2f} {min(times[0]) / min(times[1]):6.2f}" + extra,
                        flush=True,
                    )
    return worst


AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # the float32 GEMMs (MKL) of both sides too
    "QUANTMODEL_CKERNELS_MARCH": "x86-64-v3",
}


def run_avx2_child(argv: list[str]) -> int:
    """This benchmark again in a child process limited to AVX2 (oneDNN, ATen kernels, C kernels built for
    x86-64-v3): the tables of an AVX2-only CPU, measured on this one. Its output is passed through."""
    args = list(argv)
    i = args.index("--isa") if "--isa" in args else -1
    if i >= 0:
        del args[i : i + 2]
    args = [a for a in args if not a.startswith("--isa=")]
    env = dict(os.environ, **AVX2_ENV)
    print(f"---- forced AVX2-only child: {' '.join(f'{k}={v}' for k, v in AVX2_ENV.items())}", flush=True)
    return subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args, "--isa", "native"], env=env, check=False
    ).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,mid,mid768", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--threads",
        default="1,2",
        help="comma list of torch thread counts (forward comparison; the GEMM comparison uses the first)",
    )
    p.add_argument("--cuda-check", action="store_true", help="only check CUDA == CPU bit for bit")
    p.add_argument("--forward", action="store_true", help="also compare full forwards (emulator vs float32)")
    p.add_argument("--forward-only", action="store_true", help="only the full-forward comparison")
    p.add_argument("--modes", default="fp16,int", help="non-linear modes of the forward comparison")
    p.add_argument(
        "--recipes",
        default="asq-w8a8",
        help="recipes of the forward comparison (a preset name; NAME+attn: with integer attention products)",
    )
    p.add_argument("--device", default="cpu", help="device of the full-forward comparison (cpu or cuda)")
    p.add_argument(
        "--isa",
        default="native",
        help="comma list of: native (this process), avx2 (a child "
        "process limited to AVX2 with C kernels for x86-64-v3)",
    )
    p.add_argument("--no-paths", action="store_true", help="skip the table of int8 GEMM paths")
    p.add_argument("--no-f32path", action="store_true", help="skip the forced-float32-path emulator column")
    p.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall: elapsed time; cpu: the process's CPU time (a loaded machine: time waiting for a core left out)",
    )
    raw = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.cuda_check:
        bad = cuda_check()
        print(f"CUDA vs CPU: {bad} mismatching elements")
        return 1 if bad else 0
    names = [s for s in args.configs.split(",") if s]
    bad = [s for s in names if s not in CONFIGS]
    if bad:
        print(f"--configs: got {bad[0]!r}; allowed: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    try:
        threads = tuple(int(t) for t in args.threads.split(",") if t)
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        print(f"--threads: got {args.threads!r}; allowed: comma list of positive integers", file=sys.stderr)
        return 2
    isas = [s for s in args.isa.split(",") if s]
    if not isas or any(s not in ("native", "avx2") for s in isas):
        print(f"--isa: got {args.isa!r}; allowed: comma list of native, avx2", file=sys.stderr)
        return 2
    if "native" not in isas:
        return run_avx2_child(raw)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    print(f"torch {torch.__version__}, {isa_label()}, clock: {args.clock}")
    from quantmodel.intarith import ckernels

    t0 = time.perf_counter()
    dll = ckernels.lib()  # compiled once per machine and cached; timed apart from the forwards
    print(
        f"C kernels (quantmodel/intarith/csrc): {'loaded ' + dll._name if dll is not None else 'OFF (torch ops only)'}"
        f" in {time.perf_counter() - t0:.2f} s (build or cache load, not part of any forward below)"
    )
    torch.set_num_threads(threads[0])
    if not args.no_paths and args.device == "cpu":
        run_gemm_paths(names, args.repeats)
    if not args.forward_only:
        worst = run_gemm_comparison(names, args.repeats)
        print(f"GEMM level: worst int/f32 total ratio {worst:.2f} (goal <= 1.00)")
    if args.forward or args.forward_only:
        fw = run_forward_comparison(
            names,
            args.repeats,
            args.device,
            tuple(args.recipes.split(",")),
            threads,
            tuple(args.modes.split(",")),
            not args.no_f32path,
        )
        print(f"full forward: worst median emulator/f32 ratio {fw:.2f} (goal <= 1.00), {isa_label()}")
    if "avx2" in isas:
        return run_avx2_child(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
