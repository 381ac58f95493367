"""The trained shapes STDiT: load the shipped weights, encode prompts, generate clips.

Why a module of its own: the study, the metrics, the DSE layer and the tests all need the same three
things (model, caption encoder, a seeded sampling call that accepts any ``model_fn``), and the
float weights and the caption encoder must always be loaded together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.samplers import ModelFn, make_sampler
from quantmodel.model.stdit import STDiT
from shapes.captions import CaptionEncoder
from workloads.errors import ConfigError
from workloads.presets import Workload, get_workload

ASSETS = Path(__file__).with_name("assets")
WORKLOAD = "stdit-shapes"
MODEL_FILE = ASSETS / "stdit-shapes.safetensors"
CAPTION_FILE = ASSETS / "stdit-shapes-captions.safetensors"
RECOMPUTED = ("pos_embed", "pos_embed_temporal")  # fixed sin-cos buffers, not stored


def shapes_workload() -> Workload:
    return get_workload(WORKLOAD)


def init_zero(model: STDiT) -> None:
    """OpenSora v1.0's init also zeroes each block's cross-attention output and the final linear,
    so the untrained model starts as identity residuals predicting zero (training depends on it)."""
    with torch.no_grad():
        for block in model.blocks:
            block.cross_attn.proj.weight.zero_()
            block.cross_attn.proj.bias.zero_()
        model.final_layer.linear.weight.zero_()
        model.final_layer.linear.bias.zero_()


def _load(module: torch.nn.Module, path: Path, skip: tuple[str, ...] = ()) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError("weights", str(path), "an existing safetensors file (shapes/assets)")
    sd = load_file(str(path))
    own = {k: v for k, v in module.state_dict().items() if k not in skip}
    if set(sd) != set(own):
        raise ConfigError("weights keys", sorted(set(sd) ^ set(own))[:4], f"the keys of {path.name}")
    with torch.no_grad():
        for k, v in sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ConfigError(f"weights {k}", tuple(v.shape), str(tuple(own[k].shape)))
            own[k].copy_(v.to(own[k].dtype))


def load_shapes_model(
    device: str | torch.device = "cpu", model_path: Path | None = None, caption_path: Path | None = None
) -> tuple[STDiT, CaptionEncoder]:
    """The float32 STDiT and caption encoder with the shipped (float16-stored) weights, in eval mode."""
    w = shapes_workload()
    model = build_stdit(STDiTConfig.from_workload(w), device=device)
    _load(model, Path(model_path or MODEL_FILE), skip=RECOMPUTED)
    model.reset_pos_embed()
    enc = CaptionEncoder(w.model.caption_channels, w.model.model_max_length).to(device)
    _load(enc, Path(caption_path or CAPTION_FILE))
    return model.eval(), enc.eval()


@torch.no_grad()
def caption_features(encoder: CaptionEncoder, prompts: list[str]) -> torch.Tensor:
    """Text features ``[B, 1, L, Ct]`` of prompts: what calibration needs as ``text_features``
    (save as safetensors ``{"y": ...}``); random features would calibrate off-distribution."""
    return encoder.encode(prompts).float()


def float_model_fn(model: STDiT) -> ModelFn:
    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return model(x, t, y)

    return fn


def clip_denoised(model_fn: ModelFn, num_timesteps: int = 1000) -> ModelFn:
    """Wrap a model_fn so the x0 its eps implies is clipped to [-1, 1] (guided-diffusion's
    ``clip_denoised=True``, the standard for pixel-space models; OpenSora turns it off only because
    it samples latents). The sampler recovers x0 from eps, so returning the eps of the clipped x0
    is exactly clipping x0. The variance half of the output is passed through."""
    from quantmodel.model.samplers import linear_betas

    ac = torch.from_numpy(np.cumprod(1.0 - linear_betas(num_timesteps)))

    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        out = model_fn(x, t, y, step)
        c = x.shape[1]
        a = ac.to(x.device)[t.long()].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        x0 = ((x - (1 - a).sqrt() * out[:, :c]) / a.sqrt()).clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, out[:, c:]], dim=1)

    return fn


@torch.no_grad()
def generate(
    model: STDiT,
    encoder: CaptionEncoder,
    prompts: list[str],
    seed: int = 0,
    num_steps: int | None = None,
    cfg_scale: float | None = None,
    model_fn: ModelFn | None = None,
    clip: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Sample one clip per prompt -> ``[B, 3, T, H, W]`` in about [-1, 1].

    The initial noise and every sampler draw come from one CPU generator seeded with ``seed``, so
    the float model and any quantized ``model_fn`` start from the same noise (paired comparison).
    """
    w = shapes_workload()
    dev = next(model.parameters()).device
    sampler = make_sampler(w.sampler, num_steps or w.num_steps, w.cfg_scale if cfg_scale is None else cfg_scale)
    y = caption_features(encoder, prompts)  # [B, 1, L, Ct]
    b = len(prompts)
    g = torch.Generator(device=dev).manual_seed(seed)
    z = torch.randn((b, w.model.in_channels, *w.latent_size), generator=g, device=dev)
    fn = model_fn or float_model_fn(model)
    if clip:
        fn = clip_denoised(fn)
    return sampler.sample(fn, z, y, model.null_caption(b), g, progress=progress)


@torch.no_grad()
def caption_separation(model: STDiT, encoder: CaptionEncoder, projected: bool = True) -> dict[str, dict[str, float]]:
    """How far apart the words of each attribute are, as the model sees them.

    For each attribute, captions that differ only in that attribute's word are encoded; the
    feature at that word's slot (after the model's ``y_embedder.y_proj`` when ``projected``, else
    the encoder's output) gives ``cos_mean`` (mean pairwise cosine of the words) and ``norm``
    (mean feature norm). Why: words that y_proj maps to nearly one vector (cosine near 1) cannot
    steer cross-attention, whatever the sampler does (docs/shapes_model.md, diagnosis)."""
    from shapes import dataset
    from shapes.captions import ids_from_labels

    dev = next(model.parameters()).device
    slots = {"speed": 1, "colour": 2, "shape": 3, "direction": 5, "background": 7}  # caption()
    out = {}
    for attr, slot in slots.items():
        n = len(dataset.ATTRIBUTES[attr])
        labels = {k: torch.zeros(n, dtype=torch.long, device=dev) for k in dataset.ATTRIBUTES}
        labels[attr] = torch.arange(n, device=dev)
        y = encoder(ids_from_labels(labels))  # [n, 1, L, Ct]
        h = (model.y_embedder(y) if projected else y)[:, 0, slot].float()  # [n, C]
        hn = torch.nn.functional.normalize(h, dim=-1)
        cos = hn @ hn.T
        off = cos[~torch.eye(n, dtype=torch.bool, device=dev)]
        out[attr] = {"cos_mean": float(off.mean()), "norm": float(h.norm(dim=-1).mean())}
    return out
