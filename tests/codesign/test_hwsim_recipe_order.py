"""A dynamic recipe is never cheaper than its static twin on the same hardware (the ordering the study relies on),
checked on a small-SRAM point where the tile search once gave the static GEMMs a shape that starved
the MAC arrays (64 output columns over 4 arrays of 64) and made static-w8a8 slower than dynamic-w8a8.
A top-layer test: it builds real traces with quantmodel, which hwsim itself never imports."""

import dataclasses

import pytest

import hwsim
from quantmodel.model.tracing import build_trace
from workloads.presets import get_workload
from workloads.recipes import annotate_trace, get_recipe

# the sweep's small-SRAM edge point that showed the inversion (static 1886.95 s vs dynamic 1472.18 s
# on opensora-v1.0-16x512x512, prefetch early, SIM_VERSION hwsim-1)
SMALL_SRAM = {
    "clock.freq_hz": 8e8,
    "mac.arrays": 4,
    "mac.rows": 32,
    "mac.cols": 64,
    "sram.weight_buffer_bytes": 524288,
    "sram.activation_buffer_bytes": 1572864,
    "dram.part": "lpddr5-6400",
    "dram.channels": 2,
    "flash.part": "ufs3.1",
    "vector.online_reduction": True,
    "tech.node_nm": 7,
}


@pytest.fixture(scope="module")
def results():
    hw = hwsim.with_overrides(hwsim.load_hw("edge-npu"), SMALL_SRAM)
    wl = dataclasses.replace(get_workload("opensora-v1.0-16x256x256"), num_steps=2)
    base = build_trace(wl)
    return {
        r: hwsim.simulate(annotate_trace(base, get_recipe(r)), hw, prefetch="early")
        for r in ("static-w8a8", "dynamic-w8a8")
    }


def test_dynamic_not_cheaper_than_static_on_small_sram(results):
    s, d = results["static-w8a8"], results["dynamic-w8a8"]
    assert d.latency_s >= s.latency_s, (s.latency_s, d.latency_s)
    assert d.energy_j >= s.energy_j, (s.energy_j, d.energy_j)


def test_each_static_gemm_no_slower_than_its_dynamic_twin(results):
    """Op by op in step 0: a GEMM the static recipe runs must not take longer than the same GEMM
    with the dynamic recipe's extra FP16 input and full-row constraint, its quantization ops
    counted with it (where they run on their own, the statistics op may hand the quantized input
    to the GEMM in SRAM, which the static GEMM, fed from DRAM, cannot use)."""
    dyn = {o["name"]: o for o in results["dynamic-w8a8"].per_op}

    def with_stages(name):
        return sum(dyn[n]["latency_s"] for n in (name, name + ".dyn_stats", name + ".dyn_rescale") if n in dyn)

    slower = [
        (o["name"], o["latency_s"], with_stages(o["name"]))
        for o in results["static-w8a8"].per_op
        if o["kind"] == "linear" and o["name"] in dyn and o["latency_s"] > with_stages(o["name"])
    ]
    assert not slower, slower[:5]


# ---- the ordering over the default sweep's own hardware space --------------------------------------
SWEEP_CHIPS = 60  # chips with the dynamic-quant unit, in the sampler's order (the first ones it draws)


@pytest.fixture(scope="module")
def sweep_chips(tmp_path_factory):
    """The default spec's hardware points as its sweep builds them (``codesign.sweep.plan_sweep``:
    base preset + the sampled overrides, with their prefetch policy), on a small workload."""
    from codesign.spec import load_spec
    from codesign.store import ResultStore
    from codesign.sweep import plan_sweep

    spec = load_spec("default")
    plan = plan_sweep(spec, ResultStore(tmp_path_factory.mktemp("store")))
    items = {
        rp.recipe: {row["point_index"]: (d, pf) for row, (_, d, pf) in zip(rp.rows, rp.items)} for rp in plan.recipes
    }
    recipes = {r: get_recipe(r) for r in spec.recipes}
    twins = []  # (dynamic recipe, [its static twins at the same bits])
    for name, r in recipes.items():
        if r.scheme == "dynamic":
            stat = [
                s
                for s, q in recipes.items()
                if q.scheme in ("static", "asq") and (q.w_bits, q.a_bits) == (r.w_bits, r.a_bits)
            ]
            twins.append((name, stat))
    assert twins and all(len(s) == 2 for _, s in twins)
    dyn0 = twins[0][0]
    chips = [i for i in sorted(items[dyn0]) if items[dyn0][i][0]["vector"]["online_reduction"]][:SWEEP_CHIPS]
    assert len(chips) == SWEEP_CHIPS
    wl = dataclasses.replace(get_workload("opensora-v1.0-16x256x256"), num_steps=2)
    base = build_trace(wl)
    traces = {r: annotate_trace(base, recipes[r]) for d, s in twins for r in [d, *s]}
    return items, twins, chips, traces


def _without_quantize_on_write(trace):
    """The static trace with its producers' quantize-on-write work taken away (bytes unchanged)."""
    ops = [
        dataclasses.replace(op, epilogue="") if op.epilogue == "quant" and not op.is_gemm else op for op in trace.ops
    ]
    return dataclasses.replace(trace, ops=ops)


def test_dynamic_never_cheaper_than_static_twins_over_sweep_chips(sweep_chips):
    """For each sampled chip and each bit width of the sweep: dynamic >= static and dynamic >= ASQ
    in energy and in energy x delay^2, the figure the schedule minimises (on what
    `codesign sweep default` runs). Latency alone is not a guarantee of an E*T^2 schedule (on
    one sampled chip ASQ-W4A8 takes a plan 0.24 % slower than dynamic's but 4.7 % cheaper in
    energy), and a static recipe does one piece of work in series that dynamic hides: its vector
    ops quantize what they write for the next GEMM (the trace says so), where dynamic's statistics
    run fused into the GEMM behind the arrays. Where dynamic is faster, it is faster by no more than
    that quantize-on-write time (up to the tie-breaks of the planners' figure of merit)."""
    items, twins, chips, traces = sweep_chips
    bad, inverted = [], 0
    for i in chips:
        for dyn, stat in twins:
            d_hw, pf = items[dyn][i]
            hw = hwsim.hw_from_dict(d_hw)
            d = hwsim.simulate(traces[dyn], hw, prefetch=pf)
            for s in stat:
                assert items[s][i] == (d_hw, pf)
                r = hwsim.simulate(traces[s], hw, prefetch=pf)
                fom_d, fom_r = d.energy_j * d.latency_s**2, r.energy_j * r.latency_s**2
                for m, vd, vr in (("energy_j", d.energy_j, r.energy_j), ("energy x delay^2", fom_d, fom_r)):
                    if vd < vr:
                        bad.append((i, dyn, s, m, round(vd / vr, 4)))
                if d.latency_s < r.latency_s:
                    inverted += 1
                    bare = hwsim.simulate(_without_quantize_on_write(traces[s]), hw, prefetch=pf)
                    # 1.5 %: plans and fusions are chosen by energy x delay^2, not time (measured:
                    # 0.24 % at most before the schedule's fusion choices, 1.03 % with them, hwsim-4)
                    if d.latency_s < bare.latency_s * (1 - 0.015):
                        bad.append((i, dyn, s, "latency_s", round(d.latency_s / bare.latency_s, 4)))
    assert not bad, bad
    assert inverted < len(chips) * 4 // 10, inverted  # the exception, not the rule
