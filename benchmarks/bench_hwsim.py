"""hwsim speed: (1) one design point of opensora-v1.0-16x512x512 (100 steps x 800 ops, CFG) on edge-npu,
tile-level, on a chip new to the process (hwsim's cross-call cache cleared; the trace already analysed,
as in a sweep), goal < 1 s, with 0.15 s the target that sizes the default sweep; (1b) the same recipes one after another on one chip, as a sweep worker
runs a hardware point, with the cache kept (and identical numbers to the cold runs); (2) memoised vs
unmemoised simulation side by side on smaller workloads, with a check that both give identical numbers.

    python benchmarks/bench_hwsim.py
    python benchmarks/bench_hwsim.py --repeat 1 --hw edge-npu-pro
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hwsim  # noqa: E402
from quantmodel.model.tracing import build_trace  # noqa: E402
from workloads.presets import get_workload  # noqa: E402
from workloads.recipes import annotate_trace, get_recipe  # noqa: E402
from workloads.trace import Trace  # noqa: E402


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def first_steps(trace: Trace, n: int) -> Trace:
    return Trace(ops=[op for op in trace.ops if op.step < n], meta=trace.meta, version=trace.version)


def main() -> int:
    """The three measurements of the module docstring, printed as one table each. One function:
    each part is a few lines of timing around the same traces and chip, printed as it runs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", default="edge-npu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    hw = hwsim.load_hw(args.hw)

    print(f"(1) one design point, opensora-v1.0-16x512x512 on {hw.name} (best of {args.repeat})")
    t0 = time.perf_counter()
    float_trace = build_trace(get_workload("opensora-v1.0-16x512x512"))
    print(f"    trace built in {time.perf_counter() - t0:.2f} s (not part of a design point: built once per sweep)")
    print(
        f"    {'recipe':16s} {'prefetch':8s} {'sim s':>7s} {'goal':>5s} {'latency s':>10s} {'energy J':>9s} "
        f"{'ops':>6s} {'units sim.':>10s}"
    )
    worst = 0.0
    traces = {r: annotate_trace(float_trace, get_recipe(r)) for r in ("asq-w8a8", "tsq-tsw-w8a8", "dynamic-w8a8")}
    cold = {}
    for recipe, trace in traces.items():
        hwsim.simulate(trace, hw)  # analyse the trace once (a sweep does it once per worker)
        for prefetch in ("jit", "early"):

            def run(trace=trace, prefetch=prefetch):
                hwsim.clear_cache(traces=False)
                return hwsim.simulate(trace, hw, prefetch=prefetch)

            sec, res = best_of(run, args.repeat)
            cold[recipe, prefetch] = res
            worst = max(worst, sec)
            print(
                f"    {recipe:16s} {prefetch:8s} {sec:7.3f} {sec / 0.15:4.2f}x {res.latency_s:10.1f} "
                f"{res.energy_j:9.1f} {len(trace.ops):6d} {res.memo['units_simulated']:10d}"
            )
    print(
        f"    slowest design point {worst:.3f} s: goal < 1 s "
        f"({'met' if worst < 1.0 else 'MISSED'}); {worst / 0.15:.2f}x the 0.15 s sweep-sizing target"
    )
    hwsim.clear_cache(traces=False)
    t0 = time.perf_counter()
    same = True
    for prefetch in ("jit", "early"):
        for recipe, trace in traces.items():
            a, b = hwsim.simulate(trace, hw, prefetch=prefetch).to_dict(), cold[recipe, prefetch].to_dict()
            a.pop("memo"), b.pop("memo")
            same &= a == b
    per = (time.perf_counter() - t0) / (2 * len(traces))
    print(
        f"(1b) the {2 * len(traces)} points above in a row on one chip, cache kept: {per:.3f} s/point; "
        f"identical to the cold runs: {same}"
    )

    print("\n(2) memoised vs unmemoised (same numbers required)")
    print(f"    {'workload':40s} {'memo s':>8s} {'no-memo s':>10s} {'speed-up':>9s} {'identical':>9s}")
    cases = [
        (
            "stdit-tiny tsq-tsw-w8a8 (10 steps)",
            annotate_trace(build_trace(get_workload("stdit-tiny")), get_recipe("tsq-tsw-w8a8")),
        ),
        (
            "opensora-16x256x256 tsq-tsw-w8a8, 3 steps",
            first_steps(
                annotate_trace(build_trace(get_workload("opensora-v1.0-16x256x256")), get_recipe("tsq-tsw-w8a8")), 3
            ),
        ),
    ]
    for label, trace in cases:

        def fresh(trace=trace):  # nothing cached from an earlier call
            hwsim.clear_cache()
            return hwsim.simulate(trace, hw)

        fast_s, fast = best_of(fresh, args.repeat)
        slow_s, slow = best_of(lambda trace=trace: hwsim.simulate(trace, hw, memo=False), 1)
        a, b = fast.to_dict(), slow.to_dict()
        a.pop("memo"), b.pop("memo")
        print(f"    {label:40s} {fast_s:8.3f} {slow_s:10.3f} {slow_s / fast_s:8.1f}x {str(a == b):>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
