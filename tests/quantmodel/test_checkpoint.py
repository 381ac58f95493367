"""Checkpoint loading in OpenSora's key layout: round trips and clear key errors."""

import pytest
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.checkpoint import load_checkpoint, save_checkpoint
from quantmodel.model.config import STDiTConfig
from workloads.errors import ConfigError


@pytest.fixture()
def tiny(tiny_workload):
    cfg = STDiTConfig.from_workload(tiny_workload)
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g),
        torch.tensor([5, 900]),
        torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g),
    )
    return cfg, build_stdit(cfg, seed=11), inputs


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_gives_identical_outputs(tmp_path, tiny, suffix):
    cfg, model, inputs = tiny
    path = save_checkpoint(model, tmp_path / f"ckpt{suffix}")
    loaded = load_checkpoint(path, cfg)
    with torch.no_grad():
        assert torch.equal(model(*inputs), loaded(*inputs))


def test_ema_nested_checkpoint_and_recomputed_pos_embed(tmp_path, tiny):
    cfg, model, inputs = tiny
    sd = {k: v for k, v in model.state_dict().items()}
    sd["pos_embed"] = torch.zeros_like(sd["pos_embed"])  # a stale buffer must not be trusted
    torch.save({"ema": sd, "step": torch.tensor(3)}, tmp_path / "ema.pth")
    loaded = load_checkpoint(tmp_path / "ema.pth", cfg)
    assert torch.equal(loaded.pos_embed, model.pos_embed)
    with torch.no_grad():
        assert torch.equal(model(*inputs), loaded(*inputs))


def _save_sd(tmp_path, sd):
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return path


def test_missing_key_is_named(tmp_path, tiny):
    cfg, model, _ = tiny
    sd = dict(model.state_dict())
    del sd["blocks.1.mlp.fc2.weight"]
    with pytest.raises(ConfigError, match=r"missing keys.*blocks\.1\.mlp\.fc2\.weight"):
        load_checkpoint(_save_sd(tmp_path, sd), cfg)


def test_unexpected_key_is_named(tmp_path, tiny):
    cfg, model, _ = tiny
    sd = dict(model.state_dict(), **{"blocks.9.attn.qkv.weight": torch.zeros(3)})
    with pytest.raises(ConfigError, match=r"unexpected keys.*blocks\.9\.attn\.qkv\.weight"):
        load_checkpoint(_save_sd(tmp_path, sd), cfg)


def test_wrong_shape_is_named(tmp_path, tiny):
    cfg, model, _ = tiny
    sd = dict(model.state_dict())
    sd["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.proj\.weight \(64, 32\) \(model \(64, 64\)\)"):
        load_checkpoint(_save_sd(tmp_path, sd), cfg)


def test_missing_and_corrupt_files(tmp_path, tiny):
    cfg = tiny[0]
    with pytest.raises(ConfigError, match="checkpoint: got .*nope.pth"):
        load_checkpoint(tmp_path / "nope.pth", cfg)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="readable checkpoint"):
        load_checkpoint(bad, cfg)


def test_v12_stdit3_round_trip(tmp_path, tiny_workload):
    import dataclasses

    cfg = dataclasses.replace(STDiTConfig.from_workload(tiny_workload), arch="stdit3")
    model = build_stdit(cfg, seed=2)
    assert "rope.freqs" in model.state_dict()
    x = torch.randn(2, cfg.in_channels, *cfg.input_size)
    t, y = torch.tensor([3.0, 800.0]), torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "v12.safetensors"), cfg)
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_every_bad_key_is_named_at_once(tmp_path, tiny):
    """Missing, unexpected and wrongly shaped keys in one message; block indices folded, none hidden."""
    cfg, model, _ = tiny
    sd = dict(model.state_dict())
    del sd["blocks.0.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"], sd["final_layer.linear.bias"]
    sd["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    sd["blocks.1.cross_attn.q_linear.bias"] = torch.zeros(3)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(_save_sd(tmp_path, sd), cfg)
    msg = str(e.value)
    assert "3 missing keys: blocks.{0-1}.mlp.fc2.weight, final_layer.linear.bias" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "2 wrong shapes: blocks.1.cross_attn.q_linear.bias (3,) (model (64,))" in msg
    assert "blocks.0.attn.proj.weight (64, 32) (model (64, 64))" in msg
    assert "\n" not in msg


def test_a_whole_other_model_fits_one_line(tmp_path, tiny):
    from workloads.presets import workload_from_dict

    cfg, _, _ = tiny
    other = STDiTConfig.from_workload(
        workload_from_dict(
            {"model": {"depth": 6, "hidden_size": 96, "num_heads": 4}, "num_frames": 8, "height": 64, "width": 64}
        )
    )
    with pytest.raises(ConfigError) as e:
        load_checkpoint(save_checkpoint(build_stdit(other), tmp_path / "other.pth"), cfg)
    msg = str(e.value)
    assert "unexpected keys: blocks.{2-5}.attn.proj.bias" in msg and len(msg) < 4000
    assert "blocks.{0-1}.mlp.fc1.weight (384, 96) (model (256, 64))" in msg
