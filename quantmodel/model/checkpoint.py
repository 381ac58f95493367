"""Loading and saving STDiT checkpoints in OpenSora's key layout.

Accepts real OpenSora files: ``.pth``/``.pt`` (a flat state dict, or one under ``ema``, ``model`` or
``state_dict``; read with ``weights_only=True``, never unpickling code) and ``.safetensors``. The
fixed sin-cos buffers ``pos_embed`` and ``pos_embed_temporal`` are recomputed from the config, not
trusted from the file. Every missing, unexpected and wrongly shaped key is named in one error, all
kinds together (block indices folded into ranges so the line stays readable).
"""

from __future__ import annotations

from pathlib import Path

import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.stdit import STDiT
from workloads.errors import ConfigError
from workloads.io import atomic_path

RECOMPUTED = ("pos_embed", "pos_embed_temporal")
_NESTED_KEYS = ("ema", "model", "state_dict")


def _ranges(nums: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    nums, out, i = sorted(set(nums)), [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


def describe_keys(keys: list[str]) -> str:
    """Every key, with block indices folded: ``blocks.{0-27}.attn.qkv.weight`` stands for 28 keys, so a
    whole model's worth of bad keys still fits on one line without hiding any of them."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        parts = key.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        if len(digits) == 1:
            i = digits[0]
            groups.setdefault(".".join(parts[:i] + ["{}"] + parts[i + 1 :]), []).append(int(parts[i]))
        else:
            groups.setdefault(key, [])
    return ", ".join(
        t
        if not nums
        else (t.replace("{}", str(nums[0])) if len(nums) == 1 else t.replace("{}", "{" + _ranges(nums) + "}"))
        for t, nums in sorted(groups.items())
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint", str(path), "an existing .pth, .pt or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            sd = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError("checkpoint", str(path), "a file ending in .pth, .pt or .safetensors")
    except ConfigError:
        raise
    except Exception as e:  # truncated or foreign file
        raise ConfigError(
            "checkpoint",
            str(path),
            f"a readable checkpoint ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]})",
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError("checkpoint", str(path), "a state dict of tensors (flat or under 'ema')")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def check_state_dict(model: STDiT, sd: dict[str, torch.Tensor]) -> None:
    """Raise one ConfigError naming every missing, unexpected and wrongly shaped key together (a
    missing key does not hide a wrong shape elsewhere)."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in RECOMPUTED}
    given = {k: v for k, v in sd.items() if k not in RECOMPUTED}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [k for k in sorted(set(given) & set(expected)) if tuple(given[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {describe_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {describe_keys(unexpected)}")
    if wrong:
        by_shapes: dict[tuple, list[str]] = {}  # keys folded per (file shape, model shape)
        for k in wrong:
            by_shapes.setdefault((tuple(given[k].shape), tuple(expected[k])), []).append(k)
        shapes = ", ".join(f"{describe_keys(ks)} {g} (model {e})" for (g, e), ks in sorted(by_shapes.items()))
        problems.append(f"{len(wrong)} wrong shapes: {shapes}")
    if problems:
        raise ConfigError("checkpoint", "; ".join(problems), "exactly the parameters and shapes of the model config")


def load_checkpoint(path: str | Path, cfg: STDiTConfig, device: str = "cpu") -> STDiT:
    """A float32 STDiT of ``cfg`` with the checkpoint's weights (pos-embed buffers recomputed)."""
    sd = read_state_dict(path)
    model = build_stdit(cfg, device=device)
    check_state_dict(model, sd)
    own = model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if k not in RECOMPUTED:
                own[k].copy_(v.to(own[k].dtype))
    model.reset_pos_embed()
    return model.eval()


def save_checkpoint(model: STDiT, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write OpenSora's key layout (.safetensors or .pth), atomically (``workloads.io``)."""
    path = Path(path)
    sd = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
        if k not in RECOMPUTED
    }
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise ConfigError("checkpoint", str(path), "a file ending in .pth, .pt or .safetensors")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp))
        else:
            torch.save(sd, tmp)
    return path
