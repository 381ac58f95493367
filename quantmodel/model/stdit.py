"""OpenSora v1.0 STDiT in plain PyTorch, one file.

Parameter names and shapes follow hpcaitech/Open-Sora tag v1.0.0 (``opensora/models/stdit/stdit.py``)
so real checkpoints load. Every operation the quantizer, the emulator or the tracer needs to see is a
leaf module: ``nn.Linear`` / ``nn.Conv3d`` for weights, ``MatMul`` for the two attention products,
``Softmax``, ``nn.LayerNorm``, ``Modulate``, ``GatedAdd``, ``Add``, ``nn.GELU``, ``nn.SiLU``. No fused
attention kernel is used, so forward hooks see every op and a quantizer can swap any of them.

Shapes: B batch (CFG doubles it), T latent frames / temporal patches, S spatial tokens per frame,
N = T*S tokens, C hidden, H heads, D head dim, L text tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

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
    arch: str = "stdit"  # "stdit" (v1.0) or "stdit3" (v1.2, quantmodel/model/stdit3.py)
    temporal_pos: str = "attention"  # workloads.presets.TEMPORAL_POS: where the frame index enters
    fps: int = 24  # v1.2 conditions on the frame rate
    pixel_height: int = 512  # v1.2 scales its positional embedding by the pixel resolution
    pixel_width: int = 512

    @classmethod
    def from_workload(cls, w: Workload) -> "STDiTConfig":
        m = w.model
        return cls(input_size=w.latent_size, in_channels=m.in_channels, patch_size=m.patch_size,
                   hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
                   mlp_ratio=m.mlp_ratio, caption_channels=m.caption_channels,
                   model_max_length=m.model_max_length, pred_sigma=m.pred_sigma,
                   space_scale=w.space_scale, time_scale=w.time_scale, arch=m.arch,
                   temporal_pos=m.temporal_pos, fps=w.fps,
                   pixel_height=w.height, pixel_width=w.width)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def num_temporal(self) -> int:
        return self.input_size[0] // self.patch_size[0]

    @property
    def num_spatial(self) -> int:
        return (self.input_size[1] // self.patch_size[1]) * (self.input_size[2] // self.patch_size[2])


# ---- leaf ops: one module per operation so hooks and quantizers can see and replace them ---------
class MatMul(nn.Module):
    """Activation x activation product ``a @ b`` (attention QK^T and AV)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [..., M, K] x [..., K, N]
        return a @ b


class Softmax(nn.Module):
    """softmax(scale * x) over the last dim; the 1/sqrt(D) scale is fused here, as hardware does."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x * self.scale, dim=-1)


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
        self.softmax = Softmax(self.head_dim ** -0.5)
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
    """Video tokens ``x: [B, N, C]`` attend to text tokens ``y: [B, L, C]`` (all L tokens)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.qk = MatMul()
        self.softmax = Softmax(self.head_dim ** -0.5)
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B,H,N,D]
        kv = self.kv_linear(y).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, H, L, D]
        attn = self.softmax(self.qk(q, k.transpose(-2, -1)))  # [B, H, N, L]
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
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, C]
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class CaptionEmbedder(nn.Module):
    """Projects text features to the hidden width; ``y_embedding`` is the learned null caption."""

    def __init__(self, in_channels: int, hidden_size: int, token_num: int):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels ** 0.5)

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
    emb = np.concatenate([_sincos_1d(embed_dim // 2, grid[0]), _sincos_1d(embed_dim // 2, grid[1])],
                         axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def temporal_pos_embed(embed_dim: int, length: int, scale: float) -> torch.Tensor:
    pos = np.arange(length, dtype=np.float32) / scale
    return torch.from_numpy(_sincos_1d(embed_dim, pos)).float().unsqueeze(0)  # [1, T, C]


# ---- blocks --------------------------------------------------------------------------------------
class STDiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, d_s: int, d_t: int):
        super().__init__()
        self.d_s, self.d_t = d_s, d_t
        self.t_mod = Add()  # scale_shift_table + t0
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.modulate1 = Modulate()
        self.attn = Attention(hidden_size, num_heads)
        self.res_attn = GatedAdd()
        self.tpe_add = Add()
        self.attn_temp = Attention(hidden_size, num_heads)
        self.res_temp = GatedAdd()
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.res_cross = Add()
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.modulate2 = Modulate()
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.res_mlp = GatedAdd()
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor, t0: torch.Tensor,
                tpe: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape  # x [B, N, C], y [B, L, C], t0 [B, 6C]
        mod = self.t_mod(self.scale_shift_table[None], t0.reshape(b, 6, -1))  # [B, 6, C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x_m = self.modulate1(self.norm1(x), shift_msa, scale_msa)
        # spatial attention: tokens of one frame attend to each other
        x_s = self.attn(x_m.reshape(b * self.d_t, self.d_s, c)).reshape(b, n, c)
        x = self.res_attn(x, x_s, gate_msa)
        # temporal attention: each spatial position attends across frames, on the raw residual
        x_t = x.reshape(b, self.d_t, self.d_s, c).transpose(1, 2).reshape(b * self.d_s, self.d_t, c)
        if tpe is not None:
            x_t = self.tpe_add(x_t, tpe)
        x_t = self.attn_temp(x_t).reshape(b, self.d_s, self.d_t, c).transpose(1, 2).reshape(b, n, c)
        x = self.res_temp(x, x_t, gate_msa)
        # cross attention to the caption, no norm and no gate
        x = self.res_cross(x, self.cross_attn(x, y))
        # MLP on the modulated second norm
        x_m = self.modulate2(self.norm2(x), shift_mlp, scale_mlp)
        return self.res_mlp(x, self.mlp(x_m), gate_mlp)


class T2IFinalLayer(nn.Module):
    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.t_mod = Add()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.modulate = Modulate()
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size ** 0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # t [B, C]
        shift, scale = self.t_mod(self.scale_shift_table[None], t[:, None]).chunk(2, dim=1)
        return self.linear(self.modulate(self.norm_final(x), shift, scale))


class STDiT(nn.Module):
    """Spatial-temporal DiT of OpenSora v1.0.

    forward(x [B, Cin, T, H, W] latent, timestep [B], y [B, 1, L, Ct] text features)
    -> [B, Cout, T, H, W] (Cout = 2 * Cin with learned sigma: eps then variance values).
    """

    def __init__(self, cfg: STDiTConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, c)
        self.pos_add = Add()
        self.t_embedder = TimestepEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c, bias=True))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, c, cfg.model_max_length)
        self.blocks = nn.ModuleList(
            STDiTBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.num_spatial, cfg.num_temporal)
            for _ in range(cfg.depth))
        self.final_layer = T2IFinalLayer(c, int(np.prod(cfg.patch_size)), cfg.out_channels)
        self.register_buffer("pos_embed", torch.zeros(1, cfg.num_spatial, c), persistent=True)
        self.register_buffer("pos_embed_temporal", torch.zeros(1, cfg.num_temporal, c),
                             persistent=True)
        self.reset_pos_embed()
        self.initialize_weights()

    def reset_pos_embed(self) -> None:
        """Recompute the fixed sin-cos buffers (they are not learned; checkpoints may omit them)."""
        cfg = self.cfg
        gh = cfg.input_size[1] // cfg.patch_size[1]
        gw = cfg.input_size[2] // cfg.patch_size[2]
        dev = self.pos_embed.device
        if dev.type == "meta":
            return
        self.pos_embed.copy_(spatial_pos_embed(cfg.hidden_size, gh, gw, cfg.space_scale))
        self.pos_embed_temporal.copy_(temporal_pos_embed(cfg.hidden_size, cfg.num_temporal,
                                                         cfg.time_scale))

    def initialize_weights(self) -> None:
        """OpenSora's init (xavier linears, N(0, 0.02) embedders), except that the final layer and the
        cross-attention outputs are NOT zeroed as OpenSora does before training: an untrained model
        must give non-trivial outputs for quantization and emulator checks. Training code zeroes
        them itself (``shapes.model``)."""
        if self.pos_embed.device.type == "meta":
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)

    def input_pos_embed(self) -> torch.Tensor:
        """What ``pos_add`` adds to the patch tokens ``[B, T, S, C]``: the spatial embedding
        ``[1, 1, S, C]``, plus the temporal one ``[1, T, 1, C]`` when ``temporal_pos`` is residual."""
        if self.cfg.temporal_pos == "residual":
            return self.pos_embed[:, None] + self.pos_embed_temporal[:, :, None]  # [1, T, S, C]
        return self.pos_embed[:, None]

    def block_tpe(self, i: int) -> torch.Tensor | None:
        """The temporal embedding block ``i`` adds to its temporal attention's input (v1.0: block 0)."""
        return self.pos_embed_temporal if i == 0 and self.cfg.temporal_pos == "attention" else None

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b = x.shape[0]
        x = self.x_embedder(x)  # [B, N, C]
        x = self.pos_add(x.reshape(b, cfg.num_temporal, cfg.num_spatial, -1), self.input_pos_embed())
        x = x.reshape(b, cfg.num_temporal * cfg.num_spatial, -1)
        t = self.t_embedder(timestep)  # [B, C]
        t0 = self.t_block(t)  # [B, 6C]
        y = self.y_embedder(y).squeeze(1)  # [B, L, C]
        for i, block in enumerate(self.blocks):
            x = block(x, y, t0, self.block_tpe(i))
        x = self.final_layer(x, t)  # [B, N, p_t*p_h*p_w*Cout]
        return self.unpatchify(x)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        pt, ph, pw = cfg.patch_size
        nt = cfg.num_temporal
        nh, nw = cfg.input_size[1] // ph, cfg.input_size[2] // pw
        b = x.shape[0]
        x = x.reshape(b, nt, nh, nw, pt, ph, pw, cfg.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, Cout, nt, pt, nh, ph, nw, pw]
        return x.reshape(b, cfg.out_channels, nt * pt, nh * ph, nw * pw)

    def null_caption(self, batch: int) -> torch.Tensor:
        """The unconditional text input for CFG: [B, 1, L, Ct]."""
        return self.y_embedder.y_embedding[None, None].expand(batch, 1, -1, -1)


def build_stdit(cfg: STDiTConfig, device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """A randomly initialised STDiT (v1.0) or STDiT3 (v1.2) of ``cfg`` (seeded), or a shape-only one
    on ``device='meta'``."""
    if cfg.arch == "stdit3":
        from quantmodel.model.stdit3 import STDiT3 as cls
    else:
        cls = STDiT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls(cfg)
    return model.eval()
