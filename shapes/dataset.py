"""Procedural text-to-video data: one coloured shape moving over a plain background.

Why: quantization quality must be measured on a model that was trained to do something checkable.
Each clip is drawn from five small vocabularies (shape, colour, direction, speed, background), so a
generated clip can be judged against its prompt attribute by attribute. Clips are rendered on the fly
in torch (vectorised over the batch, on any device) from a seeded generator: the same seed gives the
same clips bit for bit on one device, and no files are needed.

Video layout: ``[B, 3, T, H, W]`` float32 in ``[-1, 1]`` (pixel space, what the STDiT denoises).
Shapes have soft (anti-aliased) edges and move with sub-pixel steps, so motion is smooth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slow", "fast")
BACKGROUNDS = ("black", "gray", "white")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "direction": DIRECTIONS, "speed": SPEEDS, "background": BACKGROUNDS}

_COLOUR_RGB = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 1.0), "yellow": (0.95, 0.85, 0.1)}
_BACKGROUND_RGB = {"black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0)}
# unit step per frame for each direction, (dx, dy) with y pointing down the image
_DIRECTION_XY = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_SPEED_PX_PER_FRAME = {"slow": 0.5, "fast": 1.2}


@dataclass(frozen=True)
class ShapesConfig:
    """Clip geometry. The defaults are what the shipped model was trained on."""

    num_frames: int = 16
    height: int = 32
    width: int = 32
    radius_px: float = 5.0  # half the shape's extent
    radius_jitter_px: float = 0.75  # uniform +- jitter of the radius, per clip
    # uniform +- jitter of the path's midpoint around the frame centre, per axis (clipped to what
    # keeps the path inside the frame); None = anywhere the path fits. Why not anywhere: a free
    # position averages the shape and the motion out of E[clip | caption] (the words explain 0.9 %
    # (shape), 1.2 % (speed) and 9.6 % (direction) of the clips' variance through their conditional
    # mean; 4.5 %, 9.5 % and 46 % with a 1 px jitter: `python -m shapes.dataset`), so the caption
    # barely moves the high-noise denoising target, and a model trained on free positions learned
    # colour and background only (docs/shapes_model.md).
    position_jitter_px: float | None = 1.0

    def max_travel_px(self) -> float:
        return max(_SPEED_PX_PER_FRAME.values()) * (self.num_frames - 1)

    def __post_init__(self) -> None:
        from workloads.errors import ConfigError

        j = self.position_jitter_px
        if j is not None and (isinstance(j, bool) or not isinstance(j, (int, float)) or j < 0):
            raise ConfigError("shapes.position_jitter_px", j, "a number >= 0, or null (anywhere)")
        for f in ("num_frames", "height", "width"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ConfigError(f"shapes.{f}", v, "an integer >= 2")
        span = 2 * (self.radius_px + self.radius_jitter_px) + self.max_travel_px() + 1
        if span > min(self.height, self.width):
            raise ConfigError(
                "shapes.radius_px", self.radius_px, f"a radius whose fastest path ({span:.1f} px) fits the frame"
            )


def label_names(labels: dict[str, torch.Tensor], i: int) -> dict[str, str]:
    """Words of clip ``i``'s labels."""
    return {k: ATTRIBUTES[k][int(labels[k][i])] for k in ATTRIBUTES}


def caption(names: dict[str, str]) -> str:
    """The caption template: every attribute appears once, always in the same slot."""
    return f"a {names['speed']} {names['colour']} {names['shape']} moving {names['direction']} on {names['background']}"


def captions(labels: dict[str, torch.Tensor]) -> list[str]:
    n = len(labels["shape"])
    return [caption(label_names(labels, i)) for i in range(n)]


def random_labels(n: int, generator: torch.Generator, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Uniform independent attributes, ``{name: long tensor [n]}``."""
    return {k: torch.randint(len(v), (n,), generator=generator, device=device) for k, v in ATTRIBUTES.items()}


def prompt_set(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed, balanced prompt set for evaluation: attribute values cycle (each value of each
    attribute appears as evenly as ``n`` allows), combinations shuffled by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, vocab in ATTRIBUTES.items():
        vals = torch.arange(n) % len(vocab)
        out[k] = vals[torch.randperm(n, generator=g)]
    return out


def render(
    labels: dict[str, torch.Tensor], generator: torch.Generator, cfg: ShapesConfig = ShapesConfig()
) -> torch.Tensor:
    """Clips for given labels; start position and radius jitter drawn from ``generator``.

    Returns ``[B, 3, T, H, W]`` in [-1, 1] on the labels' device.
    """
    dev = labels["shape"].device
    b, t_len, h, w = len(labels["shape"]), cfg.num_frames, cfg.height, cfg.width
    u = torch.rand(b, 3, generator=generator, device=dev)  # radius, along-path, across-path
    radius = cfg.radius_px + (2 * u[:, 0] - 1) * cfg.radius_jitter_px  # [B]
    dir_xy = torch.tensor([_DIRECTION_XY[d] for d in DIRECTIONS], device=dev)[labels["direction"]]
    speed = torch.tensor([_SPEED_PX_PER_FRAME[s] for s in SPEEDS], device=dev)[labels["speed"]]
    travel = speed * (t_len - 1)  # [B] px
    margin = cfg.radius_px + cfg.radius_jitter_px + 0.5
    # along the path: start so the whole trajectory stays inside the frame
    size = torch.where(dir_xy[:, 0] != 0, torch.tensor(float(w), device=dev), torch.tensor(float(h), device=dev))
    lo, hi = margin, size - 1 - margin - travel
    size_across = torch.where(dir_xy[:, 0] != 0, torch.tensor(float(h), device=dev), torch.tensor(float(w), device=dev))
    lo_x, hi_x = torch.full_like(size_across, margin), size_across - 1 - margin
    if cfg.position_jitter_px is not None:  # shrink both ranges to +- jitter around their middle
        lo, hi = _around_middle(lo, hi, cfg.position_jitter_px)
        lo_x, hi_x = _around_middle(lo_x, hi_x, cfg.position_jitter_px)
    along = lo + u[:, 1] * (hi - lo)  # [B] start coordinate measured along +direction
    across = lo_x + u[:, 2] * (hi_x - lo_x)
    sign = dir_xy.sum(dim=1)  # +1 right/down, -1 left/up
    start_along = torch.where(sign > 0, along, size - 1 - along)
    horiz = dir_xy[:, 0] != 0
    x0 = torch.where(horiz, start_along, across)
    y0 = torch.where(horiz, across, start_along)
    steps = torch.arange(t_len, device=dev, dtype=torch.float32)  # [T]
    cx = x0[:, None] + dir_xy[:, 0:1] * speed[:, None] * steps  # [B, T]
    cy = y0[:, None] + dir_xy[:, 1:2] * speed[:, None] * steps
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w)
    dx = xs - cx[:, :, None, None]  # [B, T, 1, W]
    dy = ys - cy[:, :, None, None]  # [B, T, H, 1]
    r = radius.view(b, 1, 1, 1)
    adx, ady = dx.abs(), dy.abs()
    # approximate signed distances (px, negative inside) of each shape
    d_circle = torch.sqrt(dx**2 + dy**2) - r
    d_square = torch.maximum(adx, ady) - 0.85 * r
    d_diamond = (adx + ady - 1.15 * r) / 1.4142
    # upward triangle: apex at (0, -r), base from (-r, r*0.8) to (r, r*0.8)
    slope_n = 1.0 / (1.0 + 0.5**2) ** 0.5 / 1.0  # normalise the side distance
    d_tri = torch.maximum(dy - 0.8 * r, (adx - (dy + r) * 0.5 / 0.9) * slope_n * 1.0)
    d_tri = torch.maximum(d_tri, -r - dy)
    d_all = torch.stack(torch.broadcast_tensors(d_circle, d_square, d_tri, d_diamond), dim=0)
    d = d_all.gather(0, labels["shape"].view(1, b, 1, 1, 1).expand(1, b, t_len, h, w))[0]
    mask = (0.5 - d).clamp(0.0, 1.0)  # [B, T, H, W] soft coverage
    fg = torch.tensor([_COLOUR_RGB[c] for c in COLOURS], device=dev)[labels["colour"]]  # [B, 3]
    bg = torch.tensor([_BACKGROUND_RGB[c] for c in BACKGROUNDS], device=dev)[labels["background"]]
    m = mask[:, None]  # [B, 1, T, H, W]
    rgb = bg.view(b, 3, 1, 1, 1) * (1 - m) + fg.view(b, 3, 1, 1, 1) * m
    return rgb * 2 - 1


def _around_middle(lo: torch.Tensor, hi: torch.Tensor, jitter_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sub-range ``middle +- jitter_px`` of ``[lo, hi]`` (never wider than the range)."""
    mid, half = (lo + hi) / 2, ((hi - lo) / 2).clamp(max=jitter_px)
    return mid - half, mid + half


def sample_batch(
    n: int, generator: torch.Generator, cfg: ShapesConfig = ShapesConfig(), device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` random clips ``[n, 3, T, H, W]`` and their labels (generator on ``device``)."""
    labels = random_labels(n, generator, device)
    return render(labels, generator, cfg), labels


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255], same layout."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def caption_explained_variance(cfg: ShapesConfig = ShapesConfig(), n: int = 4000, seed: int = 0) -> dict[str, float]:
    """Share of the clips' pixel variance that each word explains through the conditional mean
    ``E[clip | word]`` (between-class variance / total variance, colour and background fixed).

    Why: at high noise an MSE-trained denoiser predicts about ``E[clip | caption]``; a word that
    hardly moves that mean gives the model little reason to read it (see ``position_jitter_px``)."""
    g = torch.Generator().manual_seed(seed)
    labels = random_labels(n, g)
    labels["colour"].zero_()
    labels["background"].zero_()
    x = render(labels, g, cfg)  # [n, 3, T, H, W]
    grand = x.mean(0)
    total = ((x - grand) ** 2).mean()
    out = {}
    for attr in ("shape", "direction", "speed"):
        means = torch.stack([x[labels[attr] == v].mean(0) for v in range(len(ATTRIBUTES[attr]))])
        out[attr] = float(((means - grand) ** 2).mean() / total)
    return out


if __name__ == "__main__":
    for jit in (None, 4.0, 2.0, 1.0, 0.0):
        got = caption_explained_variance(ShapesConfig(position_jitter_px=jit))
        print(f"position_jitter_px={jit}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))
