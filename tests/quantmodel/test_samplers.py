"""Samplers: determinism for a seed, OpenSora's respacing, CFG batch doubling."""

import numpy as np
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.samplers import IDDPM, RFlow, respaced_timesteps


def _run(sampler, model, cfg, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(1, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    seen = []

    def fn(x, t, yy, step):
        seen.append((x.shape[0], step, t[0].item()))
        return model(x, t, yy)

    with torch.no_grad():
        return sampler.sample(fn, z, y, model.null_caption(1), g), seen


def test_iddpm_is_deterministic_and_doubles_batch_for_cfg(tiny_workload):
    cfg = STDiTConfig.from_workload(tiny_workload)
    model = build_stdit(cfg, seed=0)
    s = IDDPM(num_steps=5, cfg_scale=4.0)
    a, seen = _run(s, model, cfg, seed=1)
    b, _ = _run(s, model, cfg, seed=1)
    c, _ = _run(s, model, cfg, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [x[0] for x in seen] == [2] * 5  # conditional + unconditional in one batch
    assert [x[1] for x in seen] == [0, 1, 2, 3, 4]
    assert [x[2] for x in seen] == [999, 749, 500, 250, 0]  # noisiest first; round(i * 999/4)


def test_respacing_matches_opensora_100_steps():
    ts = respaced_timesteps(1000, 100)
    assert len(ts) == 100 and ts[0] == 0 and ts[-1] == 999
    assert ts[1] == 10 and ts[50] == 505  # round(i * 999/99)
    s = IDDPM(num_steps=100)
    # respaced betas reproduce the base alphas_cumprod at the kept steps
    np.testing.assert_allclose(s.spaced.alphas_cumprod, s.base.alphas_cumprod[ts], rtol=1e-12)


def test_rflow_is_deterministic_with_30_steps(tiny_workload):
    cfg = STDiTConfig.from_workload(tiny_workload)
    model = build_stdit(cfg, seed=0)
    s = RFlow(num_steps=30, cfg_scale=7.0)
    a, seen = _run(s, model, cfg, seed=5)
    b, _ = _run(s, model, cfg, seed=5)
    assert torch.equal(a, b)
    assert len(seen) == 30 and seen[0][2] == 1000.0 and seen[0][0] == 2


def test_iddpm_training_loss_is_finite_and_differentiable(tiny_workload):
    cfg = STDiTConfig.from_workload(tiny_workload)
    model = build_stdit(cfg, seed=0).train()
    s = IDDPM(num_steps=10)
    x0 = torch.rand(2, cfg.in_channels, *cfg.input_size) * 2 - 1
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels)
    losses = s.base.training_losses(model, x0, torch.tensor([0, 700]), y, torch.randn_like(x0))
    assert torch.isfinite(losses["loss"]).all()
    losses["loss"].mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_pixel_space_workloads_clip_the_predicted_x0():
    from quantmodel.model.samplers import sampler_for
    from workloads.presets import get_workload

    assert sampler_for(get_workload("stdit-shapes")).clip_denoised  # pixels in [-1, 1]
    assert not sampler_for(get_workload("opensora-v1.0-16x256x256")).clip_denoised  # latents: OpenSora
    s = IDDPM(num_steps=5)
    x = torch.full((1, 1, 2, 2, 2), 50.0)
    out = torch.cat([torch.zeros_like(x), torch.zeros_like(x)], dim=1)  # eps 0 -> x0 = x / sqrt(ac)
    t = torch.tensor([4])
    _, _, x0 = s.spaced.p_mean_variance(out, x, t)
    mean_clip, _, _ = s.spaced.p_mean_variance(out, x, t, clip_denoised=True)
    mean, _, _ = s.spaced.p_mean_variance(out, x, t)
    assert x0.min() > 1 and mean_clip.max() < mean.min()
