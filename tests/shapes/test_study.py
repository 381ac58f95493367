"""The quantization study's hygiene (held-out calibration captions, calibration on the evaluation
trajectory, resumable per-clip files) and its statistics (paired hierarchical bootstrap)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from quantmodel.eval import quality
from quantmodel.quant.calibrate import calibrate
from shapes import dataset, intervals, study
from workloads.presets import get_workload


def test_calibration_captions_are_held_out_distinct_and_seeded():
    ev = dataset.captions(study.evaluation_labels(64))
    a = dataset.captions(study.calibration_labels(32, 5, ev))
    assert not set(a) & set(ev)
    assert len(set(a)) == 32
    assert a == dataset.captions(study.calibration_labels(32, 5, ev))
    assert a != dataset.captions(study.calibration_labels(32, 6, ev))
    with pytest.raises(ValueError, match="outside the evaluation set"):
        study.calibration_labels(384 - len(set(ev)) + 1, 0, ev)


def test_calibrate_runs_on_the_wrapped_trajectory():
    w = dataclasses.replace(get_workload("stdit-tiny"), num_steps=2)
    model = quality.load_model(w)
    calls = []

    def wrap(fn):
        def inner(x, t, y, step, **kw):
            calls.append(step)
            return 2.0 * fn(x, t, y, step, **kw)

        return inner

    plain = calibrate(model, w, num_prompts=1)
    wrapped = calibrate(model, w, num_prompts=1, wrap_model_fn=wrap)
    assert calls == [0, 1]
    # step 0 sees the same noise either way; step 1's input follows the wrapped model's output
    key = "blocks.0.attn.qkv:in0"
    assert torch.equal(plain.tensors[key][0], wrapped.tensors[key][0])
    assert not torch.equal(plain.tensors[key][1], wrapped.tensors[key][1])


def _clips(err_scale: dict[str, float], seeds=(0, 1, 2), n=8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 2, size=(len(seeds), n))
    err = rng.uniform(0.01, 0.02, size=(len(seeds), n))
    rows = []
    for r, k in err_scale.items():
        for i, s in enumerate(seeds):
            for c in range(n):
                hit = int((c + i) % 3 != 0)
                rows.append(
                    dict(recipe=r, seed=s, clip=c, ref_energy=ref[i, c], err_energy=k * err[i, c], psnr_db=20.0)
                    | {f"acc_{a}": hit for a in intervals.ATTRS}
                )
    return pd.DataFrame(rows)


def test_paired_difference_is_exact_when_errors_scale():
    # b's error energy is 10x a's on every clip: a - b is +10 dB on every replicate
    clips = _clips({"a": 1.0, "b": 10.0})
    d = intervals.paired_difference(clips, "a", "b", "sqnr_db")
    assert d["estimate"] == pytest.approx(10.0, abs=1e-9)
    assert d["lo"] == pytest.approx(10.0, abs=1e-9) and d["hi"] == pytest.approx(10.0, abs=1e-9)
    assert d["excludes_zero"]
    same = intervals.paired_difference(clips, "a", "a", "acc_mean")
    assert (same["lo"], same["hi"], same["excludes_zero"]) == (0.0, 0.0, False)


def test_recipe_intervals_bracket_the_estimate_and_are_reproducible():
    clips = _clips({"a": 1.0})
    ci = intervals.recipe_intervals(clips)
    assert ci.equals(intervals.recipe_intervals(clips))
    sq = ci[ci["metric"] == "sqnr_db"].iloc[0]
    want = 10 * np.log10(clips["ref_energy"].sum() / clips["err_energy"].sum())
    assert sq["estimate"] == pytest.approx(want, rel=1e-12)
    assert sq["lo"] < sq["estimate"] < sq["hi"]
    acc = ci[ci["metric"] == "acc_mean"].iloc[0]
    assert acc["estimate"] == pytest.approx(2 / 3, abs=0.05) and acc["seed_min"] <= acc["seed_max"]


def test_clip_sqnr_intervals_one_seed():
    """The sweep's interval: over the clips of one calibration, paired between rows."""
    rng = np.random.default_rng(3)
    sig = np.tile(rng.uniform(1e3, 5e4, 4), (3, 1))  # [3 recipes, 4 clips], the same float clips
    err = sig * np.array([[1e-3], [1e-2], [1e-2]])  # rows 0, 1: every clip at 30 / 20 dB exactly
    err[2] *= rng.uniform(0.5, 2.0, 4)  # row 2: clips of different quality
    est, lo, hi = intervals.clip_sqnr_intervals(sig, err)
    np.testing.assert_allclose(est, 10 * np.log10(sig.sum(1) / err.sum(1)), rtol=1e-12)
    np.testing.assert_allclose([est[0], lo[0], hi[0]], [30.0, 30.0, 30.0], atol=1e-9)  # no spread, no width
    assert lo[2] < est[2] < hi[2]
    again = intervals.clip_sqnr_intervals(sig, err)
    assert all(np.array_equal(x, y) for x, y in zip((est, lo, hi), again))  # seeded: bit for bit
    d = intervals.clip_sqnr_difference(sig[:2], err[:2])
    assert d["estimate"] == pytest.approx(10.0, abs=1e-9) and d["lo"] == pytest.approx(10.0, abs=1e-9)
    assert d["excludes_zero"]
    assert not intervals.clip_sqnr_difference(sig[[2, 2]], err[[2, 2]])["excludes_zero"]
    with pytest.raises(ValueError, match="recipes, clips"):
        intervals.clip_sqnr_intervals(sig[0], err[0])


def test_summary_tables_are_the_files_figures():
    """The at-a-glance tables (README, closing note) print what recipe_intervals and paired_difference
    compute from the files, scheme by bit width, with the float model's floors."""
    clips = _clips({"fp16": 0.0, "asq-w8a8": 1.0, "tsq-tsw-w8a8": 0.1})
    clips.loc[clips["recipe"] == "fp16", "psnr_db"] = np.inf  # the float model: no SQNR row
    rows = pd.DataFrame(
        [
            dict(recipe=r, seed=s, fd=fd + s, num_weight_sets=k, acc_mean=0.9)
            for r, fd, k in (("fp16", 100.0, 0), ("asq-w8a8", 120.0, 1), ("tsq-tsw-w8a8", 110.0, 25))
            for s in (0, 1, 2)
        ]
    )
    md = study.summary_tables(rows, clips)
    ci = intervals.recipe_intervals(clips).set_index(["recipe", "metric"])
    asq = ci.loc[("asq-w8a8", "sqnr_db")]
    assert f"| ASQ | {asq['estimate']:.1f} [{asq['lo']:.1f}, {asq['hi']:.1f}] | 1 |" in md
    assert "| TSQ+TSW (per-step scales and weights) |" in md and "| 25 |" in md
    assert "| naive static |" not in md  # schemes the files lack are left out
    d = intervals.paired_difference(clips, "tsq-tsw-w8a8", "asq-w8a8", "sqnr_db")
    assert d["estimate"] == pytest.approx(10.0, abs=1e-9)
    assert "| tsq-tsw - asq (TSQ+TSW over ASQ) | +10.00 [+10.00, +10.00]* |" in md
    assert "noise floor 2;" in md and "| ASQ | 121 [120, 122] |" in md  # FD: mean [min, max] over seeds


def test_subset_resolution_orders_separated_recipes_and_sees_spread():
    # b's error is 10x a's on every clip: every subset orders them, and the estimate on any subset
    # differs from the whole set's only by the clips' own spread (here at most a few dB)
    clips = _clips({"a": 1.0, "b": 10.0, "c": 10.5})
    res = intervals.subset_resolution(clips, ["a", "b", "c"], sizes=(2, 8), margins_db=(1.0,), draws=50)
    assert list(res["clips"]) == [2, 8] and (res["pairs"] == 2).all()  # a-b and a-c; b-c is 0.2 dB apart
    assert (res["p_all_ordered"] == 1.0).all()
    assert res["abs_err_median_db"].iloc[1] < res["abs_err_median_db"].iloc[0] < 3.0
    assert res.equals(intervals.subset_resolution(clips, ["a", "b", "c"], sizes=(2, 8), margins_db=(1.0,), draws=50))


def test_study_resumes_and_drops_unfinished_clip_rows(tmp_path):
    out = tmp_path / "q.csv"
    kw = dict(num_prompts=2, seeds=(0, 1), calib_prompts=1, num_steps=2)
    rows, clips = study.run_study(["fp16", "asq-w8a8"], out, **kw)
    assert sorted(zip(rows["recipe"], rows["seed"])) == [("asq-w8a8", 0), ("asq-w8a8", 1), ("fp16", 0), ("fp16", 1)]
    assert len(clips) == 8 and set(clips["clip"]) == {0, 1}
    asq = clips[clips["recipe"] == "asq-w8a8"]
    assert (asq["err_energy"] > 0).all()
    # a per-clip row whose (recipe, seed) never reached the summary is dropped and redone once
    extra = clips.iloc[:1].assign(recipe="static-w8a8")
    pd.concat([clips, extra]).to_csv(study.clips_path(out), index=False)
    rows2, clips2 = study.run_study(["fp16", "asq-w8a8", "static-w8a8"], out, **kw)
    assert len(rows2) == 6 and len(clips2) == 12
    assert rows2.iloc[:4].equals(rows)  # nothing already done was recomputed
    md = study.tables(rows2, clips2)
    assert "| asq - static | W8A8 |" in md and "Noise floor" in md


def test_readme_and_results_doc_print_the_shipped_files():
    """README's quantization tables and docs/quant_results.md's are the generators' output on the
    shipped result files, so a rerun of the study cannot leave a retyped figure behind."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = root / "results" / "quant_comparison.csv"
    rows, clips = pd.read_csv(out), pd.read_csv(study.clips_path(out))
    assert study.summary_tables(rows, clips) in (root / "README.md").read_text()
    doc = (root / "docs" / "quant_results.md").read_text().splitlines()
    missing = [ln for ln in study.tables(rows, clips).splitlines() if ln.strip() and ln not in doc]
    assert not missing, f"docs/quant_results.md lacks {missing[:3]} (python -m shapes.study --tables)"
