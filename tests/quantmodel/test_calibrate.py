"""Per-step calibration: statistics per op and step, file round trip, and refusal of stats that
belong to another model or step count."""

import dataclasses

import pytest
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant.calibrate import CalibStats, calibrate, calibration_prompts
from workloads.errors import ConfigError


@pytest.fixture(scope="module")
def short_workload(tiny_workload):
    return dataclasses.replace(tiny_workload, num_steps=4)


@pytest.fixture(scope="module")
def model(tiny_workload):
    return build_stdit(STDiTConfig.from_workload(tiny_workload), seed=0)


@pytest.fixture(scope="module")
def stats(model, short_workload):
    return calibrate(model, short_workload, num_prompts=2, seed=0)


def test_stats_are_per_step_and_cover_every_quantizable_op(stats, model):
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for n in linears:
        in_ch = stats.get(n, "in_ch")
        out_ch = stats.get(n, "out_ch")
        lin = model.get_submodule(n)
        assert in_ch.shape == (4, lin.in_features) and out_ch.shape == (4, lin.out_features)
        # the per-tensor abs-max is the max over channels, per step
        assert torch.equal(stats.get(n, "in0"), in_ch.amax(dim=1))
    for n in ("blocks.0.attn.qk", "blocks.1.cross_attn.av"):
        assert stats.get(n, "in0").shape == (4,) and stats.get(n, "in1").shape == (4,)
    # activations drift over the denoising steps: the raw residual of the temporal branch grows
    r = stats.get("blocks.1.attn_temp.qkv", "in0")
    assert len(set(r.tolist())) == 4 and r[-1] > r[0]


def test_round_trip_is_bit_exact(tmp_path, stats):
    path = stats.save(tmp_path / "stats.safetensors")
    loaded = CalibStats.load(path)
    assert loaded.meta == stats.meta
    assert set(loaded.tensors) == set(stats.tensors)
    assert all(torch.equal(loaded.tensors[k], stats.tensors[k]) for k in stats.tensors)
    assert not list(tmp_path.glob("*.tmp"))


def test_stats_of_another_model_or_step_count_are_refused(stats, short_workload, model, tiny_workload):
    stats.check_matches(model, short_workload.num_steps)  # its own model: fine
    other_weights = build_stdit(STDiTConfig.from_workload(tiny_workload), seed=1)
    with pytest.raises(ConfigError, match="fingerprint"):
        stats.check_matches(other_weights, 4)
    other_cfg = build_stdit(dataclasses.replace(STDiTConfig.from_workload(tiny_workload), depth=1))
    with pytest.raises(ConfigError, match="depth"):
        stats.check_matches(other_cfg, 4)
    with pytest.raises(ConfigError, match="num_steps"):
        stats.check_matches(model, 10)


def test_corrupt_or_foreign_stats_file_is_a_config_error(tmp_path, stats):
    path = stats.save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="stats"):
        CalibStats.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ConfigError, match="stats"):
        CalibStats.load(tmp_path / "foreign.safetensors")
    with pytest.raises(ConfigError):
        CalibStats.load(tmp_path / "missing.safetensors")


def test_text_features_from_file(tmp_path, model):
    from safetensors.torch import save_file

    cfg = model.cfg
    y = torch.randn(3, 1, cfg.model_max_length, cfg.caption_channels)
    save_file({"y": y}, str(tmp_path / "t5.safetensors"))
    assert torch.equal(calibration_prompts(model, 2, text_features=tmp_path / "t5.safetensors"), y[:2])
    torch.save(y[:, 0], tmp_path / "t5.pt")  # [n, L, Ct] is accepted too
    assert torch.equal(calibration_prompts(model, 3, text_features=tmp_path / "t5.pt"), y)
    save_file({"y": torch.randn(2, 1, 5, cfg.caption_channels)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="text_features"):
        calibration_prompts(model, 2, text_features=tmp_path / "bad.safetensors")
    # the random prompts are seeded
    assert torch.equal(calibration_prompts(model, 2, seed=3), calibration_prompts(model, 2, seed=3))
