"""The sweep's quality axis on the trained small workload: real captions in, video metrics out."""

import dataclasses

import torch

from quantmodel.eval import quality
from shapes import dataset
from workloads.presets import get_workload


def test_shapes_quality_row_has_video_metrics_and_uses_real_captions():
    w = dataclasses.replace(get_workload("stdit-shapes"), num_steps=2)
    model = quality.load_model(w)
    z, y = quality.eval_inputs(model, 3, seed=5, workload=w)
    labels, y_captions = quality.trained_prompts(w, 3, 5)
    assert torch.equal(y, y_captions) and z.shape[0] == 3
    assert dataset.captions(labels) == dataset.captions(dataset.prompt_set(3, seed=5))
    row = quality.evaluate_recipe(model, w, "fp16", num_samples=3, seed=5)
    assert 0.0 <= row["semantic_accuracy"] <= 1.0
    assert row["frechet_distance"] > 0 and row["frechet_distance_real_floor"] > 0
    assert {"semantic_accuracy_all", "temporal_jerk_px"} <= set(row)
    # other workloads keep the plain fidelity row
    assert quality.video_metrics(get_workload("stdit-tiny"), z, z, 3) == {}
