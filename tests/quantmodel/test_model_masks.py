"""Caption masks beyond the float model: packing the valid tokens gives masked attention to any
runner (the integer emulator, eager and compiled, and fake-quant), and ``verify`` stays exact."""

import dataclasses

import pytest
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.captions import packed_caption_fn
from quantmodel.model.config import STDiTConfig


@pytest.fixture(scope="module")
def tiny2(tiny_workload):
    return dataclasses.replace(tiny_workload, num_steps=2)


def test_packing_the_valid_tokens_is_masked_attention(tiny_workload):
    cfg = STDiTConfig.from_workload(tiny_workload)
    model = build_stdit(cfg, seed=0).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, cfg.in_channels, *cfg.input_size, generator=g, dtype=torch.float64)
    y = torch.randn(4, 1, cfg.model_max_length, cfg.caption_channels, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 500, 999, 10])
    mask = torch.zeros(4, cfg.model_max_length, dtype=torch.bool)
    mask[0, :3] = mask[2, :3] = True  # rows 0 and 2 share a mask
    mask[1, [0, 4, 6]] = True  # not a prefix
    mask[3] = True
    fn = packed_caption_fn(lambda a, tt, yy, s: model(a, tt, yy))
    with torch.no_grad():
        want = model(x, t, y, mask)
        got = fn(x, t, y, 0, mask=mask)
        same = fn(x[:2], t[:2], y[:2], 0, mask=mask[[0, 0]])
        same_want = model(x[:2], t[:2], y[:2], mask[[0, 0]])
        plain, plain_want = fn(x, t, y, 0), model(x, t, y)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-12
    assert float((same - same_want).abs().max()) < 1e-12
    assert torch.equal(plain, plain_want)  # no mask: passed through


@pytest.mark.parametrize("recipe", ["asq-w8a8", "dynamic-w8a8"])
def test_verify_is_exact_with_masks_on(tiny2, recipe):
    """The integer emulator under a caption mask: every integer op equal to the float64 reference,
    the compiled path equal to the checked one, and the mask does change the sample."""
    from quantmodel.eval.quality import load_model, verify_recipe

    model = load_model(tiny2)
    rep = verify_recipe(model, tiny2, recipe, num_prompts=1, text_tokens=3)
    assert rep["mismatches"] == 0 and rep["overflow"] is None and rep["ok"], rep
    assert rep["fast_path_equal"] is True and rep["caption_mask"] == "3 of 8 tokens"
    full = verify_recipe(model, tiny2, recipe, num_prompts=1)
    assert rep["sample_sqnr_db"] != full["sample_sqnr_db"]


def test_fakequant_quality_with_masks(tiny2):
    from quantmodel.eval.quality import evaluate_recipe, load_model

    model = load_model(tiny2)
    row = evaluate_recipe(model, tiny2, "asq-w8a8", backend="fakequant", num_prompts=1, text_tokens=3)
    assert 10 < row["sqnr_db"] < 200
