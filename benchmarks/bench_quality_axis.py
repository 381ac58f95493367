"""Time goal: the default sweep's quality axis (codesign/specs/default.yaml ``quality:``) must keep
the main job (``codesign sweep default`` then ``codesign report``) within about 8 minutes on 2 cores.

The sweep computes quality once per recipe (cached in the store by ``quality_key``): one preparation
(calibration of the static recipes, the float reference sample) and one evaluation per recipe. This
times exactly those calls (``codesign.sweep.prepare_quality`` / ``evaluate_quality``, the functions the
sweep's workers run) for each quality setting named, side by side in one process with ``--threads``
torch threads: the preparations one after the other (settings that differ only in the backend share
one), then recipe by recipe with the settings alternating (so a change of the machine's load falls on every setting alike). It prints each setting's
seconds, their ratio to the first setting, and each setting's per-recipe SQNR.

    python benchmarks/bench_quality_axis.py            # before (stdit-tiny; trained model, fake-quant,
                                                       #   8 or 4 clips) vs after (default.yaml's setting)
    python benchmarks/bench_quality_axis.py --recipes asq-w8a8 dynamic-w8a8 --settings \\
        stdit-shapes:backend=fakequant,num_samples=4 default
"""

from __future__ import annotations

import argparse
import time

import torch

from codesign.spec import load_spec

BEFORE = [  # what the default's quality axis was, and the trained model as the sweep first ran it
    "stdit-tiny:backend=fakequant",
    "stdit-shapes:backend=fakequant,num_samples=8,num_prompts=8",
    "stdit-shapes:backend=fakequant,num_samples=4,num_prompts=8",
]


def parse_setting(item: str, spec) -> tuple[str, dict]:
    """``default`` (the spec's quality setting) or ``WORKLOAD:key=value,...`` (integers and booleans
    parsed)."""
    if item == "default":
        return spec.quality_workload, dict(spec.quality_options)
    wl, _, rest = item.partition(":")
    opts: dict = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        opts[k] = int(v) if v.isdigit() else {"true": True, "false": False}.get(v, v)
    return wl, opts


def time_settings(settings: list[tuple[str, dict]], recipes: list[str]) -> list[dict]:
    """Per setting: wall seconds of the preparation and of each recipe's evaluation, and the SQNRs
    (fresh model cache per preparation; the evaluations alternate between settings)."""
    from codesign import sweep

    res, preps, done = [], [], {}
    for wl, opts in settings:
        # the preparation does not depend on the backend: settings that differ only there share it
        key = (wl, *(opts.get(k) for k in ("num_prompts", "num_samples", "checkpoint")))
        if key not in done:
            sweep._MODELS.clear()
            t0 = time.perf_counter()
            done[key] = (sweep.prepare_quality(wl, opts, need_stats=True), time.perf_counter() - t0)
        preps.append(done[key][0])
        res.append({"prepare_s": done[key][1], "recipes_s": 0.0, "sqnr_db": {}})
    for r in recipes:
        for (wl, opts), prep, out in zip(settings, preps, res):
            t0 = time.perf_counter()
            row = sweep.evaluate_quality(wl, r, opts, prep)
            out["recipes_s"] += time.perf_counter() - t0
            out["sqnr_db"][r] = row["q.sqnr_db"]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spec", default="default", help="the sweep spec whose setting 'default' names")
    p.add_argument("--settings", nargs="+", default=None, help="'default' or WORKLOAD:key=value,... items")
    p.add_argument("--recipes", nargs="+", default=None, help="a subset of the spec's recipes (default: all)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = load_spec(a.spec)
    items = a.settings or [*BEFORE, "default"]
    settings = [parse_setting(s, spec) for s in items]
    recipes = a.recipes or list(spec.recipes)
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {a.threads} torch threads,"
        f" {len(recipes)} recipes: {' '.join(recipes)}",
        flush=True,
    )
    res = time_settings(settings, recipes)
    base = res[0]["prepare_s"] + res[0]["recipes_s"]
    for (wl, opts), r in zip(settings, res):
        total = r["prepare_s"] + r["recipes_s"]
        print(
            f"{wl} {opts}: prepare {r['prepare_s']:.1f} s, recipes {r['recipes_s']:.1f} s"
            f" ({r['recipes_s'] / len(recipes):.1f} s each), total {total:.1f} s (x{total / base:.2f})"
        )
        print("    SQNR dB: " + ", ".join(f"{k} {v:.1f}" for k, v in r["sqnr_db"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
