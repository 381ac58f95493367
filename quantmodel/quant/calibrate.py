"""Per-denoising-step calibration: run the float sampler on calibration prompts and record, for every
leaf op and every step, the activation ranges a static quantizer needs.

Static quantization fixes every activation scale ahead of time, so the scales can only be as good as
the statistics behind them. Diffusion activations drift with the timestep, which is why the statistics
are kept per step (time-step-wise and grouped recipes aggregate them later over their own step ranges).

Recorded per step (a max over all calibration prompts and both CFG branches, over the valid caption
tokens only: with a caption mask, the padding tokens' values in the caption embedder, the
cross-attention keys/values, scores, probabilities and ``av`` operands are left out, since the model
never attends to them and a static scale stretched by them would waste resolution on real tokens):
- every leaf module: ``in0`` / ``in1`` (abs-max of its first / second tensor input), ``out`` (abs-max
  of its output);
- every ``nn.Linear``: ``in_ch`` [k] (per-input-channel abs-max, for SmoothQuant) and ``out_ch`` [n]
  (per-output-channel abs-max, for the requantized output's scale after folding factors into rows).
- every ``nn.Linear`` also, for the range estimators of ``quantmodel.quant.estimators``: ``in_pos`` /
  ``in_neg`` (max of x / of -x, floored at 0: the signed range an asymmetric quantizer covers),
  ``in_ch_pos`` / ``in_ch_neg`` [k] (the same per input channel), and per calibration batch, in
  order: ``in_ch_pos_b`` / ``in_ch_neg_b`` [batches, k] (each batch's signed range per channel, for
  EMA), ``in_ch_bm``
  [batches, k] (each batch's mean over samples of the per-sample channel abs-max: ViDiT-Q's
  ``momentum_act_max`` statistic) and ``in_rows`` [batches * ROWS_PER_BATCH, k] (evenly spaced input
  rows, for percentile and MSE estimators and the alpha search). Padding rows of a masked caption
  are zeros there.

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

from quantmodel.model.captions import check_mask, load_text_features, prefix_mask
from quantmodel.model.layers import Add, GatedAdd, MatMul, Modulate, Softmax
from quantmodel.model.samplers import sampler_for
from quantmodel.model.stdit import STDiT
from workloads.errors import ConfigError
from workloads.io import atomic_path
from workloads.presets import Workload

STATS_FORMAT = "stdit-calib-v1"
ROWS_PER_BATCH = 32  # input rows of each linear kept per calibration batch and step (in_rows)
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
def calibration_inputs(
    model: STDiT,
    num_prompts: int,
    seed: int = 0,
    text_features: str | Path | None = None,
    text_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y [n, 1, L, Ct], caption mask [n, L] or None): real T5 features (and their ``mask``, if the
    file has one) from a .pt/.safetensors file, else seeded randn. ``text_tokens`` masks all but the
    first that many tokens of every prompt (a short prompt padded to L, as T5 gives)."""
    cfg = model.cfg
    shape = (cfg.model_max_length, cfg.caption_channels)
    if text_features is None:
        g = torch.Generator().manual_seed(seed)
        y, mask = torch.randn(num_prompts, 1, *shape, generator=g), None
    else:
        y, mask = load_text_features(text_features, *shape)
        y = y[:num_prompts]
        mask = None if mask is None else mask[:num_prompts]
    if text_tokens is not None:
        valid = prefix_mask(y.shape[0], shape[0], text_tokens)
        mask = valid if mask is None else mask & valid
        check_mask(mask, y.shape[0], shape[0], field="text_tokens")
    return y, mask


def calibration_prompts(
    model: STDiT, num_prompts: int, seed: int = 0, text_features: str | Path | None = None
) -> torch.Tensor:
    """Text features [n, 1, L, Ct] of :func:`calibration_inputs` (without the mask)."""
    return calibration_inputs(model, num_prompts, seed, text_features)[0]


def describe_mask(mask: torch.Tensor | None) -> str:
    """For the stats header: which caption tokens calibration saw."""
    if mask is None:
        return "all tokens"
    counts = mask.sum(dim=1).tolist()
    return f"valid tokens per prompt {min(counts)}-{max(counts)} of {mask.shape[1]}"


# ---- recording ----------------------------------------------------------------------------------
def text_token_dims(name: str) -> dict[str, int]:
    """Which dim of an op's first input (``in0``), second input (``in1``) and output (``out``) runs
    over the caption tokens (the batch is dim 0 of each); {} for ops that never see them."""
    if name.startswith("y_embedder."):  # the caption MLP on [B, 1, L, C]
        return {"in0": 2, "out": 2}
    if name.endswith(".cross_attn.kv_linear"):  # [B, L, C] -> [B, L, 2C]
        return {"in0": 1, "out": 1}
    if name.endswith(".cross_attn.qk"):  # q [B, H, N, D] x k^T [B, H, D, L] -> [B, H, N, L]
        return {"in1": 3, "out": 3}
    if name.endswith(".cross_attn.softmax"):  # [B, H, N, L]
        return {"in0": 3, "out": 3}
    if name.endswith(".cross_attn.av"):  # p [B, H, N, L] x v [B, H, L, D]
        return {"in0": 3, "in1": 2}
    return {}


class StatsRecorder:
    """Forward hooks on every leaf op that keep per-step running abs-maxima. ``step`` and
    ``text_mask`` (the caption mask [B, L] of the model batch, None = every token valid) are set by
    the caller before each forward (the sampler's model_fn gets them)."""

    def __init__(self, model: STDiT, num_steps: int):
        self.model = model
        self.num_steps = num_steps
        self.step = 0
        self.text_mask: torch.Tensor | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        self._seq: dict[str, list[list[torch.Tensor]]] = {}  # per-batch records: key -> [step][batch]
        self._hooks = []

    def _valid(self, t: torch.Tensor, dims: dict[str, int], slot: str) -> torch.Tensor:
        """``t`` with the padding tokens' entries zeroed (neutral for an abs-max)."""
        d = dims.get(slot)
        if d is None or self.text_mask is None:
            return t
        shape = [1] * t.dim()
        shape[0], shape[d] = self.text_mask.shape
        return torch.where(self.text_mask.to(t.device).view(shape), t, torch.zeros((), dtype=t.dtype))

    def _update(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().float().cpu()
        cur = self.tensors.get(key)
        if cur is None:
            cur = torch.zeros(self.num_steps, *value.shape)
            self.tensors[key] = cur
        cur[self.step] = torch.maximum(cur[self.step], value)

    def _append(self, key: str, value: torch.Tensor) -> None:
        seq = self._seq.setdefault(key, [[] for _ in range(self.num_steps)])
        seq[self.step].append(value.detach().float().cpu())

    def _linear_extra(self, name: str, x: torch.Tensor) -> None:
        """The estimators' records of a linear's input x [..., k] (module doc)."""
        k = x.shape[-1]
        rows = x.reshape(-1, k).float()
        pos, neg = rows.amax(dim=0).clamp(min=0), (-rows).amax(dim=0).clamp(min=0)  # [k]
        self._update(f"{name}:in_pos", pos.amax())
        self._update(f"{name}:in_neg", neg.amax())
        self._update(f"{name}:in_ch_pos", pos)
        self._update(f"{name}:in_ch_neg", neg)
        self._append(f"{name}:in_ch_pos_b", pos)
        self._append(f"{name}:in_ch_neg_b", neg)
        per_sample = x.abs().amax(dim=-2) if x.dim() > 1 else x.abs()  # [..., k]: max over tokens
        self._append(f"{name}:in_ch_bm", per_sample.reshape(-1, k).float().mean(dim=0))
        idx = torch.linspace(0, rows.shape[0] - 1, min(ROWS_PER_BATCH, rows.shape[0])).round().long()
        self._append(f"{name}:in_rows", rows[idx])

    def finish(self) -> dict[str, torch.Tensor]:
        """All records: the running maxima and the per-batch sequences stacked to [steps, batches, ...]
        (``in_rows``: [steps, batches * rows, k])."""
        out = dict(self.tensors)
        for key, per_step in self._seq.items():
            st = torch.stack([torch.stack(v) for v in per_step])
            out[key] = st.flatten(1, 2) if key.endswith(":in_rows") else st
        return out

    def _hook(self, name: str, mod: nn.Module, inputs: tuple, output) -> None:
        dims = text_token_dims(name)
        tens = [self._valid(t, dims, f"in{i}") for i, t in enumerate(t for t in inputs if isinstance(t, torch.Tensor))]
        for i, t in enumerate(tens[:2]):
            self._update(f"{name}:in{i}", t.abs().amax())
        if isinstance(output, torch.Tensor):
            output = self._valid(output, dims, "out")
            self._update(f"{name}:out", output.abs().amax())
        if isinstance(mod, nn.Linear):
            x = tens[0].reshape(-1, mod.in_features)
            self._update(f"{name}:in_ch", x.abs().amax(dim=0))
            self._update(f"{name}:out_ch", output.reshape(-1, mod.out_features).abs().amax(dim=0))
            self._linear_extra(name, tens[0])

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
    text_tokens: int | None = None,
    wrap_model_fn=None,
) -> CalibStats:
    """Run the workload's float sampler on ``num_prompts`` prompts and record per-step statistics
    (caption masks from the text-features file or ``text_tokens``; padding tokens left out).
    ``wrap_model_fn(model_fn) -> model_fn``: what evaluation wraps the model in (e.g. x0 clipping),
    so calibration sees the trajectory evaluation samples."""
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
        raise ConfigError("num_prompts", num_prompts, "a positive integer")
    cfg = model.cfg
    sampler = sampler_for(workload)
    ys, masks = calibration_inputs(model, num_prompts, seed, text_features, text_tokens)
    num_prompts = ys.shape[0]
    dev = next(model.parameters()).device
    rec = StatsRecorder(model, workload.num_steps)

    def model_fn(x, t, y, step, mask=None):
        rec.step, rec.text_mask = step, mask
        return model(x, t, y, mask)

    chunks = range(0, num_prompts, batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="calibrating", unit="batch", leave=False)
    with rec, torch.no_grad():
        for start in chunks:
            y = ys[start : start + batch_size].to(dev)
            mask = None if masks is None else masks[start : start + batch_size].to(dev)
            b = y.shape[0]
            g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + start)
            z = torch.randn(b, cfg.in_channels, *cfg.input_size, generator=g, device=dev)
            fn = model_fn if wrap_model_fn is None else wrap_model_fn(model_fn)
            sampler.sample(fn, z, y, model.null_caption(b).to(dev), g, mask=mask)
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
        "caption_mask": describe_mask(masks),
    }
    return CalibStats(meta=meta, tensors=rec.finish())
