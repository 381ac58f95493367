"""The layers both STDiT versions are built from (``stdit.py``, ``stdit3.py``).

Every operation the quantizer, the emulator or the tracer needs to see is a leaf module:
``nn.Linear`` / ``nn.Conv3d`` for weights, ``MatMul`` for the two attention products, ``Softmax``,
``nn.LayerNorm``, ``Modulate``, ``GatedAdd``, ``Add``, ``nn.GELU``, ``nn.SiLU``. No fused attention kernel
is used, so forward hooks see every op and a quantizer can swap any of them.

Shapes: B batch, N tokens, C hidden, H heads, D head dim, L text tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from quantmodel.model.config import STDiTConfig


# ---- leaf ops: one module per operation so hooks and quantizers can see and replace them ---------
class MatMul(nn.Module):
    """Activation x activation product ``a @ b`` (attention QK^T and AV)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [..., M, K] x [..., K, N]
        return a @ b


class Softmax(nn.Module):
    """softmax(scale * x) over the last dim; the 1/sqrt(D) scale is fused here, as hardware does.

    Computed in float32 for half-precision inputs (fp16/bf16) and cast back, as OpenSora's attention
    does; float32 and float64 inputs keep their own precision. ``mask`` (bool, broadcastable to x,
    True = attend) drops the masked keys: their probability is exactly 0. It is a keyword so forward
    hooks see only ``x``."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        work = x.to(torch.promote_types(x.dtype, torch.float32)) * self.scale
        if mask is not None:
            work = work.masked_fill(~mask, float("-inf"))
        return torch.softmax(work, dim=-1).to(x.dtype)


class Modulate(nn.Module):
    """adaLN modulation ``x * (1 + scale) + shift`` (OpenSora's t2i_modulate)."""

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * (1 + scale) + shift


class GatedAdd(nn.Module):
    """Gated residual ``x + gate * y``."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return x + gate * y


class Add(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def approx_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


# ---- attention ---------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention over the second dim of ``x: [B', L, C]``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.qk = MatMul()
        self.softmax = Softmax(self.head_dim**-0.5)
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B', H, L, D]
        attn = self.softmax(self.qk(q, k.transpose(-2, -1)))  # [B', H, L, L]
        x = self.av(attn, v)  # [B', H, L, D]
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class MultiHeadCrossAttention(nn.Module):
    """Video tokens ``x: [B, N, C]`` attend to text tokens ``y: [B, L, C]``.

    ``mask [B, L]`` (bool, True = a real caption token) restricts each sample to its valid tokens,
    which is what OpenSora's block-diagonal attention over the packed valid tokens (``y_lens``)
    computes; None attends to all L tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.qk = MatMul()
        self.softmax = Softmax(self.head_dim**-0.5)
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B,H,N,D]
        kv = self.kv_linear(y).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, H, L, D]
        keep = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L]
        attn = self.softmax(self.qk(q, k.transpose(-2, -1)), mask=keep)  # [B, H, N, L]
        x = self.av(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = approx_gelu()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ---- embedders -----------------------------------------------------------------------------------
class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, T, H, W] -> [B, N, C]
        return self.proj(x).flatten(2).transpose(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos, sin] as in OpenSora."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, C]
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class CaptionEmbedder(nn.Module):
    """Projects text features to the hidden width; ``y_embedding`` is the learned null caption."""

    def __init__(self, in_channels: int, hidden_size: int, token_num: int):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:  # [B, 1, L, Ct] -> [B, 1, L, C]
        return self.y_proj(caption)


# ---- sin-cos positional embeddings (fixed buffers, recomputed at load) ---------------------------
def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def spatial_pos_embed(embed_dim: int, grid_h: int, grid_w: int, scale: float) -> torch.Tensor:
    """2D sin-cos embedding [1, S, C] (OpenSora's get_2d_sincos_pos_embed, base_size=None)."""
    gh = np.arange(grid_h, dtype=np.float32) / scale
    gw = np.arange(grid_w, dtype=np.float32) / scale
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_h, grid_w)
    emb = np.concatenate([_sincos_1d(embed_dim // 2, grid[0]), _sincos_1d(embed_dim // 2, grid[1])], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def temporal_pos_embed(embed_dim: int, length: int, scale: float) -> torch.Tensor:
    pos = np.arange(length, dtype=np.float32) / scale
    return torch.from_numpy(_sincos_1d(embed_dim, pos)).float().unsqueeze(0)  # [1, T, C]


# ---- output ------------------------------------------------------------------------------------
class T2IFinalLayer(nn.Module):
    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.t_mod = Add()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.modulate = Modulate()
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # t [B, C]
        shift, scale = self.t_mod(self.scale_shift_table[None], t[:, None]).chunk(2, dim=1)
        return self.linear(self.modulate(self.norm_final(x), shift, scale))


def unpatchify(x: torch.Tensor, cfg: STDiTConfig) -> torch.Tensor:
    """Patch tokens ``[B, N, p_t*p_h*p_w*Cout]`` back to the video ``[B, Cout, T, H, W]``."""
    pt, ph, pw = cfg.patch_size
    nt = cfg.num_temporal
    nh, nw = cfg.input_size[1] // ph, cfg.input_size[2] // pw
    b = x.shape[0]
    x = x.reshape(b, nt, nh, nw, pt, ph, pw, cfg.out_channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, Cout, nt, pt, nh, ph, nw, pw]
    return x.reshape(b, cfg.out_channels, nt * pt, nh * ph, nw * pw)
