"""The sweep's quality axis on the trained small workload: real captions in, video metrics out,
calibration captions held out from evaluation, x0 clipped as the study samples."""

import dataclasses
import math

import torch

from quantmodel.eval import quality
from quantmodel.quant.calibrate import calibrate
from shapes import dataset, study, trained
from workloads.presets import get_workload


def _shapes(steps: int = 2):
    w = dataclasses.replace(get_workload("stdit-shapes"), num_steps=steps)
    return w, quality.load_model(w)


def test_shapes_quality_row_has_video_metrics_and_uses_real_captions():
    w, model = _shapes()
    z, y = quality.eval_inputs(model, 3, seed=5, workload=w)
    labels, y_captions = quality.trained_prompts(w, 3, 5)
    assert torch.equal(y, y_captions) and z.shape[0] == 3
    pool = set(dataset.captions(study.evaluation_labels(study.EVAL_POOL)))
    assert set(dataset.captions(labels)) <= pool  # evaluation prompts: the study's evaluation set
    row = quality.evaluate_recipe(model, w, "fp16", num_samples=3, seed=5)
    assert 0.0 <= row["semantic_accuracy"] <= 1.0
    assert row["frechet_distance"] > 0 and row["frechet_distance_real_floor"] > 0
    assert {"semantic_accuracy_all", "temporal_jerk_px"} <= set(row)
    # other workloads keep the plain fidelity row
    assert quality.video_metrics(get_workload("stdit-tiny"), z, z, 3) == {}


def test_calibration_captions_never_evaluation_captions():
    evaluated = set()
    for n, seed in ((4, quality.EVAL_SEED), (64, 0), (130, 7)):
        labels, y = trained.prompts(n, seed)
        assert y.shape[0] == n
        evaluated |= set(dataset.captions(labels))
    assert len(evaluated) == len(set(dataset.captions(study.evaluation_labels(study.EVAL_POOL))))
    for n, seed in ((8, 101), (8, 102), (200, 0)):
        cal = dataset.captions(trained.calibration_prompts(n, seed)[0])
        assert len(set(cal)) == n and not set(cal) & evaluated


def test_trained_calibration_runs_on_the_held_out_captions(tmp_path):
    """get_stats on stdit-shapes calibrates on calibration_prompts(n, seed + 101), nothing else."""
    from safetensors.torch import save_file

    w, model = _shapes()
    got = quality.get_stats(model, w, num_prompts=2, seed=3)
    path = str(tmp_path / "y.safetensors")
    save_file({"y": trained.calibration_prompts(2, 3 + 101)[1].contiguous()}, path)
    want = calibrate(model, w, num_prompts=2, seed=3, text_features=path)
    assert got.tensors.keys() == want.tensors.keys()
    assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors)


def test_sweep_evaluation_clips_x0_and_compiled_emulator_equals_eager():
    """The final samples lie in the pixel range (x0 clipped: unclipped, 2 steps reach |x| ~ 8), and the
    sweep's compiled emulator (layer_sqnr off) gives the eager emulator's SQNR exactly."""
    w, model = _shapes()
    z, y = quality.eval_inputs(model, 2, workload=w)
    ref = quality.sample(quality.float_model_fn(model), model, w, z, y)
    assert float(ref.abs().max()) <= 1.0
    stats = quality.get_stats(model, w, num_prompts=2)
    kw = {"stats": stats, "backend": "emulator", "num_samples": 2, "reference_sample": ref}
    fast = quality.evaluate_recipe(model, w, "asq-w8a8", layer_sqnr=False, **kw)
    eager = quality.evaluate_recipe(model, w, "asq-w8a8", **kw)
    assert fast["sqnr_db"] == eager["sqnr_db"] and math.isfinite(fast["sqnr_db"])
    assert math.isnan(fast["worst_layer_sqnr_db"]) and fast["worst_layer"] == ""
    assert eager["worst_layer"] and math.isfinite(eager["worst_layer_sqnr_db"])
