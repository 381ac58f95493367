"""Sweep throughput: (1) a default-sized sweep of 1,000 hardware points for one recipe on the local
process pool (goal: under 5 minutes on 2 cores); (2) time per point on a 2-worker Dask LocalCluster
against the local pool on the same points (goal: within 20%). Both printed side by side.

    python benchmarks/bench_sweep.py                    # the goals' sizes
    python benchmarks/bench_sweep.py --points 100 --dask-points 40   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codesign.spec import SPEC_DIR, _SpecLoader, spec_from_dict  # noqa: E402
from codesign.store import load_results  # noqa: E402
from codesign.sweep import run_sweep  # noqa: E402


def make_spec(base: dict, recipe: str, points: int, seed: int):
    d = copy.deepcopy(base)
    d["name"] = f"bench-{points}"
    d["recipes"] = [recipe]
    d["quality"] = None
    d["hardware"]["samples"] = points
    d["hardware"]["seed"] = seed
    return spec_from_dict(d)


def cold_worker() -> None:
    """Forget what an earlier sweep left in a long-lived worker (hwsim's cache, quantized traces)."""
    import hwsim
    from codesign import sweep

    hwsim.clear_cache()
    sweep._QUANTIZED.clear()
    sweep._QUANTIZED_OF[0] = None


def main() -> int:
    """The two measurements of the module docstring. One function: both share the spec, the
    temporary store and the printout, and each is a few lines of timing around ``run_sweep``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1000, help="hardware points of the local-pool sweep")
    ap.add_argument("--dask-points", type=int, default=100, help="points of the Dask vs local comparison")
    ap.add_argument("--recipe", default="tsq-tsw-w8a8")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    base = yaml.load((SPEC_DIR / "default.yaml").read_text(), Loader=_SpecLoader)
    print(f"workload {base['cost_workload']}, recipe {args.recipe}, axes of codesign/specs/default.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(base, args.recipe, args.points, seed=1)
        s = run_sweep(spec, f"{tmp}/local-big", jobs=args.jobs, progress=True)
        n = s.computed_points
        sim_s = load_results(f"{tmp}/local-big")["sim_wall_s"].sum()
        per_1000 = s.wall_s * 1000 / n
        print(
            f"[1] local pool, {args.jobs} workers: {n} points in {s.wall_s:.1f} s = "
            f"{1e3 * s.wall_s / n:.1f} ms/point"
            + (
                f"; goal 1,000 points < 300 s: {'met' if s.wall_s < 300 else 'MISSED'}"
                if n == 1000
                else f"; 1,000 points would take ~{per_1000:.0f} s (goal < 300 s; run --points 1000 to measure)"
            )
        )
        print(
            f"    inside hwsim.simulate: {1e3 * sim_s / n:.1f} ms/point of worker time; the sweep layer "
            f"(trace build, shipping, store, pool) adds {100 * (s.wall_s - sim_s / args.jobs) / s.wall_s:.0f}% "
            f"of the wall time"
        )

        from dask.distributed import Client, LocalCluster

        spec = make_spec(base, args.recipe, args.dask_points, seed=2)
        t0 = time.perf_counter()
        with (
            LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            start_s = time.perf_counter() - t0
            # alternate local / Dask / Dask / local on the same points and keep each one's best:
            # the machine's other load drifts during a run
            runs = {"local": [], "dask": []}
            for i, kind in enumerate(("local", "dask", "dask", "local")):
                out = f"{tmp}/{kind}{i}"
                if kind == "dask":  # the workers outlive a sweep: start each run as cold as a new pool
                    client.run(cold_worker)
                runs[kind].append(
                    run_sweep(spec, out, jobs=args.jobs, progress=False)
                    if kind == "local"
                    else run_sweep(spec, out, scheduler=client, progress=False)
                )
        loc = min(runs["local"], key=lambda r: r.wall_s)
        d = min(runs["dask"], key=lambda r: r.wall_s)
        ratio = (d.wall_s / d.computed_points) / (loc.wall_s / loc.computed_points)
        print(
            f"[2] same {loc.computed_points} points, best of 2 each:  local pool   Dask LocalCluster ({args.jobs} workers)"
        )
        print(f"    wall (s)                {loc.wall_s:12.2f}   {d.wall_s:12.2f}   (+{start_s:.1f} s cluster start)")
        print(
            f"    ms per point            {1e3 * loc.wall_s / loc.computed_points:12.2f}   "
            f"{1e3 * d.wall_s / d.computed_points:12.2f}"
        )
        print(f"    Dask / local = {ratio:.2f}; goal within 20%: {'met' if ratio <= 1.2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
