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


def _masked_features(tmp_path, model, name: str, padding: float):
    """Three prompts with 2, 3 and 5 real tokens; ``padding`` scales the padded tokens' features."""
    from safetensors.torch import save_file

    cfg = model.cfg
    y = torch.randn(3, 1, cfg.model_max_length, cfg.caption_channels, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(3, cfg.model_max_length, dtype=torch.int64)
    for i, n in enumerate((2, 3, 5)):
        mask[i, :n] = 1
        y[i, 0, n:] *= padding
    save_file({"y": y, "mask": mask}, str(tmp_path / name))
    return tmp_path / name, y, mask


def test_padding_tokens_are_left_out_of_the_statistics(tmp_path, model, short_workload):
    """Calibrating with the text file's caption mask: however large the padding tokens' features,
    no statistic moves; without the mask they stretch the caption ops' ranges."""
    a, _, _ = _masked_features(tmp_path, model, "a.safetensors", padding=1.0)
    b, y, mask = _masked_features(tmp_path, model, "b.safetensors", padding=50.0)
    sa = calibrate(model, short_workload, num_prompts=3, text_features=a)
    sb = calibrate(model, short_workload, num_prompts=3, text_features=b)
    assert sa.meta["caption_mask"] == "valid tokens per prompt 2-5 of 8"
    assert set(sa.tensors) == set(sb.tensors)
    assert all(torch.equal(sa.tensors[k], sb.tensors[k]) for k in sa.tensors)
    # the caption MLP's input range is the abs-max over the real tokens only, at every step
    real = torch.cat([y[i, 0, : int(mask[i].sum())] for i in range(3)])
    null = model.null_caption(1)[0, 0, :5]  # the null caption keeps the prompts' masks (<= 5 tokens)
    want = max(real.abs().max(), null.abs().max())
    assert torch.equal(sb.get("y_embedder.y_proj.fc1", "in0"), torch.full((4,), float(want)))
    no_mask = calibrate(model, short_workload, num_prompts=3, text_features=b, text_tokens=8)
    assert no_mask.meta["caption_mask"] == "valid tokens per prompt 2-5 of 8"  # the file's mask still holds
    torch.save({"y": y}, tmp_path / "nomask.pt")
    unmasked = calibrate(model, short_workload, num_prompts=3, text_features=tmp_path / "nomask.pt")
    assert (
        unmasked.get("blocks.0.cross_attn.kv_linear", "in0") > 5 * sb.get("blocks.0.cross_attn.kv_linear", "in0")
    ).all()


def test_text_tokens_masks_random_prompts_and_bad_masks_are_refused(tmp_path, model, short_workload):
    from safetensors.torch import save_file

    from quantmodel.quant.calibrate import calibration_inputs

    y, mask = calibration_inputs(model, 2, seed=1, text_tokens=3)
    assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == [3, 3] and mask[:, :3].all()
    assert calibration_inputs(model, 2, seed=1)[1] is None
    with pytest.raises(ConfigError, match="text_tokens"):
        calibration_inputs(model, 2, text_tokens=9)  # the tiny model has 8 text tokens
    cfg = model.cfg
    yy = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels)
    for bad in (torch.zeros(2, cfg.model_max_length), torch.full((2, cfg.model_max_length), 2), torch.ones(2, 3)):
        save_file({"y": yy, "mask": bad.contiguous()}, str(tmp_path / "bad.safetensors"))
        with pytest.raises(ConfigError, match="mask"):
            calibration_inputs(model, 2, text_features=tmp_path / "bad.safetensors")
