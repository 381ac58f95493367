"""Time goal: the default sweep's quality axis (codesign/specs/default.yaml ``quality:``) must keep
the main job (``codesign sweep default`` then ``codesign report``) within about 8 minutes on 2 cores.

The sweep computes quality once per recipe (cached in the store by ``quality_key``): one preparation
(calibration of the static recipes, the float reference sample) and one evaluation per recipe. This
times exactly those calls (``codesign.sweep.prepare_quality`` / ``evaluate_quality``, the functions the
sweep's workers run) for each quality setting named, side by side in one run, in one process with
``--threads`` torch threads, and prints the seconds each takes and the ratio to the first.

    python benchmarks/bench_quality_axis.py                 # default.yaml's setting vs stdit-shapes (8 clips)
    python benchmarks/bench_quality_axis.py --threads 2 --settings stdit-tiny:1 stdit-shapes:1
"""

from __future__ import annotations

import argparse
import time

import torch

from codesign.spec import load_spec


def time_setting(workload: str, options: dict, recipes: list[str]) -> dict:
    """Wall seconds of the preparation and of all recipes' evaluations (fresh model cache)."""
    from codesign import sweep

    sweep._MODELS.clear()
    t0 = time.perf_counter()
    prep = sweep.prepare_quality(workload, options, need_stats=True)
    t1 = time.perf_counter()
    rows = [sweep.evaluate_quality(workload, r, options, prep) for r in recipes]
    t2 = time.perf_counter()
    sq = [row["q.sqnr_db"] for row in rows]
    return {"prepare_s": t1 - t0, "recipes_s": t2 - t1, "total_s": t2 - t0, "min_sqnr_db": min(sq)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help="WORKLOAD:NUM_SAMPLES items (backend fakequant); default: default.yaml's and stdit-shapes:8",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = load_spec("default")
    shapes = {"backend": "fakequant", "num_samples": 8, "num_prompts": 8}
    settings = [(spec.quality_workload, dict(spec.quality_options)), ("stdit-shapes", shapes)]
    if a.settings:
        settings = []
        for item in a.settings:
            wl, _, n = item.partition(":")
            settings.append((wl, {"backend": "fakequant", "num_samples": int(n or 1)}))
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {a.threads} torch threads, {len(spec.recipes)} recipes"
    )
    base = None
    for wl, opts in settings:
        res = time_setting(wl, opts, spec.recipes)
        base = base or res["total_s"]
        print(
            f"{wl} {opts}: prepare {res['prepare_s']:.1f} s, recipes {res['recipes_s']:.1f} s,"
            f" total {res['total_s']:.1f} s (x{res['total_s'] / base:.2f}); worst recipe SQNR {res['min_sqnr_db']:.1f} dB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
