"""Bytes are conserved between a producer and its readers in every quantized trace: each tensor is
written once at the width its readers read it, every reader names its producer, and a recipe's
conversions are written into the trace on the op that does them (so the hardware model charges
them). Traces come from the meta tracer of stdit-tiny and of full-size OpenSora (one step)."""

import dataclasses

import pytest

from quantmodel.model.tracing import build_trace
from workloads.presets import get_workload
from workloads.recipes import annotate_trace, get_recipe
from workloads.trace import entry_bytes

FAMILIES = [
    "fp16",
    "static-w8a8",
    "asq-w8a8",
    "tsq-tsw-w8a8",
    "tsq-w8a8",
    "groups4-w8a8",
    "groups4-tsq-w6a6",
    "groups4-cal-w4a8",
    "dynamic-w8a8",
    "static-w4a8",
    "dynamic-w6a6",
]


@pytest.fixture(scope="module")
def float_traces():
    tiny = build_trace(get_workload("stdit-tiny"))
    full = build_trace(dataclasses.replace(get_workload("opensora-v1.0-16x512x512"), num_steps=2))
    v12 = build_trace(dataclasses.replace(get_workload("opensora-v1.2-51x240x240"), num_steps=1))
    return {"stdit-tiny": tiny, "opensora-v1.0-16x512x512": full, "opensora-v1.2-51x240x240": v12}


def conservation_errors(trace, step: int = 0) -> list:
    """Every way the step's ops break conservation (empty when bytes are conserved)."""
    ops = [o for o in trace.ops if o.step == step]
    by_name = {o.name: o for o in ops}
    assert len(by_name) == len(ops), "op names are unique within a step"
    parts: dict[str, set] = {}
    errors = []
    for o in ops:
        entries = o.read_entries()
        used = entries[:1] if o.kind in ("linear", "conv") else entries
        if sum(entry_bytes(e, b) for _, _, e, b in used) != o.input_bytes:
            errors.append(("input_bytes is not what the op reads", o.name))
        for p, part, el, bits in entries:
            if not p:
                continue  # a model input or a parameter table
            if p not in by_name:
                errors.append(("reads a tensor no op of the step wrote", o.name, p))
                continue
            producer = by_name[p]
            # dyn_stats writes int8 codes (for the GEMM) and fp32 row scales (for the rescale)
            if bits != producer.out_bits and producer.kind != "dyn_stats":
                errors.append(("read at another width than written", o.name, p, bits, producer.out_bits))
            parts.setdefault(p, set()).add((part, el, bits))
    for p, read in parts.items():
        written = by_name[p].output_bytes
        if written != sum(entry_bytes(el, bits) for _, el, bits in read):
            errors.append(("written != read", p, written, sorted(read)))
    return errors


@pytest.mark.parametrize("workload", ["stdit-tiny", "opensora-v1.0-16x512x512", "opensora-v1.2-51x240x240"])
@pytest.mark.parametrize("recipe", FAMILIES)
def test_every_tensor_is_written_as_its_readers_read_it(float_traces, workload, recipe):
    trace = annotate_trace(float_traces[workload], get_recipe(recipe))
    for step in (0, trace.num_steps - 1):
        assert conservation_errors(trace, step) == []


def test_asq_modulation_writes_the_int8_tensor_its_gemm_reads(float_traces):
    """The issue's example: under ASQ, ``modulate1`` (whose SmoothQuant factors fold into the
    modulation) quantizes on write, 37.7 MB of int8 for ``attn.qkv``, not 75.5 MB of FP16."""
    trace = annotate_trace(float_traces["opensora-v1.0-16x512x512"], get_recipe("asq-w8a8"))
    op = {o.name: o for o in trace.ops if o.step == 0}
    mod, qkv = op["blocks.0.modulate1"], op["blocks.0.attn.qkv"]
    assert mod.output_bytes == qkv.input_bytes == 2 * 16 * 1024 * 1152  # 2 x CFG, 16 frames x 1024 tokens
    assert (mod.out_bits, mod.epilogue) == (8, "quant")
    assert qkv.epilogue == "requant_dequant" and qkv.output_bytes == 2 * 16384 * 3456 * 2
    # an unfoldable layer gets its own multiply-and-quantize; a tensor others read in FP16, a quantize op
    assert op["blocks.0.mlp.fc2.smooth"].output_bytes == op["blocks.0.mlp.fc2"].input_bytes
    assert op["blocks.0.mlp.act"].out_bits == 16
    # the caption tokens (read by every block) are multiplied by the block's 1/s and quantized every step
    assert op["blocks.0.cross_attn.kv_linear.smooth"].kind == "smooth_mul"
    static = annotate_trace(float_traces["opensora-v1.0-16x512x512"], get_recipe("static-w8a8"))
    assert next(o for o in static.ops if o.name == "blocks.0.cross_attn.kv_linear.quant").kind == "quantize"


def test_each_recipe_does_its_conversions_where_the_emulator_does(float_traces):
    base = float_traces["stdit-tiny"]

    def count(recipe, pred):
        return sum(1 for o in annotate_trace(base, get_recipe(recipe)).ops if o.step == 0 and pred(o))

    gemms = count("static-w8a8", lambda o: o.kind == "linear" and o.a_bits == 8)
    assert gemms > 0
    for r in ("static-w8a8", "asq-w8a8"):  # every int GEMM requantizes its int32 sums
        assert count(r, lambda o: o.epilogue.startswith("requant")) == gemms
        assert count(r, lambda o: o.kind == "dyn_stats") == 0
    # static with no smoothing: GELU quantizes for fc2 as it writes; ASQ multiplies first
    assert count("static-w8a8", lambda o: o.name.endswith("mlp.act") and o.epilogue == "quant") == 2
    assert count("asq-w8a8", lambda o: o.name.endswith("mlp.act") and o.epilogue == "quant") == 0
    # 3 unfoldable layers + the caption path's multiply before kv_linear, x 2 blocks
    assert count("asq-w8a8", lambda o: o.kind == "smooth_mul") == 4 * 2
    # dynamic: statistics before and a rescale after every int GEMM, int32 sums in between
    assert count("dynamic-w8a8", lambda o: o.kind == "dyn_stats") == gemms
    assert count("dynamic-w8a8", lambda o: o.kind == "linear" and o.a_bits == 8 and o.out_bits == 32) == gemms
    assert count("dynamic-w8a8", lambda o: o.epilogue) == 0
    assert count("fp16", lambda o: o.epilogue or o.out_bits != 16) == 0
