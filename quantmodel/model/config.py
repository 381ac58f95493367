"""The STDiT configuration: one frozen record for both architectures (v1.0 ``stdit``, v1.2 ``stdit3``),
built from a workload preset."""

from __future__ import annotations

from dataclasses import dataclass

from workloads.presets import Workload


@dataclass(frozen=True)
class STDiTConfig:
    input_size: tuple[int, int, int]  # latent (T, H, W)
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 120
    pred_sigma: bool = True
    space_scale: float = 1.0
    time_scale: float = 1.0
    arch: str = "stdit"  # "stdit" (v1.0, stdit.py) or "stdit3" (v1.2, stdit3.py)
    temporal_pos: str = "attention"  # workloads.presets.TEMPORAL_POS: where the frame index enters
    fps: int = 24  # v1.2 conditions on the frame rate
    pixel_height: int = 512  # v1.2 scales its positional embedding by the pixel resolution
    pixel_width: int = 512

    @classmethod
    def from_workload(cls, w: Workload) -> STDiTConfig:
        m = w.model
        return cls(
            input_size=w.latent_size,
            in_channels=m.in_channels,
            patch_size=m.patch_size,
            hidden_size=m.hidden_size,
            depth=m.depth,
            num_heads=m.num_heads,
            mlp_ratio=m.mlp_ratio,
            caption_channels=m.caption_channels,
            model_max_length=m.model_max_length,
            pred_sigma=m.pred_sigma,
            space_scale=w.space_scale,
            time_scale=w.time_scale,
            arch=m.arch,
            temporal_pos=m.temporal_pos,
            fps=w.fps,
            pixel_height=w.height,
            pixel_width=w.width,
        )

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def num_temporal(self) -> int:
        return self.input_size[0] // self.patch_size[0]

    @property
    def num_spatial(self) -> int:
        return (self.input_size[1] // self.patch_size[1]) * (self.input_size[2] // self.patch_size[2])
