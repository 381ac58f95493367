"""Zero points cost what the hardware does for them: nothing at run time for static recipes (the
correction is folded into the int32 bias), one multiply-add per output element (and a min beside the
max reduction) on the vector unit for asymmetric dynamic per-token quantization."""

import dataclasses

import hwsim
from hwsim.tiling import op_stages, vector_cycles
from workloads.recipes import annotate_trace, get_recipe
from workloads.trace import gemm_trace

M, K, N = 1024, 1152, 3456


def _strip_name(trace):
    return [dataclasses.replace(o) for o in trace.ops]


def test_asymmetric_static_trace_and_cost_equal_the_symmetric_ones():
    hw = hwsim.load_hw("edge-npu")
    sym = annotate_trace(gemm_trace(M, K, N), get_recipe("asq-w8a8"))
    asym = annotate_trace(gemm_trace(M, K, N), get_recipe("asq-asym-w8a8"))
    assert _strip_name(sym) == _strip_name(asym)
    a, b = hwsim.simulate(sym, hw), hwsim.simulate(asym, hw)
    assert (a.latency_s, a.energy_j) == (b.latency_s, b.energy_j)


def test_asymmetric_dynamic_pays_the_rank1_correction_on_the_vector_unit():
    hw = hwsim.load_hw("edge-npu")
    sym = annotate_trace(gemm_trace(M, K, N), get_recipe("dynamic-w8a8"))
    asym = annotate_trace(gemm_trace(M, K, N), get_recipe("dynamic-asym-w8a8"))
    by_kind = {o.kind: o for o in asym.ops}
    assert op_stages(by_kind["dyn_rescale"]) == "dyn_rescale+zp_correct"
    assert op_stages(by_kind["dyn_stats"]) == "dyn_stats+zp_stats"
    assert all(o.epilogue == "" for o in sym.ops if o.kind.startswith("dyn_"))
    # one multiply-add per output element: exactly one lane op more per element of the rescale
    cpe = hw.vector.cycles_per_element["basic"]
    extra = vector_cycles(hw, "dyn_rescale+zp_correct", M * N) - vector_cycles(hw, "dyn_rescale", M * N)
    assert abs(extra - M * N * cpe / hw.vector.lanes) <= 1
    a, b = hwsim.simulate(sym, hw), hwsim.simulate(asym, hw)
    assert b.energy_j > a.energy_j and b.latency_s >= a.latency_s


def test_channel_balanced_dynamic_multiplies_unfoldable_inputs_in_fp16():
    trace = dataclasses.replace(gemm_trace(M, K, N), meta={**gemm_trace(M, K, N).meta})
    ops = [dataclasses.replace(o, name="blocks.0.mlp.fc2") for o in trace.ops]
    trace = dataclasses.replace(trace, ops=ops, meta={k: v for k, v in trace.meta.items() if k != "single_gemm"})
    q = annotate_trace(trace, get_recipe("vidit-q-w6a6"))
    kinds = [o.kind for o in q.ops]
    assert kinds == ["smooth_mul", "dyn_stats", "linear", "dyn_rescale"]
    sm = q.ops[0]
    assert sm.out_bits == 16 and op_stages(sm) == "smooth_scale" and sm.weight_bytes == 2 * K
    assert q.ops[1].reads.startswith("blocks.0.mlp.fc2.smooth:0:")
