"""Op traces: MAC totals against the analytic count of the architecture, files, versions."""

import pytest

from quantmodel.model.tracing import build_trace
from workloads.errors import ConfigError
from workloads.presets import get_workload
from workloads.recipes import annotate_trace, get_recipe
from workloads.trace import TRACE_VERSION, Trace


def analytic_macs_per_forward(w, ln: int | None = None) -> int:
    """MACs of one STDiT forward, written from the architecture (not from the model code); ``ln``
    caption tokens (default: the padded model_max_length)."""
    m = w.model
    b, c, t, s = w.model_batch, m.hidden_size, w.num_temporal, w.num_spatial
    ln = ln or m.model_max_length
    n = t * s
    patch = m.patch_size[0] * m.patch_size[1] * m.patch_size[2]
    per_block = (
        b * n * c * 3 * c
        + b * n * c * c  # spatial qkv + proj
        + 2 * b * t * s * s * c  # spatial QK^T and AV (all heads: H * D = C)
        + b * n * c * 3 * c
        + b * n * c * c  # temporal qkv + proj
        + 2 * b * s * t * t * c  # temporal QK^T and AV
        + b * n * c * c
        + b * ln * c * 2 * c
        + b * n * c * c  # cross q, kv, proj
        + 2 * b * n * ln * c  # cross QK^T and AV
        + 2 * b * n * c * m.mlp_hidden  # MLP
    )
    outside = (
        b * n * m.in_channels * patch * c  # patch embedding
        + b * (256 * c + c * c)
        + b * c * 6 * c  # timestep MLP and t_block
        + b * ln * (m.caption_channels * c + c * c)  # caption projection
        + b * n * c * patch * m.out_channels
    )  # final layer
    return m.depth * per_block + outside


def analytic_macs_per_forward_v12(w) -> int:
    """STDiT3 (v1.2): per layer a spatial and a temporal block, each with self-attention, cross-
    attention and MLP; an fps embedder beside the timestep embedder."""
    m = w.model
    b, c, t, s, ln = w.model_batch, m.hidden_size, w.num_temporal, w.num_spatial, m.model_max_length
    n = t * s
    patch = m.patch_size[0] * m.patch_size[1] * m.patch_size[2]
    common = (
        b * n * 4 * c * c  # qkv + proj
        + b * n * 2 * c * c
        + b * ln * 2 * c * c
        + 2 * b * n * ln * c  # cross q+proj, kv, QK/AV
        + 2 * b * n * c * m.mlp_hidden
    )
    spatial = common + 2 * b * t * s * s * c
    temporal = common + 2 * b * s * t * t * c
    outside = (
        b * n * m.in_channels * patch * c
        + 2 * b * (256 * c + c * c)
        + b * c * 6 * c
        + b * ln * (m.caption_channels * c + c * c)
        + b * n * c * patch * m.out_channels
    )
    return m.depth * (spatial + temporal) + outside


@pytest.mark.parametrize(
    "name",
    [
        "stdit-tiny",
        "opensora-v1.0-16x256x256",
        "opensora-v1.0-16x512x512",
        "opensora-v1.2-51x240x240",
        "opensora-v1.2-51x720x1280",
    ],
)
def test_trace_macs_match_analytic_count(name):
    w = get_workload(name)
    tr = build_trace(w)
    s = tr.summary()
    assert s["steps"] == w.num_steps
    count = analytic_macs_per_forward_v12 if w.model.arch == "stdit3" else analytic_macs_per_forward
    assert s["total_macs"] == w.num_steps * count(w)
    assert all(op.macs == op.batch * op.m * op.k * op.n for op in tr.ops if op.is_gemm)


def test_trace_costs_padded_caption_tokens_unless_told_the_valid_count():
    w = get_workload("opensora-v1.0-16x256x256")
    padded, valid = build_trace(w), build_trace(w, text_tokens=12)
    assert padded.meta["text_tokens"] == padded.meta["text_tokens_padded"] == 120
    assert valid.meta["text_tokens"] == 12 and valid.meta["text_tokens_padded"] == 120
    assert valid.summary()["total_macs"] == w.num_steps * analytic_macs_per_forward(w, ln=12)
    kv = next(op for op in valid.step_ops(0) if op.name == "blocks.0.cross_attn.kv_linear")
    assert kv.m == 2 * 12  # CFG batch x valid tokens
    for bad in (0, 121, 2.5):
        with pytest.raises(ConfigError, match="text_tokens"):
            build_trace(w, text_tokens=bad)


def test_opensora_512_trace_shape():
    tr = build_trace(get_workload("opensora-v1.0-16x512x512"))
    step0 = tr.step_ops(0)
    qk = next(op for op in step0 if op.name == "blocks.0.attn.qk")
    assert (qk.batch, qk.m, qk.k, qk.n) == (2 * 16 * 16, 1024, 72, 1024)  # B*T*H, S, D, S
    tqk = next(op for op in step0 if op.name == "blocks.0.attn_temp.qk")
    assert (tqk.batch, tqk.m, tqk.k, tqk.n) == (2 * 1024 * 16, 16, 72, 16)
    fc1 = next(op for op in step0 if op.name == "blocks.5.mlp.fc1")
    assert (fc1.m, fc1.k, fc1.n, fc1.block) == (2 * 16384, 1152, 4608, 5)
    kinds = {op.kind for op in step0}
    assert {
        "linear",
        "conv",
        "matmul_qk",
        "matmul_av",
        "softmax",
        "layernorm",
        "modulate",
        "gelu",
        "silu",
        "elementwise",
        "embedding",
    } <= kinds
    assert [op.step for op in tr.ops[::800]] == list(range(100))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_trace_file_round_trip(tmp_path, suffix):
    tr = annotate_trace(build_trace(get_workload("stdit-tiny")), get_recipe("tsq-tsw-w4a8"))
    back = Trace.load(tr.save(tmp_path / f"t{suffix}"))
    assert back.ops == tr.ops and back.meta == tr.meta and back.version == TRACE_VERSION


def test_trace_of_another_version_is_refused(tmp_path):
    tr = build_trace(get_workload("stdit-tiny"))
    tr.version = TRACE_VERSION + 1
    path = tr.save(tmp_path / "future.parquet")
    with pytest.raises(ConfigError, match="trace_version"):
        Trace.load(path)


def test_recipe_annotation_shows_weight_sets_smoothing_and_dynamic_ops():
    tr = build_trace(get_workload("stdit-tiny"))  # 10 steps, depth 2
    tsq = annotate_trace(tr, get_recipe("tsq-tsw-w8a8"))
    asq = annotate_trace(tr, get_recipe("asq-w8a8"))
    assert tsq.meta["step_to_set"] == list(range(10)) and asq.meta["step_to_set"] == [0] * 10
    s_tsq, s_asq = tsq.summary(), asq.summary()
    assert s_tsq["weight_sets"] == 10 and s_asq["weight_sets"] == 1
    assert s_tsq["weight_storage_bytes"] - s_tsq["float_weight_bytes"] == 10 * (
        s_asq["weight_storage_bytes"] - s_asq["float_weight_bytes"]
    )
    smooth = [op.name for op in asq.step_ops(0) if op.kind == "smooth_mul"]
    assert smooth == [
        f"blocks.{i}.{layer}.smooth"
        for i in range(2)
        for layer in ("attn_temp.qkv", "cross_attn.q_linear", "cross_attn.kv_linear", "mlp.fc2")
    ]
    dyn = annotate_trace(tr, get_recipe("dynamic-w8a8"))
    n_linear = sum(1 for op in tr.step_ops(0) if op.kind == "linear" and op.block >= 0)
    assert sum(op.kind == "dyn_stats" for op in dyn.step_ops(0)) == n_linear
    assert sum(op.kind == "dyn_rescale" for op in dyn.step_ops(0)) == n_linear
    assert all(op.kind != "smooth_mul" for op in dyn.ops)
    g4 = annotate_trace(tr, get_recipe("groups4-w6a6"))
    assert g4.meta["step_to_set"] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
