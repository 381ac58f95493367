"""The independent re-derivation of artifact constants: exact agreement on every recipe family, and each
planted quantizer bug reported on its layer and field."""

import dataclasses
from fractions import Fraction

import pytest
import torch

from quantmodel.intarith import fixedpoint
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.rederive import multiplier_shift, rederive
from workloads.recipes import get_recipe


@pytest.fixture(scope="module")
def setup(calibrated_tiny):
    return calibrated_tiny(4)


@pytest.mark.parametrize(
    "name", ["asq-w8a8", "static-w6a6", "tsq-tsw-w4a8", "groups2-cal-w8a8", "dynamic-w8a8", "asq-att-w8a8"]
)
def test_every_constant_rederived_exactly(setup, name):
    w, model, stats = setup
    att = name == "asq-att-w8a8"
    recipe = dataclasses.replace(get_recipe("asq-w8a8"), quantize_attention=True) if att else get_recipe(name)
    art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" else None, w.num_steps)
    rep = rederive(model, art, stats if recipe.scheme != "dynamic" else None)
    d = rep.to_dict()
    assert d["ok"] and d["mismatched_constants"] == 0 and not d["missing"] and not d["not_rederived"]
    assert d["compared"] == len(art.tensors)


@pytest.mark.parametrize(
    "field,edit",
    [
        ("w_scale", lambda t: t.roll(1)),
        ("bias_q", lambda t: t + 1),
        ("smooth", lambda t: t * 1.0001),
        ("multiplier", lambda t: t ^ 1),
        ("weight_q", lambda t: torch.where(t == t.max(), t - 1, t)),
    ],
)
def test_a_planted_bug_is_reported_on_its_layer(setup, field, edit):
    w, model, stats = setup
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    key = "0/blocks.1.mlp.fc2/" + field
    art.tensors[key] = edit(art.tensors[key])
    d = rederive(model, art, stats).to_dict()
    assert not d["ok"] and d["mismatches"] == {"blocks.1.mlp.fc2": [field]}


def test_multiplier_matches_its_definition():
    for real in (0.5, 1.0, 3.0, 2.0**-40, 0.1, 0.7071067811865476, 1.9999999999999998, 123.456):
        m, shift = multiplier_shift(real)
        assert 2**30 <= m < 2**31
        err = abs(Fraction(real) - Fraction(m, 2 ** (31 + shift)))
        assert err <= Fraction(1, 2 ** (32 + shift))  # half an LSB of the multiplier
        assert (m, shift) == fixedpoint.quantize_multiplier(real)
