"""What the quality evaluation (``quantmodel.eval.quality``) asks of a trained workload, for
``stdit-shapes``: its float model, its prompts with their caption features, and the video metrics of
generated clips.

Why a module of its own: the workload preset names it (``trained: shapes.trained``), so
``quantmodel`` loads it by that name and never imports this package; the demo model stays a client
of ``quantmodel``.
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


def prompts(num_samples: int, seed: int) -> tuple[dict, torch.Tensor]:
    """(labels, caption features [n, 1, L, Ct]) of the prompt set drawn with ``seed``."""
    labels = dataset.prompt_set(num_samples, seed=seed)
    with torch.no_grad():
        y = caption_features(_encoder(), dataset.captions(labels)).cpu()
    return labels, y


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
