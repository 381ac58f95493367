"""What the quality evaluation (``quantmodel.eval.quality``) asks of a trained workload, for
``stdit-shapes``: its float model, its prompts with their caption features, and the video metrics of
generated clips.

Why a module of its own: the workload preset names it (``trained: shapes.trained``), so
``quantmodel`` loads it by that name and never imports this package; the demo model stays a client
of ``quantmodel``.

Prompts follow the study's design (``shapes.study``): evaluation prompts come from the study's fixed
evaluation set, calibration captions from the captions outside it, so the two never share a caption,
whatever the numbers of prompts and seeds.
"""

from __future__ import annotations

import functools

import torch

from quantmodel.model.stdit import STDiT
from shapes import dataset, videometrics
from shapes.model import caption_features, load_shapes_model


def load_model(device: str | torch.device = "cpu") -> STDiT:
    """The shipped float model."""
    return load_shapes_model(device=device)[0]


@functools.lru_cache(maxsize=1)
def _encoder():
    return load_shapes_model("cpu")[1]


def _features(labels: dict) -> torch.Tensor:
    with torch.no_grad():
        return caption_features(_encoder(), dataset.captions(labels)).cpu()


def prompts(num_samples: int, seed: int) -> tuple[dict, torch.Tensor]:
    """(labels, caption features [n, 1, L, Ct]) of ``num_samples`` evaluation prompts: the study's
    evaluation set (``shapes.study.evaluation_labels``, 64 prompts) in the order ``seed`` shuffles it,
    repeated past 64 (repeated prompts get other noise)."""
    from shapes.study import EVAL_POOL, evaluation_labels

    pool = evaluation_labels(EVAL_POOL)
    order = torch.randperm(EVAL_POOL, generator=torch.Generator().manual_seed(seed))
    idx = order[torch.arange(num_samples) % EVAL_POOL]  # [n]
    labels = {k: v[idx] for k, v in pool.items()}
    return labels, _features(labels)


def calibration_prompts(num_prompts: int, seed: int) -> tuple[dict, torch.Tensor]:
    """(labels, caption features [n, 1, L, Ct]) of ``num_prompts`` distinct calibration captions drawn
    with ``seed`` from the captions outside the evaluation set (``shapes.study.calibration_labels``):
    held out from every evaluation :func:`prompts` draws."""
    from shapes.study import EVAL_POOL, calibration_labels, evaluation_labels

    labels = calibration_labels(num_prompts, seed, dataset.captions(evaluation_labels(EVAL_POOL)))
    return labels, _features(labels)


@functools.lru_cache(maxsize=1)
def _classifier():
    return videometrics.load_classifier()


def video_metrics(video: torch.Tensor, reference: torch.Tensor, labels: dict) -> dict:
    """Semantic accuracy (mean over attributes, and all five right), Frechet distance to real clips
    with its real-vs-real floor, and centroid jerk (temporal consistency) of ``video``."""
    res = videometrics.evaluate(video, labels, _classifier(), reference=reference)
    return {
        "semantic_accuracy": res["acc_mean"],
        "semantic_accuracy_all": res["acc_all"],
        "frechet_distance": res["fd"],
        "frechet_distance_real_floor": res["fd_real_floor"],
        "temporal_jerk_px": res["tc_jerk_px"],
    }
