"""The model and samplers against an independent float64 reference of what OpenSora computes where
its code is structured differently from ours (hpcaitech/Open-Sora v1.0.0 and v1.2.0):

- masked cross-attention: the valid caption tokens of every prompt are packed into one sequence and
  each video attends only to its own segment (``y_lens`` and a block-diagonal mask); the null caption
  of guidance reuses the prompt's mask;
- v1.0.0's ``forward_with_cfg``: only eps channels 0-2 are guided; channel 3 and the variance come
  unguided from each branch (v1.2's rectified flow guides every velocity channel);
- v1.2's ``PositionEmbedding2D``: the column (width) coordinate's sin-cos first, then the row's;
- attention softmax computed in float32 whatever the activation dtype.

The reference is written here in numpy float64 from those semantics, not from the model's code; the
model's cross-attention is swapped for it to build the reference model, and the IDDPM / rectified-flow
steps are re-derived from the diffusion formulas. Tolerances are float64 round-off.
"""

import math

import numpy as np
import pytest
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.samplers import IDDPM, RFlow
from workloads.presets import workload_from_dict

RTOL = 1e-12  # float64 round-off, relative to the output's scale


# ---- the reference ------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _linear(lin: torch.nn.Linear, a: np.ndarray) -> np.ndarray:
    return a @ _np(lin.weight).T + _np(lin.bias)


def ref_cross_attention(mod, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """OpenSora's MultiHeadCrossAttention with ``y_lens``: x [B, N, C], y [B, L, C], mask [B, L] 0/1.
    Valid tokens of all prompts are packed in batch order; video b attends to segment b only."""
    b, n, c = x.shape
    heads = mod.num_heads
    d = c // heads
    yy = _np(y)
    keep = np.ones(yy.shape[:2], bool) if mask is None else _np(mask) != 0
    lens = keep.sum(axis=1)
    packed = np.concatenate([yy[i][keep[i]] for i in range(b)])  # [sum(lens), C]
    q = _linear(mod.q_linear, _np(x).reshape(b * n, c)).reshape(b * n, heads, d)
    kv = _linear(mod.kv_linear, packed).reshape(-1, 2, heads, d)
    out = np.zeros((b * n, heads, d))
    starts = np.concatenate([[0], np.cumsum(lens)])
    for i in range(b):
        rows, seg = slice(i * n, (i + 1) * n), slice(starts[i], starts[i + 1])
        for h in range(heads):
            s = (q[rows, h] * d**-0.5) @ kv[seg, 0, h].T  # [N, len_i]
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[rows, h] = (p / p.sum(axis=1, keepdims=True)) @ kv[seg, 1, h]
    return torch.from_numpy(_linear(mod.proj, out.reshape(b, n, c)))


def with_reference_cross_attention(model):
    """The model with every cross-attention replaced by the reference (the rest is shared)."""
    for name, mod in model.named_modules():
        if name.endswith("cross_attn"):
            mod.forward = lambda x, y, mask=None, mod=mod: ref_cross_attention(mod, x, y, mask)
    return model


def ref_pos_embed_2d(dim: int, h: int, w: int, scale: float, base_size: int) -> np.ndarray:
    """v1.2 PositionEmbedding2D [h*w, dim]: token r*w + c gets [sin, cos](col) then [sin, cos](row)."""
    half = dim // 2
    inv_freq = 1.0 / 10000 ** (np.arange(0, half, 2) / half)
    rows, cols = np.divmod(np.arange(h * w), w)

    def sincos(pos):
        a = np.outer(pos, inv_freq)
        return np.concatenate([np.sin(a), np.cos(a)], axis=1)

    return np.concatenate([sincos(cols / scale * base_size / w), sincos(rows / scale * base_size / h)], axis=1)


def ref_forward_with_cfg(out: np.ndarray, b: int, scale: float) -> np.ndarray:
    """v1.0.0: rows [cond; uncond]; eps channels 0-2 guided and copied to both halves, the rest kept."""
    guided = out[b:, :3] + scale * (out[:b, :3] - out[b:, :3])
    res = out.copy()
    res[:, :3] = np.concatenate([guided, guided])
    return res


class RefIDDPM:
    """Respaced IDDPM with learned-range variance in numpy float64, from the DDPM/IDDPM formulas."""

    def __init__(self, timestep_map: list[int]):
        full = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
        self.ac = full[timestep_map]  # alphas_cumprod at the kept steps
        self.ac_prev = np.append(1.0, self.ac[:-1])
        self.betas = 1.0 - self.ac / self.ac_prev
        var = self.betas * (1.0 - self.ac_prev) / (1.0 - self.ac)
        self.log_var_min = np.log(np.append(var[1], var[1:]))

    def step(self, x: np.ndarray, out: np.ndarray, i: int, noise: np.ndarray) -> np.ndarray:
        c = x.shape[1]
        eps, v = out[:, :c], out[:, c:]
        frac = (v + 1) / 2
        log_var = frac * np.log(self.betas[i]) + (1 - frac) * self.log_var_min[i]
        x0 = (x - math.sqrt(1 - self.ac[i]) * eps) / math.sqrt(self.ac[i])
        mean = (
            self.betas[i] * math.sqrt(self.ac_prev[i]) / (1 - self.ac[i]) * x0
            + (1 - self.ac_prev[i]) * math.sqrt(1 - self.betas[i]) / (1 - self.ac[i]) * x
        )
        return mean + (i != 0) * np.exp(0.5 * log_var) * noise


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---- fixtures -----------------------------------------------------------------------------------
V10 = {
    "name": "oracle-v10",
    "model": {"depth": 2, "hidden_size": 32, "num_heads": 2, "caption_channels": 16, "model_max_length": 6},
    "num_frames": 3,
    "height": 32,
    "width": 48,
    "num_steps": 4,
    "cfg_scale": 4.0,
}
V12 = {
    **V10,
    "name": "oracle-v12",
    "model": {**V10["model"], "arch": "stdit3", "depth": 1},
    "sampler": "rflow",
    "height": 48,
    "width": 80,
}


def _setup(spec: dict, batch: int = 2, seed: int = 0):
    w = workload_from_dict(spec)
    cfg = STDiTConfig.from_workload(w)
    model = build_stdit(cfg, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, cfg.in_channels, *cfg.input_size, generator=g, dtype=torch.float64)
    y = torch.randn(batch, 1, cfg.model_max_length, cfg.caption_channels, generator=g, dtype=torch.float64)
    mask = torch.zeros(batch, cfg.model_max_length, dtype=torch.long)
    for i in range(batch):  # a short prompt then padding, as T5 gives; another length per prompt
        mask[i, : 2 + i] = 1
    return w, cfg, model, x, y, mask


# ---- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [V10, V12], ids=["v1.0", "v1.2"])
def test_forward_matches_reference_with_and_without_a_partial_mask(spec):
    w, cfg, model, x, y, mask = _setup(spec)
    ref = with_reference_cross_attention(build_stdit(cfg, seed=0).double())
    t = torch.tensor([999.0, 10.0], dtype=torch.float64)
    with torch.no_grad():
        full, full_ref = model(x, t, y), ref(x, t, y)
        part, part_ref = model(x, t, y, mask), ref(x, t, y, mask)
        ones = model(x, t, y, torch.ones_like(mask))
    assert _rel(part, part_ref) < RTOL and _rel(full, full_ref) < RTOL
    assert torch.equal(ones, full)  # an all-ones mask is no mask
    assert _rel(part, full) > 1e-3  # the mask matters, so the comparison above could fail


def test_padding_tokens_do_not_change_the_output():
    _, _, model, x, y, mask = _setup(V10)
    y2 = y.clone()
    y2[..., 4:, :] = 1e3 * torch.randn_like(y2[..., 4:, :])  # only padding changes (masks cover <= 3 tokens)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        assert _rel(model(x, t, y2, mask), model(x, t, y, mask)) < RTOL


def test_v12_position_embedding_puts_the_width_coordinate_first():
    from quantmodel.model.stdit3 import pos_embed_2d_v12

    got = pos_embed_2d_v12(16, 3, 5, scale=0.75, base_size=4)[0]
    ref = ref_pos_embed_2d(16, 3, 5, scale=0.75, base_size=4)
    assert np.abs(_np(got) - ref).max() < 2e-6  # the official buffer is float32 too
    _, cfg, model, *_ = _setup(V12)
    gh, gw = cfg.input_size[1] // 2, cfg.input_size[2] // 2
    scale = (cfg.pixel_height * cfg.pixel_width) ** 0.5 / 512
    ref = ref_pos_embed_2d(cfg.hidden_size, gh, gw, scale, round((gh * gw) ** 0.5))
    assert np.abs(_np(model.pos_embed[0]) - ref).max() < 2e-6
    swapped = np.concatenate([ref[:, cfg.hidden_size // 2 :], ref[:, : cfg.hidden_size // 2]], axis=1)
    assert np.abs(_np(model.pos_embed[0]) - swapped).max() > 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_softmax_runs_in_float32_for_half_dtypes(dtype):
    from quantmodel.model.layers import Softmax

    scale = 72**-0.5  # STDiT-XL's head dim
    x = (torch.randn(4, 7, 300, generator=torch.Generator().manual_seed(0)) * 6).to(dtype)
    ref = torch.softmax(x.double() * scale, dim=-1)
    got = Softmax(scale)(x)
    assert got.dtype == dtype
    # one rounding of the float32 result to the half type: within half an ulp of the exact value
    ulp = {torch.float16: 2**-11, torch.bfloat16: 2**-8}[dtype]
    assert float(((got.double() - ref).abs() / ref.clamp_min(1e-30)).max()) <= ulp * 1.0001
    naive = torch.softmax(x * scale, dim=-1)  # scaled logits rounded to the half type
    assert float(((naive.double() - ref).abs() / ref.clamp_min(1e-30)).max()) > ulp * 1.0001


def test_iddpm_v10_guidance_matches_forward_with_cfg_reference():
    """A few IDDPM steps with v1.0.0 guidance and a partial mask, against the float64 reference
    sampler driving the reference model (its cross-attention replaced) with the same noise."""
    w, cfg, model, _, y, mask = _setup(V10, batch=2)
    ref_model = with_reference_cross_attention(build_stdit(cfg, seed=0).double())
    sampler = IDDPM(num_steps=4, cfg_scale=4.0)  # cfg_channels first3: the v1.0.0 default
    assert sampler.cfg_channels == "first3" and w.cfg_channels == "first3"
    z = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=torch.Generator().manual_seed(7)).double()
    y_null = model.null_caption(2).double()
    with torch.no_grad():
        got = sampler.sample(lambda a, t, yy, s, mask: model(a, t, yy, mask), z, y, y_null, _gen(), mask=mask)
        ref = _ref_iddpm(ref_model, sampler, z, y, y_null, mask, guided_all=False)
        all_ch = IDDPM(num_steps=4, cfg_scale=4.0, cfg_channels="all")
        got_all = all_ch.sample(lambda a, t, yy, s, mask: model(a, t, yy, mask), z, y, y_null, _gen(), mask=mask)
    assert _rel(got, ref) < 1e-11
    assert _rel(got_all, _ref_iddpm(ref_model, sampler, z, y, y_null, mask, guided_all=True)) < 1e-11
    assert _rel(got_all, got) > 1e-4  # the two guidance rules differ from the first step


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def _ref_iddpm(model, sampler, z, y, y_null, mask, guided_all: bool) -> np.ndarray:
    b, c = z.shape[0], z.shape[1]
    ref = RefIDDPM(sampler.timestep_map)
    g = _gen()
    x = torch.cat([z, z])
    y2, m2 = torch.cat([y, y_null]), torch.cat([mask, mask])  # the null caption keeps the prompt's mask
    for i in reversed(range(len(sampler.timestep_map))):
        t = torch.full((2 * b,), sampler.timestep_map[i])
        half = x[:b]
        out = _np(model(torch.cat([half, half]), t, y2, m2))
        if guided_all:
            out[:, :c] = np.concatenate([out[b:, :c] + 4.0 * (out[:b, :c] - out[b:, :c])] * 2)
        else:
            out = ref_forward_with_cfg(out, b, 4.0)
        noise = _np(torch.randn(x.shape, generator=g, dtype=torch.float64))
        x = torch.from_numpy(ref.step(_np(x), out, i, noise))
    return _np(x[:b])


def test_rflow_v12_steps_match_reference_with_a_partial_mask():
    w, cfg, model, _, y, mask = _setup(V12, batch=2)
    ref_model = with_reference_cross_attention(build_stdit(cfg, seed=0).double())
    sampler = RFlow(num_steps=3, cfg_scale=7.0, shift=1.7)
    assert w.cfg_channels == "all" and sampler.cfg_channels == "all"
    z = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=torch.Generator().manual_seed(3)).double()
    y_null = model.null_caption(2).double()
    with torch.no_grad():
        got = sampler.sample(lambda a, t, yy, s, mask: model(a, t, yy, mask), z, y, y_null, _gen(), mask=mask)
        zz = _np(z)
        ts = [1000 * (1 - i / 3) for i in range(3)]
        ts = [1000 * 1.7 * (t / 1000) / (1 + 0.7 * (t / 1000)) for t in ts]  # timestep_transform
        for i, tv in enumerate(ts):
            t = torch.full((4,), tv, dtype=torch.float32)
            zin = torch.from_numpy(np.concatenate([zz, zz]))
            v = _np(ref_model(zin, t, torch.cat([y, y_null]), torch.cat([mask, mask])))[:, : cfg.in_channels]
            v = v[2:] + 7.0 * (v[:2] - v[2:])
            zz = zz + v * ((tv - (ts[i + 1] if i + 1 < 3 else 0.0)) / 1000)
    assert _rel(got, zz) < 1e-11


def test_sampler_refuses_a_model_fn_that_cannot_take_the_mask():
    _, cfg, model, _, y, mask = _setup(V10, batch=2)
    z = torch.zeros(2, cfg.in_channels, *cfg.input_size, dtype=torch.float64)
    with pytest.raises(TypeError):
        IDDPM(num_steps=2, cfg_scale=4.0).sample(lambda a, t, yy, s: model(a, t, yy), z, y, y, _gen(), mask=mask)
