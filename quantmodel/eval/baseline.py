"""The final-sample SQNR regression check of ``codesign verify``: a stored per-recipe baseline.

Exact checks prove the emulator computes what the artifact says and the artifact holds what its
definition says; neither notices a change of the definition itself that costs quality (a rounding
moved, a range estimator changed, a headroom halved). So verify also compares the final sample's SQNR
against the float model with the value stored for the same recipe, mode and settings in
``sqnr_baseline.json`` (stdit-tiny at its seeded random init, calibration seed 0 with the default 4
prompts, one evaluation sample at the evaluation seed), and fails when it is lower by more than
``margin_db``. The margin comes from the measured seed-to-seed spread (docs/verify.md); with other
settings the check reports that it does not apply.

Regenerate (after an intended change of quality) and measure the spread with::

    python -m quantmodel.eval.baseline --write            # the baseline file
    python -m quantmodel.eval.baseline --write --missing  # add the recipes the file lacks
    python -m quantmodel.eval.baseline --spread 5         # SQNR over calibration / noise seeds 0..4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BASELINE_PATH = Path(__file__).with_name("sqnr_baseline.json")
WORKLOAD = "stdit-tiny"
CALIB = {"num_prompts": 4, "seed": 0}  # verify's defaults (codesign verify --prompts 4 --seed 0)
RECIPES = (
    [f"{s}-w8a8" for s in ("static", "asq", "tsq-tsw", "groups4-cal", "dynamic")]
    + ["asq-w6a6", "asq-w4a8"]
    + ["tsq-w8a8", "groups4-tsq-w8a8", "vidit-q-w8a8", "vidit-q-w6a6", "vidit-q-w4a8"]  # per-step scales; ViDiT-Q
    + [f"asq-{o}-w8a8" for o in ("asym", "pct", "mse", "ema", "sema", "asearch", "aggmean")]  # calibration options
)
MODES = ("fp16", "int")


def load_baseline(path: Path = BASELINE_PATH) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def check_sqnr(
    workload: str, recipe: str, nonlinear: str, art_meta: dict, sample_sqnr_db: float, num_samples: int, eval_seed: int
) -> dict:
    """The baseline comparison verify reports: ``{"applies": False, "reason"}`` when the run's settings are
    not the baseline's, else the stored value, the margin, the drop and ``ok``."""
    from quantmodel.eval.quality import EVAL_SEED

    base = load_baseline()
    entry = base.get("sqnr_db", {}).get(f"{recipe}/{nonlinear}")
    stats = art_meta.get("stats") or {}
    same = (
        workload == base.get("workload")
        and art_meta.get("model_fingerprint") == base.get("model_fingerprint")
        and num_samples == 1
        and eval_seed == EVAL_SEED
        and (
            art_meta.get("scheme") == "dynamic"
            or (
                stats.get("num_prompts") == base["calibration"]["num_prompts"]
                and stats.get("seed") == base["calibration"]["seed"]
                and stats.get("text_features") == "random-normal"
                and stats.get("caption_mask") == "all tokens"
            )
        )
    )
    if entry is None or not same:
        why = "no baseline for this recipe and mode" if entry is None else "settings other than the baseline's"
        return {"applies": False, "reason": why}
    margin = float(base["margin_db"])
    drop = entry - sample_sqnr_db
    return {"applies": True, "baseline_db": entry, "margin_db": margin, "drop_db": drop, "ok": drop <= margin}


class _Runs:
    """Final-sample SQNRs as verify computes them (the unchecked emulator gives the same sample), with the
    calibration statistics and the float reference computed once per seed."""

    def __init__(self):
        from quantmodel.eval.quality import load_model
        from workloads.presets import get_workload

        self.workload = get_workload(WORKLOAD)
        self.model = load_model(self.workload)
        self._stats: dict = {}
        self._ref: dict = {}

    def stats(self, seed: int):
        from quantmodel.eval.quality import get_stats

        if seed not in self._stats:
            self._stats[seed] = get_stats(self.model, self.workload, None, CALIB["num_prompts"], seed)
        return self._stats[seed]

    def reference(self, eval_seed: int):
        from quantmodel.eval.quality import eval_batch, float_model_fn, sample

        if eval_seed not in self._ref:
            z, y, mask = eval_batch(self.model, 1, eval_seed, workload=self.workload)
            ref = sample(float_model_fn(self.model), self.model, self.workload, z, y, eval_seed, mask=mask)
            self._ref[eval_seed] = (z, y, mask, ref)
        return self._ref[eval_seed]

    def sqnr(self, recipe: str, nonlinear: str, calib_seed: int, eval_seed: int) -> float:
        from quantmodel.eval.quality import quantize_model, recipe_model_fn, sample, sample_metrics
        from workloads.recipes import get_recipe

        r = get_recipe(recipe)
        m, w = self.model, self.workload
        art = quantize_model(m, w, r, None if r.scheme == "dynamic" else self.stats(calib_seed))
        z, y, mask, ref = self.reference(eval_seed)
        fn, _ = recipe_model_fn(m, w, r, "emulator", nonlinear, artifact=art)
        return sample_metrics(ref, sample(fn, m, w, z, y, eval_seed, mask=mask))["sqnr_db"]


def write_baseline(margin_db: float, only_missing: bool = False) -> dict:
    """Measure every recipe and mode (``only_missing``: keep the stored values, measure the others)."""
    from quantmodel.eval.quality import EVAL_SEED
    from quantmodel.quant.calibrate import model_fingerprint

    runs = _Runs()
    old = load_baseline()
    if only_missing and old.get("model_fingerprint") != model_fingerprint(runs.model):
        raise ValueError("the stored baseline is of another model: regenerate it all (--write)")
    values = dict(old.get("sqnr_db", {})) if only_missing else {}
    for r in RECIPES:
        for mode in MODES:
            if f"{r}/{mode}" in values:
                continue
            values[f"{r}/{mode}"] = round(runs.sqnr(r, mode, CALIB["seed"], EVAL_SEED), 4)
            print(f"{r:<18} {mode:<4} {values[f'{r}/{mode}']:8.3f} dB", file=sys.stderr, flush=True)
    data = {
        "workload": WORKLOAD,
        "model_fingerprint": model_fingerprint(runs.model),
        "calibration": CALIB,
        "eval_seed": EVAL_SEED,
        "margin_db": margin_db,
        "sqnr_db": values,
    }
    BASELINE_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def spread(seeds: int, modes: tuple[str, ...] = ("fp16",)) -> dict:
    """Per recipe: final-sample SQNR with calibration seed s and evaluation seed EVAL_SEED + 17 s
    (s = 0..seeds-1): values, mean, sample standard deviation, and the largest drop below the mean."""
    from quantmodel.eval.quality import EVAL_SEED

    runs = _Runs()
    out = {}
    for r in RECIPES:
        for mode in modes:
            v = [runs.sqnr(r, mode, s, EVAL_SEED + 17 * s) for s in range(seeds)]
            mean = statistics.fmean(v)
            out[f"{r}/{mode}"] = {"values": v, "mean": mean, "std": statistics.stdev(v)}
            print(
                f"{r:<18} {mode:<4} mean {mean:7.2f} std {statistics.stdev(v):5.2f} "
                f"min-mean {min(v) - mean:6.2f} dB  " + " ".join(f"{x:.2f}" for x in v),
                flush=True,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="regenerate sqnr_baseline.json")
    p.add_argument("--missing", action="store_true", help="with --write: measure only recipes not stored yet")
    p.add_argument("--margin-db", type=float, help="margin stored with --write (default: the file's)")
    p.add_argument("--spread", type=int, default=0, help="measure SQNR over this many seeds")
    a = p.parse_args(argv)
    if a.spread:
        spread(a.spread)
    if a.write:
        margin = a.margin_db if a.margin_db is not None else load_baseline().get("margin_db")
        if margin is None:
            p.error("--margin-db is needed the first time")
        write_baseline(float(margin), only_missing=a.missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
