"""Search goal: a multi-objective search reaches the hypervolume that random sampling needs at least
3x more design points to reach.

Side by side in one run, on the same spec (default: the default sweep's space, full-size OpenSora
v1.0 16x512x512 costs) and objectives (latency, energy, area, all minimised): NSGA-II and TPE for N
trials each, random sampling for 3N. Hypervolume of the feasible points against one reference point
(1.05x the worst value of each objective seen by any run); then the number of random points needed to
reach each optimizer's hypervolume at N (">3N" when random never gets there).

    python benchmarks/bench_optimize.py [--trials 100] [--spec default] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from codesign.optimize import hypervolume, optimize
from codesign.spec import load_spec

OBJECTIVES = ["latency_s", "energy_j", "area_mm2"]


def _hv_curve(history: list, ref: list) -> list[float]:
    pts, out = [], []
    for v in history:
        if v is not None:
            pts.append(v)
        out.append(hypervolume(pts, ref))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="default")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    n = args.trials
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler, trials in (("nsga2", n), ("tpe", n), ("random", 3 * n)):
            t0 = time.perf_counter()
            s = optimize(
                spec,
                Path(tmp) / sampler,
                OBJECTIVES,
                trials=trials,
                sampler=sampler,
                seed=args.seed,
                batch=10,
                jobs=args.jobs,
                progress=False,
            )
            runs[sampler] = s.history
            print(
                f"{sampler:>7}: {trials} trials in {time.perf_counter() - t0:.1f} s ({s.feasible} feasible)", flush=True
            )
    seen = [v for h in runs.values() for v in h if v is not None]
    ref = [1.05 * max(v[i] for v in seen) for i in range(len(OBJECTIVES))]
    curves = {k: _hv_curve(h, ref) for k, h in runs.items()}
    rand = curves["random"]
    print(f"\nreference point {', '.join(f'{o} {r:.4g}' for o, r in zip(OBJECTIVES, ref))}")
    print(f"{'sampler':>8} {'HV at N':>12} {'random HV at N':>15} {'random points to match':>23} {'ratio':>6}")
    for k in ("nsga2", "tpe"):
        target = curves[k][n - 1]
        need = next((i + 1 for i, v in enumerate(rand) if v >= target), None)
        ratio = f"{need / n:.2f}" if need else f">{len(rand) / n:.0f}"
        print(f"{k:>8} {target:>12.5g} {rand[n - 1]:>15.5g} {need if need else f'>{len(rand)}':>23} {ratio:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
