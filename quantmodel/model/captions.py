"""Caption masks: which of the L text tokens of a prompt are real.

A T5 encoder pads every prompt to ``model_max_length`` tokens (120 in OpenSora v1.0, 300 in v1.2) and
returns an attention mask beside the features; a short prompt is mostly padding. OpenSora drops the
padding from cross-attention (only the valid tokens are keys and values), for the null caption of
classifier-free guidance too, which reuses the prompt's mask. The model here takes the same mask as
``[B, L]`` bool (True = a real token); ``None`` means every token is real.

Text-feature files (``--text``): ``.safetensors`` or ``.pt`` with ``y`` [n, 1, L, Ct] (or [n, L, Ct])
and optionally ``mask`` [n, L] of 0/1 (T5's ``attention_mask``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.errors import ConfigError


def check_mask(mask: torch.Tensor | None, batch: int, tokens: int, field: str = "mask") -> torch.Tensor | None:
    """``mask`` as bool ``[batch, tokens]``, or a ConfigError naming what is wrong: values other than
    0/1, another shape, or a prompt without any valid token (its cross-attention would be empty)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != (batch, tokens):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ConfigError(field, shape, f"a caption mask of shape [{batch}, {tokens}]")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ConfigError(field, str(mask.dtype), "0/1 integers or bool (1 = a real caption token)")
        mask = mask != 0
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(field, f"no valid token in prompt(s) {empty[:4]}", "at least one real token per prompt")
    return mask


def prefix_mask(batch: int, tokens: int, valid: int) -> torch.Tensor:
    """``[batch, tokens]`` bool with the first ``valid`` tokens real, as T5 pads a prompt of that length."""
    if isinstance(valid, bool) or not isinstance(valid, int) or not 1 <= valid <= tokens:
        raise ConfigError("text_tokens", valid, f"an integer from 1 to {tokens} (the model's text tokens)")
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    mask[:, :valid] = True
    return mask


def cfg_mask(mask: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    """The mask of a guided batch (conditional prompts, then the null captions): the null caption uses
    its prompt's mask, as OpenSora repeats the mask over the doubled batch."""
    return None if mask is None or copies == 1 else torch.cat([mask] * copies)


def load_text_features(path: str | Path, tokens: int, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y [n, 1, L, Ct] float32, mask [n, L] bool or None) from a ``.safetensors`` / ``.pt`` file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            d = load_file(str(path))
        else:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(d, dict):
                d = {"y": d}
        y = d["y"] if "y" in d else next(iter(v for k, v in d.items() if k != "mask"))
        mask = d.get("mask")
    except Exception:
        raise ConfigError(
            "text_features", str(path), "a readable .pt or .safetensors file of T5 features [n, 1, L, Ct] (key 'y')"
        ) from None
    if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4):
        raise ConfigError("text_features", str(path), "a tensor [n, 1, L, Ct] or [n, L, Ct]")
    if y.dim() == 3:
        y = y[:, None]
    if tuple(y.shape[2:]) != (tokens, channels) or y.shape[1] != 1:
        raise ConfigError("text_features", tuple(y.shape), f"[n, 1, {tokens}, {channels}] for this model")
    return y.float(), check_mask(mask, y.shape[0], tokens, field=f"text_features {path.name} mask")


def packed_caption_fn(model_fn):
    """A ``model_fn(x, t, y, step, mask=None)`` from one that attends to every caption token it is
    given: each group of rows sharing one mask runs on its valid tokens only, the padding removed
    from ``y`` before the model sees it (OpenSora's packing of the valid tokens, ``y_lens``). Every
    op of the STDiT works on one sample's tokens at a time, and cross-attention to the kept tokens is
    masked attention exactly, so this gives masked attention to any runner, eager or compiled; with
    one prompt (a CFG pair shares its mask) it is a single call."""

    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int, mask: torch.Tensor | None = None):
        if mask is None:
            return model_fn(x, t, y, step)
        mask = check_mask(mask, x.shape[0], y.shape[2]).to(y.device)
        masks, group = torch.unique(mask, dim=0, return_inverse=True)
        if len(masks) == 1:
            return model_fn(x, t, y[:, :, masks[0]], step)
        out = None
        for g, keep in enumerate(masks):
            rows = (group == g).nonzero().flatten()
            part = model_fn(x[rows], t[rows], y[rows][:, :, keep], step)  # [rows, Cout, T, H, W]
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[rows] = part
        return out

    return fn
