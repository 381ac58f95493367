"""OpenSora v1.0 STDiT in plain PyTorch.

Parameter names and shapes follow hpcaitech/Open-Sora tag v1.0.0 (``opensora/models/stdit/stdit.py``)
so real checkpoints load. Its layers (``layers.py``) are leaf modules for every operation, so hooks,
quantizers and the tracer see each one.

Shapes: B batch (CFG doubles it), T latent frames / temporal patches, S spatial tokens per frame,
N = T*S tokens, C hidden, H heads, D head dim, L text tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quantmodel.model.captions import check_mask
from quantmodel.model.config import STDiTConfig
from quantmodel.model.layers import (
    Add,
    Attention,
    CaptionEmbedder,
    GatedAdd,
    Mlp,
    Modulate,
    MultiHeadCrossAttention,
    PatchEmbed3D,
    T2IFinalLayer,
    TimestepEmbedder,
    spatial_pos_embed,
    temporal_pos_embed,
    unpatchify,
)


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
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t0: torch.Tensor,
        tpe: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, c = x.shape  # x [B, N, C], y [B, L, C], t0 [B, 6C], mask [B, L] bool or None
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
        # cross attention to the caption's valid tokens, no norm and no gate
        x = self.res_cross(x, self.cross_attn(x, y, mask))
        # MLP on the modulated second norm
        x_m = self.modulate2(self.norm2(x), shift_mlp, scale_mlp)
        return self.res_mlp(x, self.mlp(x_m), gate_mlp)


class STDiT(nn.Module):
    """Spatial-temporal DiT of OpenSora v1.0.

    forward(x [B, Cin, T, H, W] latent, timestep [B], y [B, 1, L, Ct] text features, mask [B, L] caption
    mask or None) -> [B, Cout, T, H, W] (Cout = 2 * Cin with learned sigma: eps then variance values).
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
            STDiTBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.num_spatial, cfg.num_temporal) for _ in range(cfg.depth)
        )
        self.final_layer = T2IFinalLayer(c, int(np.prod(cfg.patch_size)), cfg.out_channels)
        self.register_buffer("pos_embed", torch.zeros(1, cfg.num_spatial, c), persistent=True)
        self.register_buffer("pos_embed_temporal", torch.zeros(1, cfg.num_temporal, c), persistent=True)
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
        self.pos_embed_temporal.copy_(temporal_pos_embed(cfg.hidden_size, cfg.num_temporal, cfg.time_scale))

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

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.cfg
        b = x.shape[0]
        mask = check_mask(mask, b, y.shape[2])
        x = self.x_embedder(x)  # [B, N, C]
        x = self.pos_add(x.reshape(b, cfg.num_temporal, cfg.num_spatial, -1), self.input_pos_embed())
        x = x.reshape(b, cfg.num_temporal * cfg.num_spatial, -1)
        t = self.t_embedder(timestep)  # [B, C]
        t0 = self.t_block(t)  # [B, 6C]
        y = self.y_embedder(y).squeeze(1)  # [B, L, C]
        for i, block in enumerate(self.blocks):
            x = block(x, y, t0, self.block_tpe(i), mask)
        x = self.final_layer(x, t)  # [B, N, p_t*p_h*p_w*Cout]
        return self.unpatchify(x)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.cfg)

    def null_caption(self, batch: int) -> torch.Tensor:
        """The unconditional text input for CFG: [B, 1, L, Ct]."""
        return self.y_embedder.y_embedding[None, None].expand(batch, 1, -1, -1)
