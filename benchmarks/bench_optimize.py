"""Search goal: a multi-objective search reaches the hypervolume that random sampling needs at least
3x more design points to reach.

Side by side in one run, on the same spec (default: the default sweep's space, full-size OpenSora
v1.0 16x512x512 costs) and objectives (latency, energy, area, all minimised), for each seed: every
sampler asked for N trials, random sampling (same seed) for 3N. Hypervolume of the feasible points
against one reference point per seed (1.05x the worst value of each objective seen by any run of that
seed); then the number of random points needed to reach each sampler's hypervolume at N (">3N" when
random never gets there), as a ratio to N. One seed is one draw: the summary gives the median and the
range of the ratio over the seeds.

    python benchmarks/bench_optimize.py [--trials 100] [--seeds 0,1,2] [--samplers gp,tpe] [--jobs 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from codesign.optimize import SAMPLERS, hypervolume, optimize
from codesign.spec import load_spec

OBJECTIVES = ["latency_s", "energy_j", "area_mm2"]


def _hv_curve(history: list, ref: list) -> list[float]:
    """Hypervolume after each trial; only the non-dominated points so far are kept (same volume, and
    the exact slicing stays fast over hundreds of trials)."""
    front, out, hv = [], [], 0.0
    for v in history:
        if v is not None and not any(all(a <= b for a, b in zip(w, v)) for w in front):
            front = [w for w in front if not all(a <= b for a, b in zip(v, w))] + [tuple(v)]
            hv = hypervolume(front, ref)
        out.append(hv)
    return out


def random_ratio(curve: list[float], random_curve: list[float], n: int) -> tuple[int | None, float]:
    """Random points needed to reach ``curve``'s hypervolume at ``n`` trials (None: never, within its
    run), and that as a ratio to ``n`` (the run's length / n when never: a lower bound)."""
    target = curve[n - 1]
    need = next((i + 1 for i, v in enumerate(random_curve) if v >= target), None)
    return need, (need if need else len(random_curve)) / n


def one_seed(spec, samplers: list[str], n: int, factor: int, seed: int, jobs) -> dict[str, tuple]:
    """Each sampler's (random points needed, ratio, HV at n) for one seed, runs side by side."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler, trials in [(s, n) for s in samplers] + [("random", factor * n)]:
            t0 = time.perf_counter()
            s = optimize(
                spec,
                Path(tmp) / sampler,
                OBJECTIVES,
                trials=trials,
                sampler=sampler,
                seed=seed,
                batch=10,
                jobs=jobs,
                progress=False,
            )
            runs[sampler] = s.history
            print(
                f"  seed {seed} {sampler:>7}: {trials} trials in {time.perf_counter() - t0:.1f} s "
                f"({s.feasible} feasible, {len({v for v in s.history if v is not None})} distinct)",
                flush=True,
            )
    seen = [v for h in runs.values() for v in h if v is not None]
    ref = [1.05 * max(v[i] for v in seen) for i in range(len(OBJECTIVES))]
    curves = {k: _hv_curve(h, ref) for k, h in runs.items()}
    out = {}
    for k in samplers:
        need, ratio = random_ratio(curves[k], curves["random"], n)
        out[k] = (need, ratio, curves[k][n - 1], curves["random"][n - 1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="default")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2", help="comma list; one full comparison per seed")
    ap.add_argument("--samplers", default="gp,tpe", help=f"comma list among {', '.join(SAMPLERS[:-1])}")
    ap.add_argument("--factor", type=int, default=3, help="random runs factor x trials (default 3)")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    n, samplers = args.trials, [s for s in args.samplers.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios: dict[str, list[float]] = {k: [] for k in samplers}
    rows = []
    for seed in seeds:
        for k, (need, ratio, hv, rand_hv) in one_seed(spec, samplers, n, args.factor, seed, args.jobs).items():
            ratios[k].append(ratio)
            rows.append((seed, k, hv, rand_hv, need, ratio))
    print(
        f"\n{'seed':>4} {'sampler':>8} {'HV at N':>12} {'random HV at N':>15} {'random points to match':>23} {'ratio':>6}"
    )
    for seed, k, hv, rand_hv, need, ratio in rows:
        shown = str(need) if need else f">{args.factor * n}"
        print(f"{seed:>4} {k:>8} {hv:>12.5g} {rand_hv:>15.5g} {shown:>23} {'>' if not need else ''}{ratio:.2f}")
    print(
        f"\nrandom needs Nx the trials (N = {n}, {len(seeds)} seeds; '>' = random never got there in {args.factor}N):"
    )
    for k, rs in ratios.items():
        met = sum(r >= 3 for r in rs)
        top = max(rs)
        print(
            f"{k:>8}: median {statistics.median(rs):.2f}x, range {min(rs):.2f}-{top:.2f}x"
            f"{' (or more: random never got there)' if top >= args.factor else ''}, >= 3x in {met} of {len(rs)} seeds"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
