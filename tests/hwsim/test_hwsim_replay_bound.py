"""The latency planner's search: the replay lower bound it prunes with never exceeds a replay (so
its attention and GEMM choices are the fastest replays of their whole ladders), and its ladders
only grow with the buffers (a bigger chip keeps every block a smaller one tries)."""

import dataclasses

import pytest

import hwsim
from hwsim.simulate import _fastest_replay, replay_cycles
from hwsim.tiling import (
    AttentionUnit,
    GemmUnit,
    _GemmSearch,
    attention_blockings,
    block_ladder,
    gemm_shape,
    plan_attention,
    plan_gemm,
)

CHIPS = ("edge-npu-lite", "edge-npu", "edge-npu-pro")


def _latency(name: str, **sram) -> hwsim.HWConfig:
    return hwsim.with_overrides(hwsim.load_hw(name), {"planner.objective": "latency", **sram})


def _attention(m: int, n: int, heads: int) -> AttentionUnit:
    return AttentionUnit(
        batch=heads,
        m=m,
        n=n,
        d=64,
        dv=64,
        precision_qk="int8",
        precision_av="int8",
        q_bytes=heads * m * 64,
        k_bytes=heads * n * 64,
        v_bytes=heads * n * 64,
        out_bytes=heads * m * 64 * 2,
    )


def _gemm(m: int, k: int, n: int, **kw) -> GemmUnit:
    return GemmUnit(
        batch=1,
        m=m,
        k=k,
        n=n,
        precision="int8",
        a_bytes=m * k,
        b_bytes=k * n,
        out_bytes=m * n,
        b_per_item=False,
        b_resident=False,
        **kw,
    )


@pytest.mark.parametrize("chip", CHIPS)
def test_attention_bound_never_above_replay_and_choice_is_fastest(chip):
    hw = _latency(chip)
    for u in (_attention(1024, 1024, 12), _attention(256, 4096, 6), _attention(300, 77, 16)):
        cands = attention_blockings(u, hw, ladder=True)
        replays = [replay_cycles(plan_attention(u, hw, b), hw) for b, _ in cands]
        assert all(bound <= r for (_, bound), r in zip(cands, replays)), chip
        best = _fastest_replay(cands, lambda b, u=u: plan_attention(u, hw, b), hw)
        assert replay_cycles(best, hw) == min(replays)


@pytest.mark.parametrize("chip", CHIPS)
def test_gemm_bound_never_above_replay(chip):
    hw = _latency(chip)
    units = (
        _gemm(2048, 192, 576),
        _gemm(4096, 1152, 4608),
        _gemm(77, 4096, 1152),
        _gemm(2048, 768, 192, pre="layernorm+quantize", a_extra_sram_bpe=1.0, post="gelu", res_bytes=2048 * 192),
    )
    for u in units:
        srch = _GemmSearch(u, hw)
        bound = srch.est.bound
        for shape, _ in gemm_shape(u, hw, top=12):
            assert bound(*shape) <= replay_cycles(plan_gemm(u, hw, shape=shape), hw), (chip, u.m, shape)
        ladder = srch.ladder(False)
        for shape, b in ladder[:: max(1, len(ladder) // 40)]:  # the latency planner's candidates, spread
            assert b(*shape) <= replay_cycles(plan_gemm(u, hw, shape=shape), hw), (chip, u.m, shape)


@pytest.mark.parametrize("chip", CHIPS)
def test_gemm_choice_is_the_fastest_replay_of_its_ladder(chip):
    """The latency planner's GEMM tiling replays no slower than any tiling of its ladder: the
    pruning by lower bound loses nothing."""
    hw = _latency(chip)
    u = _gemm(2048, 768, 192, pre="layernorm+quantize", a_extra_sram_bpe=1.0, post="gelu", res_bytes=2048 * 192)
    cands = _GemmSearch(u, hw).ladder(False)
    replays = [replay_cycles(plan_gemm(u, hw, shape=s), hw) for s, _ in cands]
    best = _fastest_replay(cands, lambda s: plan_gemm(u, hw, shape=s), hw)
    assert len(cands) > 20 and replay_cycles(best, hw) == min(replays)


def test_ladders_only_grow_with_the_buffers():
    """Every attention blocking and GEMM row block a chip tries is tried by the chip with twice the
    activation buffer (the latency planner's candidate sets are monotone in the buffer)."""
    small = _latency("edge-npu-lite")
    big = dataclasses.replace(
        small, sram=dataclasses.replace(small.sram, activation_buffer_bytes=2 * small.sram.activation_buffer_bytes)
    )
    u = _attention(1024, 1024, 12)
    a_small = {b for b, _ in attention_blockings(u, small, ladder=True)}
    a_big = {b for b, _ in attention_blockings(u, big, ladder=True)}
    assert a_small < a_big
    g = _gemm(2048, 192, 576)
    fit_small, fit_big = _GemmSearch(g, small).rows_that_fit(192, 576), _GemmSearch(g, big).rows_that_fit(192, 576)
    rows_small = {x for x in block_ladder(g.m, small.mac.rows) if x <= fit_small[0]}
    rows_big = {x for x in block_ladder(g.m, big.mac.rows) if x <= fit_big[0]}
    assert rows_small < rows_big
    for u in (g, _gemm(2048, 768, 192, post="gelu", res_bytes=2048 * 192)):  # the latency planner's GEMM ladder
        g_small = {s for s, _ in _GemmSearch(u, small).ladder(False)}
        g_big = {s for s, _ in _GemmSearch(u, big).ladder(False)}
        assert g_small < g_big
    assert block_ladder(2048, 32) == sorted(block_ladder(2048, 32), reverse=True)
    assert 2048 in block_ladder(2048, 32) and 32 in block_ladder(2048, 32)
