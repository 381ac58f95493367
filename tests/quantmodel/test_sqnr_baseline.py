"""The final-sample SQNR baseline: it applies only to its own settings, fails on a drop beyond its
margin, and the stored value is what verify measures today."""

import pytest

from quantmodel.eval.baseline import check_sqnr, load_baseline
from quantmodel.eval.quality import EVAL_SEED, load_model, verify_recipe
from workloads.presets import get_workload


@pytest.fixture(scope="module")
def base():
    b = load_baseline()
    assert b["workload"] == "stdit-tiny" and 0 < b["margin_db"] < 5
    return b


def _meta(base, **kw):
    stats = {"num_prompts": 4, "seed": 0, "text_features": "random-normal", "caption_mask": "all tokens"}
    return {"model_fingerprint": base["model_fingerprint"], "scheme": "asq", "stats": {**stats, **kw}}


def test_check_applies_only_to_its_settings(base):
    ref = base["sqnr_db"]["asq-w8a8/fp16"]
    m = base["margin_db"]
    ok = check_sqnr("stdit-tiny", "asq-w8a8", "fp16", _meta(base), ref - m + 0.01, 1, EVAL_SEED)
    bad = check_sqnr("stdit-tiny", "asq-w8a8", "fp16", _meta(base), ref - m - 0.01, 1, EVAL_SEED)
    assert ok["applies"] and ok["ok"] and bad["applies"] and not bad["ok"]
    for args in (
        ("stdit-tiny", "asq-w8a8", "fp16", _meta(base, seed=1), ref, 1, EVAL_SEED),
        ("stdit-tiny", "asq-w8a8", "fp16", _meta(base), ref, 2, EVAL_SEED),
        ("stdit-tiny", "groups7-w8a8", "fp16", _meta(base), ref, 1, EVAL_SEED),
    ):
        assert not check_sqnr(*args)["applies"]


def test_verify_measures_the_stored_value(base):
    w = get_workload("stdit-tiny")
    rep = verify_recipe(load_model(w), w, "asq-w8a8", "fp16", num_prompts=4, seed=0)
    b = rep["sqnr_baseline"]
    assert b["applies"] and b["ok"] and rep["ok"]
    assert rep["sample_sqnr_db"] == pytest.approx(base["sqnr_db"]["asq-w8a8/fp16"], abs=1e-3)
