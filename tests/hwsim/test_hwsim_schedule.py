"""The schedule: which ops run fused, the DRAM lower bound the result reports them against, and
balanced tiles. Traces are the saved stdit-tiny fixtures or built from the trace format."""

import dataclasses
from pathlib import Path

import pytest

import hwsim
from hwsim.chain import ChainUnit
from hwsim.schedule import group_ops
from hwsim.tiling import AttentionUnit, GemmUnit, plan_attention, plan_gemm
from workloads.trace import Op, Trace

DATA = Path(__file__).resolve().parents[1] / "data" / "hwsim"


def tiny(recipe: str) -> Trace:
    return Trace.load(DATA / f"stdit-tiny-{recipe}.parquet")


def test_norm_modulate_and_residual_fuse_into_their_gemms():
    res = hwsim.simulate(tiny("asq-w8a8"), hwsim.load_hw("edge-npu"))
    row = {r["name"]: r for r in res.per_op}
    assert row["blocks.0.norm1"]["fused_into"] == row["blocks.0.modulate1"]["fused_into"] == "blocks.0.attn.qkv"
    # fc2 and its residual add run in fc1's row-block chain (the hidden tensor stays in SRAM)
    assert row["blocks.0.res_mlp"]["fused_into"] == row["blocks.0.mlp.fc2"]["fused_into"] == "blocks.0.mlp.fc1"
    assert row["blocks.0.attn.softmax"]["fused_into"] == "blocks.0.attn.qk"
    # fc1's epilogue applies GELU and fc2's SmoothQuant multiply, so it writes fc2's INT8 input
    assert row["blocks.0.mlp.fc2.smooth"]["fused_into"] == "blocks.0.mlp.fc1"


def test_dram_bytes_next_to_their_lower_bound():
    for recipe in ("asq-w8a8", "dynamic-w8a8", "fp16"):
        t = tiny(recipe)
        res = hwsim.simulate(t, hwsim.load_hw("edge-npu-lite"))
        steps = t.num_steps
        assert res.swap_count == 0
        assert res.dram_bytes == steps * sum(r["dram_bytes"] for r in res.per_op)
        assert res.dram_lower_bound_bytes == steps * sum(r["dram_lower_bound_bytes"] for r in res.per_op)
        assert 0 < res.dram_lower_bound_bytes <= res.dram_bytes
        assert res.dram_over_bound == res.dram_bytes / res.dram_lower_bound_bytes
        assert all(r["dram_lower_bound_bytes"] == 0 for r in res.per_op if r["fused_into"])


def test_residual_stream_is_written_before_a_smoothing_multiply():
    """proj -> residual add -> the next GEMM's SmoothQuant multiply: the sum is read again later
    (the next residual add), so the epilogue stops after the add and writes it in FP16."""
    groups = group_ops(tiny("asq-w8a8").step_ops(0))
    ops = tiny("asq-w8a8").step_ops(0)
    for g in groups:
        kinds = [ops[j].kind for j in g.post]
        if "elementwise" in kinds and any(ops[j].input_bytes > ops[j].output_bytes for j in g.post):
            assert "smooth_mul" not in kinds, [ops[j].name for j in g.post]


def test_attention_query_rows_in_balanced_blocks():
    """1,024 query rows of which 896 fit at a time run as equal blocks (512 + 512 or finer), not
    896 + 128."""
    hw = hwsim.load_hw("edge-npu")
    u = AttentionUnit(
        batch=512,
        m=1024,
        n=1024,
        d=72,
        dv=72,
        precision_qk="int8",
        precision_av="int8",
        q_bytes=512 * 1024 * 72,
        k_bytes=512 * 1024 * 72,
        v_bytes=512 * 1024 * 72,
        out_bytes=512 * 1024 * 72 * 2,
    )
    bt, mq, nk = plan_attention(u, hw).tile_shape
    assert mq < u.m and u.m % mq == 0, mq


def test_gemm_rows_in_balanced_blocks():
    hw = hwsim.load_hw("edge-npu-lite")
    t = Trace(
        ops=[
            Op(
                step=0,
                name="x",
                kind="linear",
                batch=1,
                m=1000,
                k=4096,
                n=4096,
                macs=1000 * 4096 * 4096,
                weight_bytes=4096 * 4096,
                input_bytes=1000 * 4096,
                output_bytes=1000 * 4096 * 2,
                w_bits=8,
                a_bits=8,
            )
        ]
    )
    sys_mod = __import__("sys").modules["hwsim.simulate"]
    plans = {}
    us = sys_mod._Units(t.ops, hw, hwsim.swap.plan_weights(t, hw, "jit"), plans)
    bt, mt, kt, nt, wr = us.plans[0].tile_shape
    blocks = -(-1000 // mt)
    assert blocks > 1 and blocks * mt - 1000 < hw.mac.rows * blocks  # the last block is not a sliver


def _step_units(t: Trace, hw):
    sim = __import__("sys").modules["hwsim.simulate"]
    ops = [o for o in t.ops if o.step == 0]
    return sim._Units(ops, hw, hwsim.swap.plan_weights(t, hw, "jit"), {})


def test_mlp_runs_in_row_blocks_with_its_hidden_tensor_in_sram():
    """fc1 -> GELU -> fc2 as one chain of row blocks when the hidden tensor does not fit the
    activation buffer but a row block of it does: the hidden tensor is never written to DRAM (the
    chain writes only fc2's output, after its residual add), and fewer rows fit a smaller buffer."""
    t = tiny("asq-w8a8")
    rows = {}
    for abuf in (65536, 32768):
        hw = hwsim.with_overrides(hwsim.load_hw("edge-npu"), {"sram.activation_buffer_bytes": abuf})
        us = _step_units(t, hw)
        i = us.labels.index("blocks.0.mlp.fc1")
        chain, plan = us.units[i], us.plans[i]
        assert isinstance(chain, ChainUnit)
        names = [us.ops[j].name for j in us.covered[i]]
        assert "blocks.0.mlp.fc2" in names and "blocks.0.res_mlp" in names
        hidden = chain.first.out_bytes  # fc2's INT8 input, after fc1's GELU + SmoothQuant epilogue
        assert hidden > abuf // 2 and chain.held_bytes(chain.rows) <= abuf // 2
        assert plan.counts["dram_wr"] == chain.second.out_bytes  # the hidden tensor: 0 bytes to DRAM
        rows[abuf] = chain.rows
        res = hwsim.simulate(t, hw)
        assert {r["name"]: r for r in res.per_op}["blocks.0.mlp.fc2"]["fused_into"] == "blocks.0.mlp.fc1"
    assert rows[32768] < rows[65536] < 256


def test_tensor_kept_in_sram_is_taken_from_the_consumers_tiles():
    """A tensor held in the activation buffer (a hand-over or a chain's hidden block) leaves its
    bytes out of the tiles of the unit that reads it: fewer rows per tile, within what is left."""
    hw = hwsim.load_hw("edge-npu-lite")
    u = GemmUnit(1, 4096, 1024, 1024, "int8", 4096 * 1024, 1024 * 1024, 4096 * 1024, False, False)
    abuf = hw.sram.activation_buffer_bytes
    free, held = plan_gemm(u, hw), plan_gemm(dataclasses.replace(u, held_bytes=abuf // 2), hw)
    assert held.in_cap + held.out_cap <= abuf - abuf // 2 < free.in_cap + free.out_cap
    assert held.tile_shape[1] < free.tile_shape[1]  # rows per tile


# ---- weight-set swaps ----------------------------------------------------------------------------
def _flash_hw(part: str, **extra):
    """edge-npu shrunk so stdit-tiny's TSQ+TSW weight sets (183 kB each) live in flash and one is
    copied every step, in 16 KiB read commands (12 per set)."""
    return hwsim.with_overrides(
        hwsim.load_hw("edge-npu"),
        {
            "sram.weight_buffer_bytes": 65536,
            "sram.activation_buffer_bytes": 262144,
            "dram.weight_capacity_bytes": 1_000_000,
            "flash.part": part,
            "flash.chunk_bytes": 16384,
            **extra,
        },
    )


def test_early_prefetch_hides_what_jit_cannot():
    """A step (149 us) longer than a set's copy (UFS 4.0: 80 us command latency + 44 us of data):
    copying during the previous step (early) hides it; starting it with the step (jit) cannot, the
    first layers wait for their weights. On UFS 3.1 (100 us + 87 us) the step is too short for
    early to hide it all, but it still hides more than jit."""
    t = tiny("tsq-tsw-w8a8")
    fast = _flash_hw("ufs4.0")
    jit, early = hwsim.simulate(t, fast, prefetch="jit"), hwsim.simulate(t, fast, prefetch="early")
    assert jit.weight_placement == "flash" and early.prefetch_used == "early"
    assert jit.swap_stall_s > 0 and early.swap_stall_s < 0.01 * jit.swap_stall_s
    # the result says why: jit's layers wait for their weights, early's never do
    assert jit.swap_wait_s > 0.5 * jit.swap_stall_s and early.swap_wait_s == 0
    for r in (jit, early):
        assert r.swap_wait_s + r.swap_contention_s == pytest.approx(r.swap_stall_s, rel=1e-12)
    slow = _flash_hw("ufs3.1")
    jit, early = hwsim.simulate(t, slow, prefetch="jit"), hwsim.simulate(t, slow, prefetch="early")
    assert 0 < early.swap_stall_s < jit.swap_stall_s


def test_ufs_queue_depth_and_command_latency(monkeypatch):
    """With 32 commands in flight the command latency is paid about once per set; with one in
    flight, once per 16 KiB command; a longer command latency costs more."""
    from hwsim import memory

    ufs4 = memory.FLASH_PARTS["ufs4.0"]
    monkeypatch.setitem(memory.FLASH_PARTS, "ufs4.0-qd1", dataclasses.replace(ufs4, name="ufs4.0-qd1", queue_depth=1))
    monkeypatch.setitem(
        memory.FLASH_PARTS, "ufs4.0-1ms", dataclasses.replace(ufs4, name="ufs4.0-1ms", command_latency_s=1e-3)
    )
    t = tiny("tsq-tsw-w8a8")
    stall = {
        p: hwsim.simulate(t, _flash_hw(p), prefetch="jit").swap_stall_s for p in ("ufs4.0", "ufs4.0-qd1", "ufs4.0-1ms")
    }
    swaps = t.num_steps - 1
    assert stall["ufs4.0-qd1"] - stall["ufs4.0"] > swaps * 11 * ufs4.command_latency_s * 0.9  # 11 more latencies
    assert stall["ufs4.0-1ms"] > stall["ufs4.0"] + swaps * (1e-3 - ufs4.command_latency_s) * 0.9
