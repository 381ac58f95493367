"""The shapes text-to-video model: data determinism, caption tokens, a CPU training step, and the
shipped float model following its prompts (classifier accuracy far above chance)."""

from __future__ import annotations

import pytest
import torch

from shapes import captions, dataset, videometrics
from shapes.model import CAPTION_FILE, MODEL_FILE, generate, load_shapes_model
from shapes.train import TrainConfig, train
from workloads.errors import ConfigError


def test_dataset_is_deterministic_and_in_range():
    a, la = dataset.sample_batch(6, torch.Generator().manual_seed(3))
    b, lb = dataset.sample_batch(6, torch.Generator().manual_seed(3))
    c, _ = dataset.sample_batch(6, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert not torch.equal(a, c)
    assert a.shape == (6, 3, 16, 32, 32)
    assert a.min() >= -1 and a.max() <= 1


def test_shape_moves_in_the_captioned_direction():
    labels = {
        "shape": torch.tensor([0, 1, 2, 3]),
        "colour": torch.tensor([0, 1, 2, 3]),
        "direction": torch.tensor([0, 1, 2, 3]),
        "speed": torch.tensor([1, 1, 0, 0]),
        "background": torch.tensor([0, 0, 0, 0]),
    }
    v = dataset.render(labels, torch.Generator().manual_seed(0))  # black background
    mass = (v + 1).sum(dim=1)  # [B, T, H, W], zero on background
    xs, ys = torch.arange(32.0), torch.arange(32.0)
    cx = (mass.sum(2) * xs).sum(-1) / mass.sum((2, 3))  # [B, T]
    cy = (mass.sum(3) * ys).sum(-1) / mass.sum((2, 3))
    dx, dy = cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]
    # left fast (1.2 px/frame x 15), right fast, up slow (0.5 x 15), down slow
    assert dx[0] == pytest.approx(-18.0, abs=0.3) and dy[0] == pytest.approx(0.0, abs=0.3)
    assert dx[1] == pytest.approx(18.0, abs=0.3)
    assert dy[2] == pytest.approx(-7.5, abs=0.3) and dx[2] == pytest.approx(0.0, abs=0.3)
    assert dy[3] == pytest.approx(7.5, abs=0.3)


def test_caption_ids_match_tokenizer_and_unknown_words_fail():
    labels = dataset.random_labels(40, torch.Generator().manual_seed(0))
    assert torch.equal(captions.ids_from_labels(labels), captions.tokenize(dataset.captions(labels)))
    with pytest.raises(ConfigError):
        captions.tokenize(["a slow purple circle moving up on black"])


def test_training_step_runs_on_cpu_and_saves(tmp_path):
    cfg = TrainConfig(steps=2, batch=2, log_every=1, warmup_steps=1)
    log = train(cfg, device="cpu", out_dir=tmp_path, progress=False)
    assert log["steps_done"] == 2
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log["curve"])
    model, enc = load_shapes_model(
        "cpu", tmp_path / "stdit-shapes.safetensors", tmp_path / "stdit-shapes-captions.safetensors"
    )
    # the saved (float16) weights are the trained EMA weights
    sd = log["model"].state_dict()
    for k, v in model.state_dict().items():
        if k not in ("pos_embed", "pos_embed_temporal"):
            assert torch.equal(v, sd[k].half().float()), k


def test_metrics_on_known_inputs():
    v, labels = dataset.sample_batch(8, torch.Generator().manual_seed(0))
    assert videometrics.sqnr_db(v, v) == float("inf")
    half = 0.5 * v  # inside [-1, 1] after noise, so clamping does not cut the noise
    noisy = half + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    # PSNR with range 2 and noise std 0.01: 20 log10(2 / 0.01) = 46.02 dB
    assert videometrics.psnr_db(half, noisy) == pytest.approx(46.02, abs=0.05)
    # SQNR: signal power over noise power
    expected = 10 * torch.log10(half.double().pow(2).sum() / (noisy - half).double().pow(2).sum())
    assert videometrics.sqnr_db(half, noisy) == pytest.approx(float(expected), rel=1e-9)
    f = torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert videometrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    # shifting the mean by 1 in each of 4 dims adds exactly 4
    assert videometrics.frechet_distance(f, f + 1) == pytest.approx(4.0, abs=1e-9)
    tc = videometrics.temporal_consistency(v)
    assert tc["jerk_px"] < 0.15 and tc["empty_frames"] == 0.0


def test_training_resumes_from_its_state_file(tmp_path):
    """A run split in two jobs through ``--state`` continues the same schedule and data stream:
    the step count and loss curve carry on, and the resumed weights match an unbroken run to
    within what bfloat16 Adam moments allow."""
    base = dict(steps=4, batch=2, log_every=1, warmup_steps=1)
    straight = train(TrainConfig(**base), device="cpu", progress=False)
    state = tmp_path / "state.pt"
    first = train(
        TrainConfig(**{**base, "steps": 4, "time_budget_s": 1e-9}, state=str(state)), device="cpu", progress=False
    )
    assert first["steps_done"] == 1 and state.is_file()
    second = train(TrainConfig(**base, state=str(state)), device="cpu", progress=False)
    assert second["resumed_at_step"] == 1 and second["steps_done"] == 4
    assert [e["step"] for e in second["curve"]] == [1, 2, 3, 4]
    # step 1 ran before the split, so its loss is the unbroken run's exactly
    assert second["curve"][0]["loss"] == straight["curve"][0]["loss"]
    a, b = straight["model"].state_dict(), second["model"].state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst


def test_position_jitter_makes_the_words_visible_in_the_conditional_mean():
    """Why the clips are centred: with free positions the shape and motion words hardly move
    E[clip | caption]; a 1 px jitter raises each word's share of the variance several-fold."""
    free = dataset.caption_explained_variance(dataset.ShapesConfig(position_jitter_px=None), n=800)
    centred = dataset.caption_explained_variance(dataset.ShapesConfig(), n=800)
    for word in ("shape", "direction", "speed"):
        assert centred[word] > 3 * free[word], (word, free, centred)
    with pytest.raises(ConfigError):
        dataset.ShapesConfig(position_jitter_px=-1.0)


def test_shipped_classifier_reads_real_clips():
    clf = videometrics.load_classifier()
    v, labels = dataset.sample_batch(64, torch.Generator().manual_seed(777))
    acc = videometrics.semantic_accuracy(clf, v, labels)
    assert acc["mean"] > 0.95, acc


@pytest.mark.skipif(not MODEL_FILE.is_file() or not CAPTION_FILE.is_file(), reason="weights not shipped")
def test_shipped_float_model_follows_prompts():
    model, enc = load_shapes_model("cpu")
    clf = videometrics.load_classifier()
    labels = dataset.prompt_set(8, seed=0)
    video = generate(model, enc, dataset.captions(labels), seed=0, num_steps=20)
    acc = videometrics.semantic_accuracy(clf, video, labels)
    # colour, background, direction and speed are followed (chance 1/4, 1/3, 1/4, 1/2; measured
    # 1.0 / 1.0 / 0.875 / 1.0 here, one clip of slack for another CPU's float rounding); the shape
    # only partly (0.625 here, 0.59 on 32 prompts: docs/shapes_model.md), so it is held only
    # through the mean: 0.90 measured, 0.317 by guessing
    for attr in ("colour", "background", "direction", "speed"):
        assert acc[attr] >= 0.75, acc
    chance = sum(videometrics.CHANCE.values()) / len(videometrics.CHANCE)  # 0.317
    assert acc["mean"] > chance + 0.45, acc


def test_snr_weights_are_truncated_snr_and_capped():
    from quantmodel.model.samplers import linear_betas
    from shapes.train import snr_weights

    ac = torch.from_numpy(linear_betas(1000)).neg().add(1).cumprod(0)
    w = snr_weights(ac, 1000.0)
    # low noise (SNR > 1) keeps plain eps-MSE (weight exactly 1), the noisiest steps get the cap
    assert float(w[0]) == 1.0 and float(w[-1]) == 1000.0
    t = 600  # in between: 1/SNR itself, i.e. the x0 error
    assert float(w[t]) == pytest.approx(float((1 - ac[t]) / ac[t]), rel=1e-6)
    assert bool((w[1:] >= w[:-1]).all())  # non-decreasing in t
    with pytest.raises(ConfigError):
        TrainConfig(snr_weight_cap=0.5)


def test_fast_attention_matches_the_leaf_module_forward():
    import copy

    from quantmodel.model.build import build_stdit
    from quantmodel.model.config import STDiTConfig
    from shapes.train import use_fast_attention, xavier_caption_proj

    cfg = STDiTConfig(
        input_size=(4, 8, 8),
        in_channels=3,
        patch_size=(1, 2, 2),
        hidden_size=32,
        depth=2,
        num_heads=2,
        caption_channels=16,
        model_max_length=8,
    )
    m = build_stdit(cfg, seed=1)
    xavier_caption_proj(m)  # non-trivial caption path, so cross-attention matters
    for p in m.parameters():  # the zero-init output layers would hide any difference
        if p.dim() == 2 and float(p.detach().abs().max()) == 0:
            torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 1, 8, 16, generator=g)
    t = torch.tensor([10, 900])
    fast = copy.deepcopy(m)
    use_fast_attention(fast)
    with torch.no_grad():
        ref, out = m(x, t, y), fast(x, t, y)
    assert ref.abs().max() > 1e-2
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_caption_separation_sees_distinct_words_through_a_full_scale_projection():
    from quantmodel.model.build import build_stdit
    from quantmodel.model.config import STDiTConfig
    from shapes.model import caption_separation, shapes_workload
    from shapes.train import xavier_caption_proj

    w = shapes_workload()
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    xavier_caption_proj(model)
    enc = captions.CaptionEncoder(w.model.caption_channels, w.model.model_max_length)
    raw = caption_separation(model, enc, projected=False)
    proj = caption_separation(model, enc)
    assert set(proj) == set(dataset.ATTRIBUTES)
    for attr in dataset.ATTRIBUTES:  # random word embeddings in 64 dims: nearly orthogonal
        assert raw[attr]["cos_mean"] < 0.5 and proj[attr]["cos_mean"] < 0.6, (attr, raw, proj)
        assert proj[attr]["norm"] > 0.1
