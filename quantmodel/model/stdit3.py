"""OpenSora v1.2 STDiT3 in plain PyTorch (the v1.2-style workload presets run it).

Differences from v1.0's STDiT (``stdit.py``), following hpcaitech/Open-Sora v1.2
(``opensora/models/stdit/stdit3.py``): separate ``spatial_blocks`` and ``temporal_blocks`` (28 each
for XL/2), run alternately; every block has its own adaLN (norm1 + modulation before its self-attention,
so the temporal attention's qkv input is modulated too); RMS QK-norm with a learned weight per head
dim; rotary position embedding on the temporal attention's q and k; an fps embedding added to the
timestep embedding; 300 text tokens. Parameter names match v1.2 checkpoints (``rope.freqs`` is kept as
a buffer under the same key). Leaf modules are the same as in ``stdit.py`` (``layers.py``), plus ``RMSNorm`` and
``Rope``, so the tracer, quantizers and the emulator see every op.

Shapes: B batch, T latent frames, S spatial tokens per frame, N = T*S, C hidden, H heads, D head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from quantmodel.model.captions import check_mask
from quantmodel.model.config import STDiTConfig
from quantmodel.model.layers import (
    Add,
    CaptionEmbedder,
    GatedAdd,
    MatMul,
    Mlp,
    Modulate,
    MultiHeadCrossAttention,
    PatchEmbed3D,
    Softmax,
    T2IFinalLayer,
    TimestepEmbedder,
    unpatchify,
)


class RMSNorm(nn.Module):
    """QK-norm: ``w * x / sqrt(mean(x^2) + eps)`` over the head dim (LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Rope(nn.Module):
    """Rotary embedding over the sequence dim (-2) of ``x [.., L, D]``, adjacent pairs rotated
    (rotary-embedding-torch's layout, which OpenSora v1.2 uses); ``freqs [D/2]`` is shared."""

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[-2], device=x.device, dtype=freqs.dtype)
        ang = torch.repeat_interleave(pos[:, None] * freqs[None], 2, dim=-1)  # [L, D]
        pairs = x.unflatten(-1, (-1, 2))  # [.., L, D/2, 2]
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * ang.cos() + rotated * ang.sin()


class RopeTable(nn.Module):
    """Holds the rotary frequencies ``freqs [D/2]`` (a frozen parameter under the key ``rope.freqs``,
    as rotary-embedding-torch stores it in v1.2 checkpoints)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.freqs = nn.Parameter(self.default_freqs(head_dim), requires_grad=False)

    @staticmethod
    def default_freqs(head_dim: int) -> torch.Tensor:
        return 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)


class Attention3(nn.Module):
    """Self-attention with QK RMS-norm and optional rotary embedding."""

    def __init__(self, dim: int, num_heads: int, rope: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.q_rope = Rope() if rope else None
        self.k_rope = Rope() if rope else None
        self.qk = MatMul()
        self.softmax = Softmax(self.head_dim**-0.5)
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B', H, L, D]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.q_rope is not None:
            q, k = self.q_rope(q, freqs), self.k_rope(k, freqs)
        attn = self.softmax(self.qk(q, k.transpose(-2, -1)))  # [B', H, L, L]
        return self.proj(self.av(attn, v).transpose(1, 2).reshape(b, n, c))


class STDiT3Block(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.t_mod = Add()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.modulate1 = Modulate()
        self.attn = Attention3(hidden_size, num_heads, rope=temporal)
        self.res_attn = GatedAdd()
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.res_cross = Add()
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.modulate2 = Modulate()
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.res_mlp = GatedAdd()
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(self, x, y, t0, freqs, d_t: int, d_s: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape  # x [B, N, C], y [B, L, C], t0 [B, 6C], mask [B, L] bool or None
        mod = self.t_mod(self.scale_shift_table[None], t0.reshape(b, 6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x_m = self.modulate1(self.norm1(x), shift_msa, scale_msa)
        if self.temporal:  # [B, T, S, C] -> [B*S, T, C]
            x_m = x_m.reshape(b, d_t, d_s, c).transpose(1, 2).reshape(b * d_s, d_t, c)
            x_m = self.attn(x_m, freqs).reshape(b, d_s, d_t, c).transpose(1, 2).reshape(b, n, c)
        else:  # [B*T, S, C]
            x_m = self.attn(x_m.reshape(b * d_t, d_s, c), freqs).reshape(b, n, c)
        x = self.res_attn(x, x_m, gate_msa)
        x = self.res_cross(x, self.cross_attn(x, y, mask))
        x_m = self.modulate2(self.norm2(x), shift_mlp, scale_mlp)
        return self.res_mlp(x, self.mlp(x_m), gate_mlp)


def pos_embed_2d_v12(dim: int, h: int, w: int, scale: float, base_size: int) -> torch.Tensor:
    """v1.2's PositionEmbedding2D: [1, h*w, dim] sin-cos over a grid rescaled to ``base_size``; token
    ``r*w + c`` gets ``[sincos(column c), sincos(row r)]``: the width coordinate comes first, as the
    official module's meshgrid order gives (v1.0's ``get_2d_sincos_pos_embed`` orders it the same way)."""
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    gh = torch.arange(h).float() / scale * (base_size / h)
    gw = torch.arange(w).float() / scale * (base_size / w)
    grid_h = gh[:, None].expand(h, w).reshape(-1)
    grid_w = gw[None, :].expand(h, w).reshape(-1)

    def emb(t: torch.Tensor) -> torch.Tensor:
        out = t[:, None] * inv_freq[None]
        return torch.cat([out.sin(), out.cos()], dim=-1)

    return torch.cat([emb(grid_w), emb(grid_h)], dim=-1)[None]


class STDiT3(nn.Module):
    """forward(x [B, Cin, T, H, W], timestep [B], y [B, 1, L, Ct], mask [B, L] or None) -> [B, Cout, T, H, W]."""

    def __init__(self, cfg: STDiTConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, c)
        self.pos_add = Add()
        self.t_embedder = TimestepEmbedder(c)
        self.fps_embedder = TimestepEmbedder(c)  # OpenSora's SizeEmbedder has the same layers
        self.fps_add = Add()
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c, bias=True))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, c, cfg.model_max_length)
        hd = c // cfg.num_heads
        self.rope = RopeTable(hd)
        self.spatial_blocks = nn.ModuleList(
            STDiT3Block(c, cfg.num_heads, cfg.mlp_ratio, temporal=False) for _ in range(cfg.depth)
        )
        self.temporal_blocks = nn.ModuleList(
            STDiT3Block(c, cfg.num_heads, cfg.mlp_ratio, temporal=True) for _ in range(cfg.depth)
        )
        self.final_layer = T2IFinalLayer(c, cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2], cfg.out_channels)
        gh = cfg.input_size[1] // cfg.patch_size[1]
        gw = cfg.input_size[2] // cfg.patch_size[2]
        self.register_buffer("pos_embed", torch.zeros(1, gh * gw, c), persistent=False)
        self.reset_pos_embed()
        if self.pos_embed.device.type != "meta":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def reset_pos_embed(self) -> None:
        cfg = self.cfg
        if self.pos_embed.device.type == "meta":
            return
        gh, gw = cfg.input_size[1] // cfg.patch_size[1], cfg.input_size[2] // cfg.patch_size[2]
        scale = (cfg.pixel_height * cfg.pixel_width) ** 0.5 / 512  # input_sq_size 512
        self.pos_embed.copy_(pos_embed_2d_v12(cfg.hidden_size, gh, gw, scale, round((gh * gw) ** 0.5)))
        with torch.no_grad():
            self.rope.freqs.copy_(RopeTable.default_freqs(cfg.hidden_size // cfg.num_heads))

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.cfg
        b = x.shape[0]
        mask = check_mask(mask, b, y.shape[2])
        d_t, d_s = cfg.num_temporal, cfg.num_spatial
        x = self.x_embedder(x)  # [B, N, C]
        x = self.pos_add(x.reshape(b, d_t, d_s, -1), self.pos_embed[:, None]).reshape(b, d_t * d_s, -1)
        fps = torch.full((b,), float(cfg.fps), device=x.device)
        t = self.fps_add(self.t_embedder(timestep), self.fps_embedder(fps))  # [B, C]
        t0 = self.t_block(t)  # [B, 6C]
        y = self.y_embedder(y).squeeze(1)  # [B, L, C]
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            x = spatial(x, y, t0, self.rope.freqs, d_t, d_s, mask)
            x = temporal(x, y, t0, self.rope.freqs, d_t, d_s, mask)
        return unpatchify(self.final_layer(x, t), cfg)

    def null_caption(self, batch: int) -> torch.Tensor:
        return self.y_embedder.y_embedding[None, None].expand(batch, 1, -1, -1)
