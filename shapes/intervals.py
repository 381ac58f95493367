"""Confidence intervals for the quantization study: a two-level (hierarchical) percentile bootstrap
over seeds and clips, paired between recipes.

Why two levels: a study's clips are not independent draws. Each seed fixes the calibration prompts,
the calibration noise and the evaluation noise, so every clip of a seed shares one set of static
scales; resampling clips alone would hide the seed-to-seed spread. Each bootstrap replicate first
draws seeds with replacement, then, within each drawn seed, clips with replacement (the clustered
bootstrap of Davison & Hinkley 1997, sec. 3.8). With 3 seeds the outer level has few distinct values;
the interval is then, if anything, too narrow on the seed axis, which is why the tables also give the
per-seed range.

Why paired: every recipe samples the same clip (prompt and noise) as every other, so a difference
between recipes is computed on the same replicate's clips; the clip-to-clip variation that both share
cancels, and the interval of the difference is much narrower than the two intervals side by side.

The bootstrap's own random draws come from ``numpy.random.default_rng(BOOT_SEED)``: the same
per-clip file gives the same intervals, bit for bit.

Input: the study's per-clip table (``shapes.study``: one row per recipe, seed and clip with the
clip's signal and error energy against the float clip, PSNR and per-attribute correctness).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BOOT_SEED = 20260
NUM_BOOT = 2000
LEVEL = 0.95
ATTRS = ("shape", "colour", "direction", "speed", "background")


@dataclass(frozen=True)
class Resample:
    """Bootstrap indices: ``seeds`` [B, S] (which seed fills slot j of replicate b) and ``clips``
    [B, S, N] (which clip of that seed fills each clip slot)."""

    seeds: np.ndarray
    clips: np.ndarray

    @classmethod
    def draw(cls, num_seeds: int, num_clips: int, num_boot: int = NUM_BOOT, seed: int = BOOT_SEED) -> Resample:
        rng = np.random.default_rng(seed)
        s = rng.integers(0, num_seeds, size=(num_boot, num_seeds))
        c = rng.integers(0, num_clips, size=(num_boot, num_seeds, num_clips))
        return cls(s, c)

    def take(self, x: np.ndarray) -> np.ndarray:
        """``x`` [S, N] -> the replicates' values [B, S, N]."""
        return x[self.seeds[:, :, None], self.clips]


def sqnr_db(ref_energy: np.ndarray, err_energy: np.ndarray) -> np.ndarray:
    """SQNR of a set of clips (10 log10 of summed signal over summed error), over the last two axes."""
    return 10 * np.log10(ref_energy.sum(axis=(-2, -1)) / err_energy.sum(axis=(-2, -1)))


def _stat(metric: str, arrays: dict[str, np.ndarray], rs: Resample | None) -> np.ndarray | float:
    """One metric of the clips [S, N] (``rs`` None) or of every replicate [B]."""

    def get(k: str) -> np.ndarray:
        return arrays[k] if rs is None else rs.take(arrays[k])

    if metric == "sqnr_db":
        return sqnr_db(get("ref_energy"), get("err_energy"))
    return get(metric).mean(axis=(-2, -1))


def _matrix(clips: pd.DataFrame, recipe: str, col: str, seeds: list, n: int) -> np.ndarray:
    """Column ``col`` of one recipe as [S, N] in (seed, clip) order."""
    sub = clips[clips["recipe"] == recipe].sort_values(["seed", "clip"])
    if list(sub["seed"].unique()) != seeds or len(sub) != len(seeds) * n:
        raise ValueError(f"recipe {recipe}: per-clip rows do not cover seeds {seeds} x {n} clips")
    return sub[col].to_numpy(dtype=np.float64).reshape(len(seeds), n)


METRICS = ("sqnr_db", "psnr_db", "acc_mean", "acc_all")


def _arrays(clips: pd.DataFrame, recipe: str, seeds: list, n: int) -> dict[str, np.ndarray]:
    cols = ["ref_energy", "err_energy", "psnr_db", *(f"acc_{a}" for a in ATTRS)]
    out = {c: _matrix(clips, recipe, c, seeds, n) for c in cols}
    hits = np.stack([out[f"acc_{a}"] for a in ATTRS])  # [5, S, N]
    out["acc_mean"] = hits.mean(axis=0)
    out["acc_all"] = hits.min(axis=0)
    return out


def _bounds(reps: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def recipe_intervals(clips: pd.DataFrame, level: float = LEVEL, num_boot: int = NUM_BOOT) -> pd.DataFrame:
    """Per recipe and metric: the estimate on all clips and seeds, its bootstrap interval and the
    min / max over seeds. Float rows (infinite SQNR / PSNR) get only the accuracy metrics."""
    seeds = sorted(clips["seed"].unique().tolist())
    n = int(clips["clip"].max()) + 1
    rs = Resample.draw(len(seeds), n, num_boot)
    rows = []
    for recipe in dict.fromkeys(clips["recipe"]):
        arr = _arrays(clips, recipe, seeds, n)
        for m in METRICS:
            if m in ("sqnr_db", "psnr_db") and not np.isfinite(arr["psnr_db"]).all():
                continue
            per_seed = [float(_stat(m, {k: v[i : i + 1] for k, v in arr.items()}, None)) for i in range(len(seeds))]
            lo, hi = _bounds(_stat(m, arr, rs), level)
            est = float(_stat(m, arr, None))
            rows.append(
                dict(
                    recipe=recipe, metric=m, estimate=est, lo=lo, hi=hi, seed_min=min(per_seed), seed_max=max(per_seed)
                )
            )
    return pd.DataFrame(rows)


def paired_difference(
    clips: pd.DataFrame, a: str, b: str, metric: str, level: float = LEVEL, num_boot: int = NUM_BOOT
) -> dict:
    """``metric(a) - metric(b)`` on the same clips (same prompts, same noise), with its paired
    bootstrap interval: both recipes are resampled with the same indices."""
    seeds = sorted(clips["seed"].unique().tolist())
    n = int(clips["clip"].max()) + 1
    rs = Resample.draw(len(seeds), n, num_boot)
    xa, xb = _arrays(clips, a, seeds, n), _arrays(clips, b, seeds, n)
    lo, hi = _bounds(_stat(metric, xa, rs) - _stat(metric, xb, rs), level)
    est = float(_stat(metric, xa, None) - _stat(metric, xb, None))
    return dict(a=a, b=b, metric=metric, estimate=est, lo=lo, hi=hi, excludes_zero=bool(lo > 0 or hi < 0))


def clip_sqnr_intervals(
    signal: np.ndarray, error: np.ndarray, level: float = LEVEL, num_boot: int = NUM_BOOT, seed: int = BOOT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SQNR of each row's clips and its percentile bootstrap interval over those clips alone, for
    ``signal`` / ``error`` energies [R, N] (R recipes that sampled the same N clips from one
    calibration, as a sweep's quality axis does). Every row is resampled with the same indices, so
    intervals of differences (:func:`clip_sqnr_difference`) pair. Returns (estimate, lo, hi), each [R].

    What it leaves out: the calibration's own luck (one seed), so it is narrower than the study's
    two-level interval; and a percentile bootstrap over few clips is itself too narrow (with 4 clips
    it has 35 distinct resamples). Read it as the clip-to-clip spread, not as the recipe's quality."""
    signal, error = np.asarray(signal, dtype=np.float64), np.asarray(error, dtype=np.float64)
    if signal.shape != error.shape or signal.ndim != 2 or signal.shape[1] < 1:
        raise ValueError(f"clip energies: signal {signal.shape} and error {error.shape} must both be [recipes, clips]")
    reps = _clip_replicates(signal, error, num_boot, seed)  # [R, B]
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)], axis=1)
    return sqnr_db(signal[:, None, :], error[:, None, :]), lo, hi


def _clip_replicates(signal: np.ndarray, error: np.ndarray, num_boot: int, seed: int) -> np.ndarray:
    """Each row's SQNR on every bootstrap replicate of its N clips [R, B] (one seed: the outer level
    of :class:`Resample` has a single slot); all rows share the replicates' indices."""
    rs = Resample.draw(1, signal.shape[1], num_boot, seed)
    return np.stack([sqnr_db(rs.take(sg[None]), rs.take(er[None])) for sg, er in zip(signal, error)])


def clip_sqnr_difference(
    signal: np.ndarray, error: np.ndarray, level: float = LEVEL, num_boot: int = NUM_BOOT, seed: int = BOOT_SEED
) -> dict:
    """``SQNR(row 0) - SQNR(row 1)`` of two recipes on the same clips (``signal`` / ``error`` [2, N]),
    with its paired percentile bootstrap interval over the clips (same replicates as
    :func:`clip_sqnr_intervals`)."""
    signal, error = np.asarray(signal, dtype=np.float64), np.asarray(error, dtype=np.float64)
    if signal.shape != error.shape or signal.shape[0] != 2:
        raise ValueError(f"clip energies: signal {signal.shape} and error {error.shape} must both be [2, clips]")
    reps = _clip_replicates(signal, error, num_boot, seed)
    lo, hi = _bounds(reps[0] - reps[1], level)
    est = sqnr_db(signal[:, None, :], error[:, None, :])
    return dict(estimate=float(est[0] - est[1]), lo=lo, hi=hi, excludes_zero=bool(lo > 0 or hi < 0))


def seed_floor(per_seed: pd.DataFrame, recipe: str, col: str) -> float:
    """The noise floor of a per-(recipe, seed) metric: the largest difference of ``recipe`` (the
    float model) with itself between two seeds, i.e. how far the metric moves when nothing is
    quantized and only the prompts' noise changes."""
    v = per_seed.loc[per_seed["recipe"] == recipe, col].to_numpy(dtype=np.float64)
    return float(v.max() - v.min()) if len(v) > 1 else float("nan")


def subset_resolution(
    clips: pd.DataFrame,
    recipes: list[str],
    sizes: tuple[int, ...] = (2, 4, 8, 16),
    margins_db: tuple[float, ...] = (1.0, 2.0),
    draws: int = 400,
    seed: int = BOOT_SEED,
) -> pd.DataFrame:
    """What a quality axis measured on ``k`` clips of one seed (one calibration, as a sweep runs it)
    resolves, against the whole study: for each ``k`` in ``sizes``, ``draws`` random draws of a seed
    and ``k`` of its clips; per draw, each recipe's SQNR on those clips. Rows (size, margin_db):
    ``pairs`` = recipe pairs whose whole-study SQNRs differ by at least the margin, ``p_all_ordered``
    = the fraction of draws that order every such pair as the whole study does, and the median and
    90th percentile of |SQNR on k clips - whole-study SQNR| over draws and recipes."""
    rng = np.random.default_rng(seed)
    seeds = sorted(clips["seed"].unique())
    full, per = {}, {}
    for r in recipes:
        c = clips[clips["recipe"] == r]
        full[r] = float(sqnr_db(c["ref_energy"].to_numpy()[None], c["err_energy"].to_numpy()[None]))
        per[r] = {s: c[c["seed"] == s].sort_values("clip")[["ref_energy", "err_energy"]].to_numpy() for s in seeds}
    n = min(len(v) for p in per.values() for v in p.values())
    rows = []
    for k in sizes:
        est = np.empty((draws, len(recipes)))
        for d in range(draws):
            s, idx = seeds[rng.integers(len(seeds))], rng.choice(n, k, replace=False)
            for j, r in enumerate(recipes):
                e = per[r][s][idx]  # [k, (signal, error)]
                est[d, j] = sqnr_db(e[None, :, 0], e[None, :, 1])
        err = np.abs(est - np.array([full[r] for r in recipes]))
        for m in margins_db:
            pairs = [
                (a, b)
                for a in range(len(recipes))
                for b in range(a + 1, len(recipes))
                if abs(full[recipes[a]] - full[recipes[b]]) >= m
            ]
            ordered = np.ones(draws, dtype=bool)
            for a, b in pairs:
                ordered &= np.sign(est[:, a] - est[:, b]) == np.sign(full[recipes[a]] - full[recipes[b]])
            rows.append(
                {
                    "clips": k,
                    "margin_db": m,
                    "pairs": len(pairs),
                    "p_all_ordered": float(ordered.mean()),
                    "abs_err_median_db": float(np.median(err)),
                    "abs_err_p90_db": float(np.percentile(err, 90)),
                }
            )
    return pd.DataFrame(rows)
