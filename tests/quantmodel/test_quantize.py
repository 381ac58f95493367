"""Recipes realised: SmoothQuant invariance, step grouping, weight sets and storage, the artifact file."""

import dataclasses

import pytest
import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.tracing import build_trace
from quantmodel.quant.artifact import QuantArtifact, build_artifact, optimal_split, qmax, split_cost
from quantmodel.quant.calibrate import calibrate
from quantmodel.quant.smoothing import smooth_factors, smoothed_model
from workloads.errors import ConfigError
from workloads.recipes import Recipe, get_recipe


@pytest.fixture(scope="module")
def setup(tiny_workload):
    w = dataclasses.replace(tiny_workload, num_steps=4)
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    return w, model, calibrate(model, w, num_prompts=2)


@pytest.mark.parametrize("fold", [True, False])
def test_smoothquant_is_invariant_folded_and_unfolded(setup, fold):
    w, model, stats = setup
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks")]
    factors = {n: smooth_factors(stats.get(n, "in_ch").amax(0), model.get_submodule(n).weight, 0.5) for n in names}
    assert all((f > 0).all() and not torch.equal(f, torch.ones_like(f)) for f in factors.values())
    sm = smoothed_model(model, factors, fold=fold)
    g = torch.Generator().manual_seed(1)
    cfg = model.cfg
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        ref, out = model(x, t, y), sm(x, t, y)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    # the weights really changed (smoothing moved range into them)
    fc1 = sm.get_submodule("blocks.0.mlp.fc1")
    fc1 = getattr(fc1, "linear", fc1)  # unfolded: wrapped with its explicit multiply
    assert not torch.equal(fc1.weight, model.get_submodule("blocks.0.mlp.fc1").weight)


def test_smooth_factor_formula():
    x = torch.tensor([4.0, 1.0, 0.0])
    wt = torch.tensor([[1.0, 0.25, 3.0], [-0.5, 0.5, 1.0]])
    s = smooth_factors(x, wt, 0.5)
    assert torch.allclose(s, torch.tensor([2.0 / 1.0, 1.0 / 0.5**0.5, 1.0]))  # dead channel keeps s=1


def test_tsq_tsw_has_one_weight_set_per_step_and_steps_times_asq_storage(setup):
    w, model, stats = setup
    asq = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    tsq = build_artifact(model, get_recipe("tsq-tsw-w8a8"), stats, w.num_steps)
    assert asq.num_sets == 1 and tsq.num_sets == w.num_steps == 4
    assert tsq.step_to_set == [0, 1, 2, 3]
    fb = asq.meta["float_weight_bytes"]
    assert tsq.weight_storage_bytes() - fb == 4 * (asq.weight_storage_bytes() - fb)
    # the sets really differ (per-step smoothing and scales)
    assert not torch.equal(tsq.get(0, "blocks.0.mlp.fc2", "weight_q"), tsq.get(3, "blocks.0.mlp.fc2", "weight_q"))
    # the artifact's quantized storage matches the hardware trace's (the same formula)
    trace = tsq.annotate(build_trace(w))
    assert trace.meta["step_to_set"] == [0, 1, 2, 3]
    seen = {}
    for op in trace.ops:
        if op.weight_set >= 0:
            seen[(op.weight_set, op.name)] = op.weight_bytes
    assert sum(seen.values()) == tsq.weight_storage_bytes() - fb


def test_tsq_shares_asq_weights_with_per_step_scales_and_tables_in_storage(setup, tmp_path):
    w, model, stats = setup
    asq = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    tsq = build_artifact(model, get_recipe("tsq-w8a8"), stats, w.num_steps)
    assert (tsq.num_sets, tsq.num_weight_sets, tsq.step_to_set, tsq.weight_step_to_set) == (4, 1, [0, 1, 2, 3], [0] * 4)
    for name in tsq.linears:  # one weight tensor per layer, and it is ASQ's (factors aggregated over all steps)
        assert [k for k in tsq.tensors if k.endswith(f"/{name}/weight_q")] == [f"0/{name}/weight_q"]
        for fld in ("weight_q", "w_scale", "smooth"):
            assert torch.equal(tsq.get(3, name, fld), asq.get(0, name, fld))
    # the activation scales and requantizers are each step's own, from the smoothed activations' range
    fc2 = "blocks.0.mlp.fc2"
    s = asq.get(0, fc2, "smooth")
    for step in range(4):
        x_range = float((stats.get(fc2, "in_ch")[step] / s).max())
        assert float(tsq.get(step, fc2, "x_scale")) == pytest.approx(x_range / 127, rel=1e-6)
    assert len({float(tsq.get(g, fc2, "x_scale")) for g in range(4)}) == 4
    assert not torch.equal(tsq.get(0, fc2, "multiplier"), tsq.get(3, fc2, "multiplier"))
    # storage: ASQ's packed weights once, the 8 B/channel constants moved into 4 per-step tables of
    # 9 B/channel + 8 B per layer; the hardware trace counts the same bytes
    fb = asq.meta["float_weight_bytes"]
    chans = sum(tsq.get(0, n, "weight_q").shape[0] for n in tsq.linears)
    assert tsq.weight_storage_bytes() - fb == asq.weight_storage_bytes() - fb - 8 * chans + 4 * (
        9 * chans + 8 * len(tsq.linears)
    )
    summary = tsq.annotate(build_trace(w)).summary()
    assert summary["weight_storage_bytes"] - summary["float_weight_bytes"] == tsq.weight_storage_bytes() - fb
    assert summary["weight_sets"] == 1 and summary["scale_table_bytes"] == 4 * (9 * chans + 8 * len(tsq.linears))
    # the file holds what it says and loads back
    back = QuantArtifact.load(tsq.save(tmp_path / "tsq.safetensors"))
    assert back.set_to_wset == [0] * 4 and torch.equal(back.get(2, fc2, "weight_q"), tsq.get(0, fc2, "weight_q"))


def test_grouped_tsq_has_per_group_scales_and_one_weight_set(setup):
    w, model, stats = setup
    g = build_artifact(model, get_recipe("groups2-cal-tsq-w8a8"), stats, w.num_steps)
    groups = build_artifact(model, get_recipe("groups2-cal-w8a8"), stats, w.num_steps)
    assert g.num_weight_sets == 1 and g.num_sets == 2 and g.step_to_set == groups.step_to_set
    assert g.weight_step_to_set == [0] * 4
    asq = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    assert torch.equal(g.get(1, "blocks.1.attn.qkv", "weight_q"), asq.get(0, "blocks.1.attn.qkv", "weight_q"))
    trace = g.annotate(build_trace(w))
    assert trace.meta["step_to_set"] == [0] * 4 and trace.meta["step_to_scale_set"] == g.step_to_set


def test_weights_are_per_channel_symmetric_within_bits(setup):
    w, model, stats = setup
    for bits in (4, 6, 8):
        art = build_artifact(model, get_recipe(f"static-w{bits}a8"), stats, w.num_steps)
        q = art.get(0, "blocks.1.attn.proj", "weight_q")
        assert q.dtype == torch.int8 and int(q.abs().max()) == qmax(bits)
        assert (q.abs().amax(dim=1) == qmax(bits)).all()  # every output channel uses its full range


def test_calibrated_split_beats_uniform_on_a_constructed_case():
    # two layers whose range jumps at step 7 of 10: a uniform 2-way split puts steps 5, 6 with the big ones
    ranges = torch.tensor([[1.0] * 7 + [100.0] * 3, [2.0] * 7 + [50.0] * 3])
    cal = optimal_split(ranges, 2)
    uni = Recipe(name="g", scheme="groups", w_bits=8, a_bits=8, num_groups=2).uniform_step_to_set(10)
    assert cal == [0] * 7 + [1] * 3 and uni == [0] * 5 + [1] * 5
    assert split_cost(ranges, cal) < split_cost(ranges, uni)
    # and on the quality metric: mean per-step SQNR of static 8-bit activations with those ranges
    g = torch.Generator().manual_seed(0)
    acts = [[torch.randn(256, generator=g) * r / 3 for r in row] for row in ranges.tolist()]

    def sqnr(split):
        per_step = []
        for row in acts:
            for grp in set(split):
                steps = [s for s in range(10) if split[s] == grp]
                scale = max(float(row[s].abs().max()) for s in steps) / 127
                for s in steps:
                    xq = torch.round(row[s] / scale).clamp(-127, 127) * scale
                    per_step.append(10 * torch.log10((row[s] ** 2).sum() / ((xq - row[s]) ** 2).sum()))
        return float(torch.stack(per_step).mean())

    assert sqnr(cal) > sqnr(uni) + 3.0


def test_optimal_split_is_optimal_against_brute_force():
    import itertools

    g = torch.Generator().manual_seed(2)
    ranges = torch.rand(3, 7, generator=g) * 10 + 0.1
    best = min(
        split_cost(ranges, [sum(s >= b for b in bounds) for s in range(7)])
        for bounds in itertools.combinations(range(1, 7), 2)
    )
    assert split_cost(ranges, optimal_split(ranges, 3)) == pytest.approx(best, rel=1e-12)


def test_artifact_round_trip_is_bit_exact_and_corruption_is_refused(tmp_path, setup):
    w, model, stats = setup
    recipe = dataclasses.replace(get_recipe("groups2-cal-w6a6"), quantize_attention=True)
    art = build_artifact(model, recipe, stats, w.num_steps, w.name)
    path = art.save(tmp_path / "a.safetensors")
    back = QuantArtifact.load(path)
    assert back.meta == art.meta and set(back.tensors) == set(art.tensors)
    for k, v in art.tensors.items():
        assert back.tensors[k].dtype == v.dtype and torch.equal(back.tensors[k], v), k
    back.check_model(model)
    with pytest.raises(ConfigError, match="artifact"):
        back.check_model(build_stdit(model.cfg, seed=5))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(ConfigError, match="artifact"):
        QuantArtifact.load(tmp_path / "cut.safetensors")
    import json

    from safetensors.torch import save_file

    partial = {k: v for k, v in art.tensors.items() if not k.endswith("multiplier")}
    save_file(
        partial,
        str(tmp_path / "partial.safetensors"),
        metadata={"format": art.meta["format"], "meta": json.dumps(art.meta)},
    )
    with pytest.raises(ConfigError, match="artifact"):
        QuantArtifact.load(tmp_path / "partial.safetensors")
    # an artifact built under another activation-quantization definition is refused
    save_file(
        art.tensors,
        str(tmp_path / "olddef.safetensors"),
        metadata={"format": art.meta["format"], "meta": json.dumps({**art.meta, "act_quant": "division"})},
    )
    with pytest.raises(ConfigError, match="act_quant"):
        QuantArtifact.load(tmp_path / "olddef.safetensors")
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_recipes_and_stats_are_config_errors(setup, tiny_workload):
    w, model, stats = setup
    with pytest.raises(ConfigError, match="recipe.layers"):
        build_artifact(
            model,
            Recipe(name="x", scheme="static", w_bits=8, a_bits=8, layers=("blocks.*.nonexistent",)),
            stats,
            w.num_steps,
        )
    with pytest.raises(ConfigError, match="num_steps"):
        build_artifact(model, get_recipe("asq-w8a8"), stats, 10)
    with pytest.raises(ConfigError, match="stats"):
        build_artifact(model, get_recipe("static-w8a8"), None, w.num_steps)
    with pytest.raises(ConfigError):
        get_recipe("asq-w5a8")
    # dynamic needs no stats and has one weight set, float bias
    art = build_artifact(model, get_recipe("dynamic-w4a8"), None, w.num_steps)
    assert art.num_sets == 1 and art.has(0, "blocks.0.attn.qkv", "bias")
