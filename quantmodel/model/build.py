"""Build the STDiT of a configuration: v1.0 (``stdit.py``) or v1.2 (``stdit3.py``) by ``cfg.arch``."""

from __future__ import annotations

import torch
from torch import nn

from quantmodel.model.config import STDiTConfig
from quantmodel.model.stdit import STDiT
from quantmodel.model.stdit3 import STDiT3


def build_stdit(cfg: STDiTConfig, device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """A randomly initialised STDiT (v1.0) or STDiT3 (v1.2) of ``cfg`` (seeded), or a shape-only one
    on ``device='meta'``."""
    cls = STDiT3 if cfg.arch == "stdit3" else STDiT
    # initialised on the CPU and then moved: the same seed gives the same weights on every device
    # (a CUDA generator draws other numbers), so stats calibrated on a GPU fit the CPU model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("meta" if str(device) == "meta" else "cpu"):
            model = cls(cfg)
    return model.to(device).eval()
