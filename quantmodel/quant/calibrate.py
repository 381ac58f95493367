"""Per-denoising-step calibration: run the float sampler on calibration prompts and record, for every
leaf op and every step, the activation ranges a static quantizer needs.

Static quantization fixes every activation scale ahead of time, so the scales can only be as good as
the statistics behind them. Diffusion activations drift with the timestep, which is why the statistics
are kept per step (time-step-wise and grouped recipes aggregate them later over their own step ranges).

Recorded per step (a max over all calibration prompts and both CFG branches):
- every leaf module: ``in0`` / ``in1`` (abs-max of its first / second tensor input), ``out`` (abs-max
  of its output);
- every ``nn.Linear``: ``in_ch`` [k] (per-input-channel abs-max, for SmoothQuant) and ``out_ch`` [n]
  (per-output-channel abs-max, for the requantized output's scale after folding factors into rows).

Stats are stored as one safetensors file (tensors ``"<layer>:<field>"`` of shape [steps, ...]) with a
JSON header (model config, weight fingerprint, workload, sampler, num_steps, prompts). Loading stats for
a different model or step count is a ``ConfigError``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from quantmodel.model.layers import Add, GatedAdd, MatMul, Modulate, Softmax
from quantmodel.model.samplers import sampler_for
from quantmodel.model.stdit import STDiT
from workloads.errors import ConfigError
from workloads.io import atomic_path
from workloads.presets import Workload

STATS_FORMAT = "stdit-calib-v1"
_HOOKED = (nn.Linear, nn.Conv3d, MatMul, Softmax, nn.LayerNorm, nn.GELU, nn.SiLU, Modulate, GatedAdd, Add)


def model_fingerprint(model: STDiT) -> str:
    """sha256 over parameter names, shapes and bytes: stats and artifacts are tied to one set of weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if name in ("pos_embed", "pos_embed_temporal"):
            continue
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def model_config_dict(model: STDiT) -> dict:
    d = asdict(model.cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class CalibStats:
    """Per-step activation statistics: ``tensors["<layer>:<field>"]`` has shape [num_steps, ...]."""

    meta: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.meta["num_steps"])

    def has(self, layer: str, fld: str) -> bool:
        return f"{layer}:{fld}" in self.tensors

    def get(self, layer: str, fld: str) -> torch.Tensor:
        key = f"{layer}:{fld}"
        if key not in self.tensors:
            raise ConfigError(
                "calibration stats",
                key,
                "a layer and field recorded during calibration (the stats may come from another model)",
            )
        return self.tensors[key]

    def layers(self) -> list[str]:
        return sorted({k.split(":")[0] for k in self.tensors})

    def check_matches(self, model: STDiT, num_steps: int) -> None:
        """Refuse stats recorded for another model (config or weights) or another step count."""
        cfg = model_config_dict(model)
        if self.meta.get("model_config") != cfg:
            diff = sorted(k for k in cfg if self.meta.get("model_config", {}).get(k) != cfg[k])
            raise ConfigError(
                "calibration stats",
                f"model config differs in {', '.join(diff) or 'fields'}",
                "stats calibrated on this model (run codesign calibrate for it)",
            )
        if self.meta.get("model_fingerprint") != model_fingerprint(model):
            raise ConfigError(
                "calibration stats",
                f"weights fingerprint {self.meta.get('model_fingerprint')} != {model_fingerprint(model)}",
                "stats calibrated on these weights (run codesign calibrate for them)",
            )
        if self.num_steps != num_steps:
            raise ConfigError(
                "calibration stats",
                f"num_steps {self.num_steps}",
                f"stats of the same step count as the workload ({num_steps})",
            )

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.contiguous().cpu() for k, v in self.tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": STATS_FORMAT, "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalibStats:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError("stats", str(path), "an existing stats file written by codesign calibrate")
        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if md.get("format") != STATS_FORMAT:
                raise ValueError("format")
            meta = json.loads(md["meta"])
            steps = int(meta["num_steps"])
            if any(t.shape[0] != steps for t in tensors.values()):
                raise ValueError("shape")
        except Exception:
            raise ConfigError(
                "stats", str(path), f"a readable {STATS_FORMAT} safetensors file (written by codesign calibrate)"
            ) from None
        return cls(meta=meta, tensors=tensors)


# ---- prompts ------------------------------------------------------------------------------------
def calibration_prompts(
    model: STDiT, num_prompts: int, seed: int = 0, text_features: str | Path | None = None
) -> torch.Tensor:
    """Text features [n, 1, L, Ct]: real T5 features from a .pt/.safetensors file, else seeded randn."""
    cfg = model.cfg
    shape = (cfg.model_max_length, cfg.caption_channels)
    if text_features is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(num_prompts, 1, *shape, generator=g)
    path = Path(text_features)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            d = load_file(str(path))
            y = d["y"] if "y" in d else next(iter(d.values()))
        else:
            y = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(y, dict):
                y = y["y"] if "y" in y else next(iter(y.values()))
    except Exception:
        raise ConfigError(
            "text_features", str(path), "a readable .pt or .safetensors file of T5 features [n, 1, L, Ct] (key 'y')"
        ) from None
    if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4):
        raise ConfigError("text_features", str(path), "a tensor [n, 1, L, Ct] or [n, L, Ct]")
    if y.dim() == 3:
        y = y[:, None]
    if tuple(y.shape[2:]) != shape or y.shape[1] != 1:
        raise ConfigError("text_features", tuple(y.shape), f"[n, 1, {shape[0]}, {shape[1]}] for this model")
    return y[:num_prompts].float()


# ---- recording ----------------------------------------------------------------------------------
class StatsRecorder:
    """Forward hooks on every leaf op that keep per-step running abs-maxima. ``step`` is set by the
    caller before each forward (the sampler's model_fn gets it)."""

    def __init__(self, model: STDiT, num_steps: int):
        self.model = model
        self.num_steps = num_steps
        self.step = 0
        self.tensors: dict[str, torch.Tensor] = {}
        self._hooks = []

    def _update(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().float().cpu()
        cur = self.tensors.get(key)
        if cur is None:
            cur = torch.zeros(self.num_steps, *value.shape)
            self.tensors[key] = cur
        cur[self.step] = torch.maximum(cur[self.step], value)

    def _hook(self, name: str, mod: nn.Module, inputs: tuple, output) -> None:
        tens = [t for t in inputs if isinstance(t, torch.Tensor)]
        for i, t in enumerate(tens[:2]):
            self._update(f"{name}:in{i}", t.abs().amax())
        if isinstance(output, torch.Tensor):
            self._update(f"{name}:out", output.abs().amax())
        if isinstance(mod, nn.Linear):
            x = tens[0].reshape(-1, mod.in_features)
            self._update(f"{name}:in_ch", x.abs().amax(dim=0))
            self._update(f"{name}:out_ch", output.reshape(-1, mod.out_features).abs().amax(dim=0))

    def __enter__(self) -> StatsRecorder:
        for name, mod in self.model.named_modules():
            if isinstance(mod, _HOOKED) and not list(mod.children()):
                self._hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: self._hook(name, m, i, o)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def calibrate(
    model: STDiT,
    workload: Workload,
    num_prompts: int = 4,
    seed: int = 0,
    text_features: str | Path | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> CalibStats:
    """Run the workload's float sampler on ``num_prompts`` prompts and record per-step statistics."""
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
        raise ConfigError("num_prompts", num_prompts, "a positive integer")
    cfg = model.cfg
    sampler = sampler_for(workload)
    ys = calibration_prompts(model, num_prompts, seed, text_features)
    num_prompts = ys.shape[0]
    dev = next(model.parameters()).device
    rec = StatsRecorder(model, workload.num_steps)

    def model_fn(x, t, y, step):
        rec.step = step
        return model(x, t, y)

    chunks = range(0, num_prompts, batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="calibrating", unit="batch", leave=False)
    with rec, torch.no_grad():
        for start in chunks:
            y = ys[start : start + batch_size].to(dev)
            b = y.shape[0]
            g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + start)
            z = torch.randn(b, cfg.in_channels, *cfg.input_size, generator=g, device=dev)
            sampler.sample(model_fn, z, y, model.null_caption(b).to(dev), g)
    meta = {
        "format": STATS_FORMAT,
        "workload": workload.name,
        "num_steps": workload.num_steps,
        "sampler": workload.sampler,
        "cfg_scale": workload.cfg_scale,
        "model_config": model_config_dict(model),
        "model_fingerprint": model_fingerprint(model),
        "num_prompts": num_prompts,
        "seed": seed,
        "text_features": str(text_features) if text_features else "random-normal",
    }
    return CalibStats(meta=meta, tensors=rec.tensors)
