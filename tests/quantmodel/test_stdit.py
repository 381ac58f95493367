"""The STDiT model: OpenSora v1.0 parameter layout, shapes, determinism."""

import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from workloads.presets import get_workload


def test_xl2_has_opensora_v1_parameters():
    w = get_workload("opensora-v1.0-16x256x256")
    model = build_stdit(STDiTConfig.from_workload(w), device="meta")
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 759_620_768
    # spot checks against OpenSora v1.0 STDiT-XL/2 tensor names and shapes
    assert params["x_embedder.proj.weight"].shape == (1152, 4, 1, 2, 2)
    assert params["t_block.1.weight"].shape == (6912, 1152)
    assert params["y_embedder.y_proj.fc1.weight"].shape == (1152, 4096)
    assert params["blocks.27.attn_temp.qkv.weight"].shape == (3456, 1152)
    assert params["blocks.0.cross_attn.kv_linear.weight"].shape == (2304, 1152)
    assert params["blocks.0.mlp.fc1.weight"].shape == (4608, 1152)
    assert params["blocks.0.scale_shift_table"].shape == (6, 1152)
    assert params["final_layer.linear.weight"].shape == (32, 1152)
    assert params["final_layer.scale_shift_table"].shape == (2, 1152)
    buffers = dict(model.named_buffers())
    assert buffers["y_embedder.y_embedding"].shape == (120, 4096)
    assert buffers["pos_embed"].shape == (1, 256, 1152)
    assert buffers["pos_embed_temporal"].shape == (1, 16, 1152)
    assert len(model.blocks) == 28


def test_forward_shapes_and_seed_determinism(tiny_workload):
    cfg = STDiTConfig.from_workload(tiny_workload)
    a, b = build_stdit(cfg, seed=3), build_stdit(cfg, seed=3)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 10])
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels)
    with torch.no_grad():
        out_a, out_b = a(x, t, y), b(x, t, y)
    assert out_a.shape == (2, 2 * cfg.in_channels, *cfg.input_size)
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, build_stdit(cfg, seed=4)(x, t, y))


def test_temporal_attention_mixes_frames_and_spatial_does_not_leak(tiny_workload):
    """Changing one frame of the input changes the other frames' outputs only through temporal
    attention; with temporal attention disabled (gate path zeroed) frames stay independent."""
    cfg = STDiTConfig.from_workload(tiny_workload)
    model = build_stdit(cfg, seed=0)
    x = torch.randn(1, cfg.in_channels, *cfg.input_size)
    x2 = x.clone()
    x2[:, :, 0] += 1.0  # perturb frame 0
    t, y = torch.tensor([500]), torch.randn(1, 1, cfg.model_max_length, cfg.caption_channels)
    with torch.no_grad():
        d = (model(x, t, y) - model(x2, t, y)).abs().amax(dim=(0, 1, 3, 4))
        assert d[1:].max() > 0  # other frames moved: temporal attention connects them
        for blk in model.blocks:
            blk.attn_temp.proj.weight.zero_()
            blk.attn_temp.proj.bias.zero_()
        d = (model(x, t, y) - model(x2, t, y)).abs().amax(dim=(0, 1, 3, 4))
    assert d[0] > 0 and d[1:].max() == 0


def test_v12_stdit3_parameter_layout():
    """OpenSora v1.2 STDiT3-XL/2: 28 spatial + 28 temporal blocks with QK-norm, fps embedder."""
    w = get_workload("opensora-v1.2-51x240x240")
    model = build_stdit(STDiTConfig.from_workload(w), device="meta")
    params = dict(model.named_parameters())
    assert len(model.spatial_blocks) == 28 and len(model.temporal_blocks) == 28
    assert params["temporal_blocks.3.attn.q_norm.weight"].shape == (72,)
    assert params["spatial_blocks.0.cross_attn.kv_linear.weight"].shape == (2304, 1152)
    assert params["fps_embedder.mlp.0.weight"].shape == (1152, 256)
    assert params["rope.freqs"].shape == (36,)
    assert dict(model.named_buffers())["y_embedder.y_embedding"].shape == (300, 4096)
    # 56 blocks of 21,255,696 + embedders and final layer (counted by hand from the v1.2 layout)
    assert sum(p.numel() for p in params.values()) == 56 * 21_255_696 + 17_324_996


def test_v12_rope_is_a_rotation(tiny_workload):
    from quantmodel.model.stdit3 import Rope, RopeTable

    x = torch.randn(3, 4, 5, 8)  # [B, H, L, D]
    out = Rope()(x, RopeTable.default_freqs(8))
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # norms kept per position
    assert torch.equal(out[..., 0, :], x[..., 0, :])  # position 0 is not rotated
