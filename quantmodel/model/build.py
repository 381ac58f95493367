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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls(cfg)
    return model.eval()
