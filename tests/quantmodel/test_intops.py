"""Vector-unit ops: integer kernels bit-exact vs the float64 reference, close to the float ops;
fp16 mode close to float64 and order-defined."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from quantmodel.intarith import ckernels
from quantmodel.intarith import intops as io
from quantmodel.intarith import reference as ref
from workloads.errors import ConfigError

KERNELS = ["softmax_int", "layernorm_int", "gelu_int", "silu_int"]
SCALES = [2.0**-30, 1.37e-7, 2.0**-13, 3e-4, 2.0**-12, 0.01, 0.3]


def int_input(g, shape, scale, real_std=3.0):
    x = torch.randn(shape, generator=g, dtype=torch.float64) * real_std
    return torch.round(x / scale).clamp(-(2**31), 2**31 - 1).to(torch.int32)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("scale", SCALES)
def test_int_kernels_bit_exact_vs_reference(name, scale):
    g = torch.Generator().manual_seed(int(-math.log2(scale) * 10))
    q = int_input(g, (3, 5, 37), scale)
    q[0, 0] = 0  # all-zero row
    q[0, 1] = q[0, 1, :1]  # constant row
    q[1, 0, ::2] = 2**31 - 1  # saturating extremes
    q[1, 0, 1::2] = -(2**31)
    got, s_got = getattr(io, name)(q, scale)
    want, s_want = getattr(ref, name)(q, scale)
    assert got.dtype == torch.int32
    assert s_got == s_want
    assert int((got.double() != want).sum()) == 0


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(KERNELS), st.floats(1e-9, 0.5), st.integers(1, 300), st.integers(0, 2**31))
def test_int_kernels_bit_exact_random(name, scale, n, seed):
    g = torch.Generator().manual_seed(seed)
    q = int_input(g, (4, n), scale, real_std=float(torch.rand(1, generator=g)) * 20)
    got, _ = getattr(io, name)(q, scale)
    want, _ = getattr(ref, name)(q, scale)
    assert torch.equal(got.double(), want)


def test_int_kernels_close_to_float_ops():
    g = torch.Generator().manual_seed(0)
    scale = 1.37 * 2.0**-20
    q = int_input(g, (4, 64, 96), scale)
    x = q.double() * scale
    o, s = io.softmax_int(q, scale)
    assert (o.double() * s - torch.softmax(x, -1)).abs().max() < 1 / 128 + 2e-3  # 7-bit output, floor
    o, s = io.layernorm_int(q, scale)
    assert (o.double() * s - F.layer_norm(x, (96,), eps=1e-6)).abs().max() < 1e-3
    o, s = io.gelu_int(q, scale)  # i-GELU (erf polynomial) vs the model's tanh GELU
    assert (o.double() * s - F.gelu(x, approximate="tanh")).abs().max() < 0.02
    o, s = io.silu_int(q, scale)
    assert (o.double() * s - F.silu(x)).abs().max() < 2e-3


def test_softmax_int_one_hot_saturates_and_rows_sum_below_one():
    q = torch.tensor([[0, -(10**6), -(10**6), -(10**6)], [5, 5, 5, 5]], dtype=torch.int32)
    o, s = io.softmax_int(q, 1e-4)
    assert s == 2.0**-7
    assert o[0].tolist() == [127, 0, 0, 0]
    assert o[1].tolist() == [31, 31, 31, 31]  # floor of 128/4 minus the i-exp floors
    o4, s4 = io.softmax_int(q, 1e-4, out_bits=4)
    assert s4 == 2.0**-3 and o4[0, 0] == 7


@pytest.mark.parametrize("fn", ["modulate_int", "gated_add_int"])
def test_fixed_point_modulate_and_gate_exact_and_close(fn):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 30, 16, generator=g, dtype=torch.float64) * 4
    a = torch.randn(2, 1, 16, generator=g, dtype=torch.float64)
    b = torch.randn(2, 1, 16, generator=g, dtype=torch.float64) * 0.5
    s_x, s_a, s_b = 2.0**-10, 0.013, 0.0021
    q_x, q_a, q_b = (torch.round(t / s).to(torch.int32) for t, s in ((x, s_x), (a, s_a), (b, s_b)))
    xs, as_, bs = q_x.double() * s_x, q_a.double() * s_a, q_b.double() * s_b
    for s_out, (qmin, qmax) in ((0.05, (-127, 127)), (2.0**-12, (-(2**31), 2**31 - 1))):
        if fn == "modulate_int":  # x * (1 + scale) + shift with shift = a, scale = b
            got = io.modulate_int(q_x, s_x, q_a, s_a, q_b, s_b, s_out, qmin, qmax)
            want = ref.modulate_int(q_x, s_x, q_a, s_a, q_b, s_b, s_out, qmin, qmax)
            exact = xs * (1 + bs) + as_
            mag, fac = xs.abs(), (1 + bs).abs()  # Q16 factor error 2^-17 acts on |x|
        else:  # x + gate * y with y = x.flip, gate = b
            q_y = q_x.flip(1)
            got = io.gated_add_int(q_x, s_x, q_y, s_x, q_b, s_b, s_out, qmin, qmax)
            want = ref.gated_add_int(q_x, s_x, q_y, s_x, q_b, s_b, s_out, qmin, qmax)
            exact = xs + bs * q_y.double() * s_x
            mag, fac = q_y.double().abs() * s_x, bs.abs()
        assert torch.equal(got.double(), want)
        target = exact / s_out
        inside = (target > qmin + 1) & (target < qmax - 1)
        s_t = s_out / 2**8  # three roundings at s_t, the Q16 factor, the final rounding
        bound = 0.5 + (mag * 2.0**-17 + s_t * (fac / 2 + 1.5)) / s_out + 1e-9
        assert ((got.double() - target).abs() <= bound)[inside].all()
        assert (got[target > qmax + 1] == qmax).all() and (got[target < qmin - 1] == qmin).all()
        if qmax == 127:
            assert (target.abs() > 128).any()  # the saturating case is exercised


def test_int_kernels_reject_bad_input():
    with pytest.raises(ConfigError):
        io.softmax_int(torch.zeros(2, 3, dtype=torch.int32), 0.0)
    with pytest.raises(ConfigError):
        io.gelu_int(torch.zeros(3), 0.1)  # float input
    with pytest.raises(ConfigError):
        io.softmax_int(torch.zeros(2, 3, dtype=torch.int32), 2.0)  # coarser than ln 2
    with pytest.raises(ConfigError):
        io.softmax_int(torch.zeros(2, 3, dtype=torch.int32), 0.01, out_bits=7)


def test_isqrt_exact():
    v = torch.cat(
        [
            torch.arange(0, 2000),
            torch.randint(0, 2**51, (2000,), generator=torch.Generator().manual_seed(1)),
            torch.tensor([2**50, 2**50 - 1, (2**25 + 1) ** 2, (2**25 + 1) ** 2 - 1]),
        ]
    )
    r = io.isqrt(v)
    assert ((r * r <= v) & ((r + 1) * (r + 1) > v)).all()
    # past float64's 53 bits: squares and their neighbours up to 2^62, where fl(v) and the float
    # square root round (the integer corrections must undo it)
    big = [n * n + d for n in (2**27 + 3, 2**30 - 1, 2**31 - 1, 3037000499 // 2) for d in (-1, 0, 1)] + [2**62 - 1]
    rb = io.isqrt(torch.tensor(big))
    assert rb.tolist() == [math.isqrt(b) for b in big]
    assert torch.equal(r.double(), ref.isqrt(v.double()))


# ---- fp16 mode ------------------------------------------------------------------------------------------
def test_fp16_ops_close_to_float64_and_fp16_typed():
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(4, 33, 96, generator=g) * 3).half()
    xd = x.double()
    sh = torch.randn(4, 1, 96, generator=g).half()
    sc = (torch.randn(4, 1, 96, generator=g) * 0.3).half()
    cases = [
        (io.softmax_fp16(x), torch.softmax(xd, -1), 1e-3),
        (io.layernorm_fp16(x), F.layer_norm(xd, (96,), eps=1e-6), 4e-3),
        (io.gelu_fp16(x), F.gelu(xd, approximate="tanh"), 1e-2),
        (io.silu_fp16(x), F.silu(xd), 1e-2),
        (io.modulate_fp16(x, sh, sc), xd * (1 + sc.double()) + sh.double(), 2e-2),
        (io.gated_add_fp16(x, x.flip(1), sc), xd + sc.double() * xd.flip(1), 2e-2),
    ]
    for got, want, tol in cases:
        assert got.dtype == torch.float16
        assert (got.double() - want).abs().max() <= tol


def test_tree_sum_order_is_defined():
    x = torch.tensor([1e8, 1.0, -1e8, 1.0, 3.0], dtype=torch.float32)
    # padded to 8: [1e8+3, 1+0, -1e8+0, 1+0] -> 3 is lost in 1e8 (fp32 spacing 8) -> [0, 2] -> 2;
    # a left-to-right fp32 sum gives 4: the tree fixes which roundings happen
    assert float(io.tree_sum(x)) == 2.0
    y = torch.randn(7, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(io.tree_sum(y), io.tree_sum(y.clone()))
    assert torch.allclose(io.tree_sum(y).double(), y.double().sum(-1), atol=1e-4)


# ---- fp16 ops == fp32 op rounded to fp16 (the identity the fp16 kernels rely on) -------------------------
def _same_fp16(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality of fp16 tensors, any NaN equal to any NaN (payloads are not defined values)."""
    nan = torch.isnan(a)
    return bool(torch.equal(nan, torch.isnan(b))) and bool(
        torch.equal(a.view(torch.int16)[~nan], b.view(torch.int16)[~nan])
    )


@pytest.mark.parametrize("op", [torch.add, torch.sub, torch.mul])
def test_fp16_op_equals_fp32_op_rounded_on_every_fp16_value(op):
    """Every fp16 bit pattern (subnormals, +-0, +-65504, inf, NaN) against random and edge partners,
    through the vectorised (contiguous), scalar (strided) and broadcast loops."""
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    g = torch.Generator().manual_seed(1)
    edge = torch.tensor(
        [
            0.0,
            -0.0,
            6e-8,
            -6e-8,
            6.1e-5,
            1.0,
            -1.0,
            2.0,
            0.5,
            65504.0,
            -65504.0,
            1e-3,
            float("inf"),
            -float("inf"),
            3.0,
            1.0009765625,
        ],
        dtype=torch.float16,
    )
    for t in range(6):
        partner = every[torch.randint(0, 2**16, (2**16,), generator=g)]
        want = op(every.float(), partner.float()).to(torch.float16)
        assert _same_fp16(op(every, partner), want)
        assert _same_fp16(op(every[t::7], partner[t::7]), want[t::7])
    for e in edge:  # broadcast of one partner, as the per-channel modulation/gate operands do
        assert _same_fp16(op(every, e), op(every.float(), e.float()).to(torch.float16))
        assert _same_fp16(
            op(every.reshape(256, 256), e.reshape(1, 1).expand(256, 1)),
            op(every.float(), e.float()).to(torch.float16).reshape(256, 256),
        )


def _fp32_path_kernels():
    """The fp16 kernels as first written (every step in fp32, then rounded): the definition."""
    h = io._h

    def modulate(x, shift, scale):
        one_p = h(1.0 + h(scale).float())
        return h(h(h(x).float() * one_p.float()).float() + h(shift).float())

    def gated_add(x, y, gate):
        return h(h(x).float() + h(h(gate).float() * h(y).float()).float())

    def softmax(x):
        d = h(x.float() - x.amax(-1, keepdim=True).float())
        e = h(torch.exp(d.float()))
        return h(e.float() * (1.0 / io.tree_sum(e)).unsqueeze(-1))

    return modulate, gated_add, softmax


def test_fp16_kernels_bit_identical_to_fp32_path():
    modulate, gated_add, softmax = _fp32_path_kernels()
    g = torch.Generator().manual_seed(2)
    for mag in (1e-6, 1.0, 300.0, 3e4):  # subnormal products, normal, overflow to inf
        x = (torch.randn(2, 33, 24, generator=g) * mag).half()
        y = (torch.randn(2, 33, 24, generator=g) * mag).half()
        sh, sc, gt = (torch.randn(2, 1, 24, generator=g) * mag for _ in range(3))
        assert _same_fp16(io.modulate_fp16(x, sh, sc), modulate(x, sh, sc))
        assert _same_fp16(io.gated_add_fp16(x, y, gt), gated_add(x, y, gt))
        assert _same_fp16(io.softmax_fp16(x), softmax(x))
        assert _same_fp16(io.softmax_fp16(x[..., ::3]), softmax(x[..., ::3]))


def test_blocked_fp16_kernels_equal_the_whole_tensor_computation():
    """Large tensors run in cache-sized blocks (rows for LayerNorm/softmax): the same bits as one pass."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(3, 700, 384, generator=g) * 4).half()  # > CHUNK_ELEMS, rows not a block multiple
    s = (torch.randn(2, 6, 333, 64, generator=g) * 6).half()
    assert x.numel() > io.CHUNK_ELEMS and s.numel() > io.CHUNK_ELEMS

    def same(a, b):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))

    assert same(io.gelu_fp16(x), io._gelu_fp16(x))
    assert same(io.layernorm_fp16(x), io._layernorm_fp16(x, 1e-6))
    assert same(io.softmax_fp16(s), io._softmax_fp16_last(s))
    assert same(io.softmax_fp16(s, dim=2), io._softmax_fp16_last(s.movedim(2, -1)).movedim(-1, 2))
    y = (torch.randn(3, 700, 384, generator=g) * 4).half()
    gate, shift = torch.randn(3, 1, 384, generator=g), torch.randn(3, 1, 384, generator=g)
    assert same(io.gated_add_fp16(x, y, gate), x + gate.half() * y)
    assert same(io.modulate_fp16(x, shift, gate), x * (1.0 + gate.half().float()).half() + shift.half())


@pytest.mark.parametrize("c_kernels", [True, False], ids=["c", "torch"])
@pytest.mark.parametrize("fn", ["modulate_int", "gated_add_int"])
def test_fixed_point_modulate_and_gate_exact_at_int32_extremes_on_large_tensors(fn, c_kernels):
    """Full int32-range operands (saturating products, ties) over more than one 64K block, on the C
    pass and on the torch ops (the tail CUDA compiles)."""
    g = torch.Generator().manual_seed(9)
    lo, hi = -(2**31), 2**31 - 1
    q_x = torch.randint(lo, hi, (2, 260, 128), generator=g, dtype=torch.int64).to(torch.int32)
    q_x[0, :5] = torch.tensor([lo, hi, 0, 1, -1], dtype=torch.int32)[:, None]
    q_y = torch.randint(-(2**20), 2**20, (2, 260, 128), generator=g, dtype=torch.int32)
    q_a = torch.randint(lo, hi, (2, 1, 128), generator=g, dtype=torch.int64).to(torch.int32)
    q_b = torch.randint(-(2**16), 2**16, (2, 1, 128), generator=g, dtype=torch.int32)
    for s_x, s_a, s_b, s_out, (qmin, qmax) in (
        (2.0**-10, 0.013, 0.0021, 0.05, (-127, 127)),
        (1e-3, 3e-5, 0.7, 2.0**-12, (-(2**31), 2**31 - 1)),
        (0.37, 1e-6, 1e-4, 1e-3, (-(2**23) + 1, 2**23 - 1)),
    ):
        with contextlib.nullcontext() if c_kernels else ckernels.disabled():
            if fn == "modulate_int":
                got = io.modulate_int(q_x, s_x, q_a, s_a, q_b, s_b, s_out, qmin, qmax)
                want = ref.modulate_int(q_x, s_x, q_a, s_a, q_b, s_b, s_out, qmin, qmax)
            else:
                got = io.gated_add_int(q_x, s_x, q_y, s_a * 100, q_b, s_b, s_out, qmin, qmax)
                want = ref.gated_add_int(q_x, s_x, q_y, s_a * 100, q_b, s_b, s_out, qmin, qmax)
        assert got.dtype == torch.int32 and torch.equal(got.double(), want)


def test_blocked_integer_kernels_equal_reference_on_large_tensors():
    """GELU and softmax (int mode) run in cache-sized blocks on large tensors: still the reference."""
    g = torch.Generator().manual_seed(13)
    x = torch.randint(-(2**20), 2**20, (3, 200, 160), generator=g, dtype=torch.int32)  # 96000 elements
    assert x.numel() > io.CHUNK_ELEMS
    q, s = io.gelu_int(x, 3e-5)
    rq, rs = ref.gelu_int(x, 3e-5)
    assert s == rs and torch.equal(q.double(), rq)
    q, s = io.softmax_int(x, 2e-5, out_bits=8)
    rq, rs = ref.softmax_int(x, 2e-5, 8)
    assert s == rs and torch.equal(q.double(), rq)


def test_tree_sum_equals_the_zero_padded_pairwise_tree():
    """tree_sum (level 1 without the padded copy, later levels in place) == the textbook definition:
    pad to a power of two with +0, add halves until one value is left (signed zeros included)."""

    def padded_tree(x, dim=-1):
        x = x.to(torch.float32).movedim(dim, -1)
        n = x.shape[-1]
        x = F.pad(x, (0, (1 << max(0, (n - 1).bit_length())) - n))
        while x.shape[-1] > 1:
            h = x.shape[-1] // 2
            x = x[..., :h] + x[..., h:]
        return x[..., 0]

    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 7, 8, 9, 16, 17, 64, 65, 100, 384, 385):
        x = (torch.randn(37, n, generator=g) * torch.logspace(-8, 8, n)).half()
        x[0] = -0.0
        for dim in (-1, 0):
            assert torch.equal(io.tree_sum(x, dim).view(torch.int32), padded_tree(x, dim).view(torch.int32)), n
        xf = torch.randn(5, n, generator=g) * 1e30  # overflowing partial sums
        assert torch.equal(io.tree_sum(xf).view(torch.int32), padded_tree(xf).view(torch.int32)), n


@pytest.mark.skipif(
    ckernels.lib() is None, reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)"
)
def test_compiled_fp16_kernels_equal_the_torch_ops_bit_for_bit():
    """The C loops of the fp16 vector unit (around torch's exp / tanh / rsqrt) give the torch ops'
    fp16 values: odd widths, rows of one element, blocked tensors, extremes, signed zeros, non-contiguous
    inputs; GELU on every finite fp16 value; LayerNorm + modulate fused equals the two ops."""
    g = torch.Generator().manual_seed(11)

    def same(f, *args):
        got = f(*args)
        with ckernels.disabled():
            want = f(*args)
        return got.dtype == want.dtype and torch.equal(got.view(torch.int16), want.view(torch.int16))

    for shape in [(2, 7, 33), (3, 5, 1), (2, 600, 130)]:
        x = (torch.randn(shape, generator=g) * 3).half()
        x.view(-1)[:5] = torch.tensor([0.0, -0.0, 65504, -65504, 6e-8])
        y = torch.randn(shape, generator=g).half()
        gate = torch.randn(shape[0], 1, shape[2], generator=g).half()
        sh, sc = torch.randn(shape[0], 1, shape[2], generator=g), torch.randn(shape[0], 1, shape[2], generator=g)
        scores = torch.randn(shape, generator=g) * 300  # some beyond fp16 after scaling: saturate
        assert same(io.softmax_fp16, x) and same(io.softmax_fp16_scaled, scores, 0.7)
        assert same(io.layernorm_fp16, x, 1e-6) and same(io.gelu_fp16, x)
        assert same(io.gated_add_fp16, x, y, gate) and same(io.modulate_fp16, x, sh, sc)
        assert same(io.layernorm_fp16, x.transpose(0, 1).contiguous().transpose(0, 1), 1e-6)
        fused = io.layernorm_modulate_fp16(x.transpose(0, 1).contiguous().transpose(0, 1), sh, sc)
        inv = torch.rand(shape[2], generator=g) * 3 + 0.1
        mod6 = torch.randn(shape[0], 6, shape[2], generator=g)  # chunks of a [B, 6, C] tensor: strided rows
        fused_inv = io.layernorm_modulate_fp16(x, mod6[:, 0:1], mod6[:, 1:2], 1e-6, inv)
        q16 = torch.randint(-32767, 32768, shape, generator=g, dtype=torch.int16)
        s_y = float(torch.tensor(3e-3, dtype=torch.float32))
        res = [
            io.residual_fp16(x, y, None, None),
            io.residual_fp16(x, y, None, mod6[:, 2:3]),
            io.residual_fp16(x, q16, s_y, mod6[:, 2:3]),
            io.residual_fp16(x, q16.to(torch.int8), s_y * 1e4, None),
        ]
        with ckernels.disabled():
            assert torch.equal(fused, io.modulate_fp16(io.layernorm_fp16(x, 1e-6), sh, sc))
            want = io.modulate_fp16(io.layernorm_fp16(x, 1e-6), mod6[:, 0:1] * inv, (1 + mod6[:, 1:2]) * inv - 1)
            assert torch.equal(fused_inv, want)
            deq = (q16.float() * s_y).half()
            deq8 = (
                (q16.to(torch.int8).float() * float(torch.tensor(s_y * 1e4, dtype=torch.float32)))
                .clamp(-65504, 65504)
                .half()
            )
            wants = [x + y, io.gated_add_fp16(x, y, mod6[:, 2:3]), io.gated_add_fp16(x, deq, mod6[:, 2:3]), x + deq8]
        assert io.residual_fp16(x, q16.to(torch.int8), s_y * 1e4, None) is None  # not a float32 scale
        res[3] = io.residual_fp16(x, q16.to(torch.int8), float(torch.tensor(s_y * 1e4, dtype=torch.float32)), None)
        assert all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(res, wants))
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    assert same(io.gelu_fp16, every[torch.isfinite(every)].contiguous())


@pytest.mark.skipif(
    ckernels.lib() is None, reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)"
)
@pytest.mark.parametrize("scale", [2.0**-30, 3e-4, 0.01, 0.3])
def test_compiled_int_kernels_equal_the_torch_ops(scale):
    """The C loops of the integer kernels give the torch ops' integers (and so the reference's): int32
    extremes, constant rows, broadcast gates / per-batch parameters, int16 inputs."""
    g = torch.Generator().manual_seed(13)
    x = int_input(g, (2, 9, 37), scale)
    x[0, 0] = 2**31 - 1
    x[0, 1] = -(2**31)
    x[1, 2] = 5  # a constant row
    y16 = torch.randint(-32767, 32768, (2, 9, 37), generator=g, dtype=torch.int16)
    prm = torch.randint(-32767, 32768, (2, 1, 37), generator=g, dtype=torch.int32)
    cases = [
        (io.softmax_int, (x, scale, 8)),
        (io.softmax_int, (x, scale, 6)),
        (io.layernorm_int, (x, scale)),
        (io.gelu_int, (x, scale)),
        (io.gelu_int, (y16, scale)),
        (io.modulate_int, (x, scale, prm, 1e-3, prm, 2e-5, 0.07, -127, 127)),
        (io.gated_add_int, (x, scale, y16, 3e-3, prm, 1e-5, 0.5, -(2**23) + 1, 2**23 - 1)),
        (io.gated_add_int, (x, scale, y16, 3e-3, torch.ones(1, dtype=torch.int32), 1.0, 2e-3, -(2**23), 2**23)),
    ]
    for fn, args in cases:
        if fn is io.softmax_int and scale * 2 ** io.working_shift(scale) > math.log(2):
            continue
        got = fn(*args)
        with ckernels.disabled():
            want = fn(*args)
        got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
        assert got.dtype == want.dtype and torch.equal(got, want), fn.__name__


@pytest.mark.skipif(
    ckernels.lib() is None, reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)"
)
def test_compiled_softmax_gelu_layernorm_equal_the_torch_ops_over_working_scales_and_constants():
    """qm_softmax_int / qm_gelu_int / qm_layernorm_int take narrower (int32 / float64) lanes where the constants allow (builds
    without AVX-512 DQ) and int64 loops otherwise: the same integers as the torch ops at scales over the
    whole working range (every working shift, real spreads from tight to saturating), and for GELU
    constants on both sides of the narrow path's limits."""
    g = torch.Generator().manual_seed(17)
    for scale in [2.0**e for e in torch.linspace(-31, -0.6, 23).tolist()]:
        for spread in (0.05, 3.0, 3e4):
            x = int_input(g, (4, 33, 19), scale, spread)
            x[0, 0, :3] = torch.tensor([2**31 - 1, -(2**31), 0], dtype=torch.int32)
            for fn, args in (
                (io.softmax_int, (x, scale, 8)),
                (io.softmax_int, (x, scale, 4)),
                (io.gelu_int, (x, scale)),
                (io.layernorm_int, (x, scale)),
            ):
                if fn is io.softmax_int and scale * 2 ** io.working_shift(scale) > math.log(2):
                    continue
                got = fn(*args)[0]
                with ckernels.disabled():
                    want = fn(*args)[0]
                assert torch.equal(got, want), (fn.__name__, scale, spread)
    dll = ckernels.lib()
    x = int_input(g, (3000,), 2.0**-12, 3e3)
    x[:4] = torch.tensor([2**31 - 1, -(2**31), 0, -1], dtype=torch.int32)
    for k, q_bb, q_one, t in (
        (0, 10245, 125_000_000, 28),
        (3, 46340, 2**30 - 1, 31),
        (0, 46341, 2**30, 31),
        (2, 60_000, 2**33, 40),
        (31, 5, 20, 6),
        (0, 10245, 2**31, 33),
    ):
        out = torch.empty_like(x)
        dll.qm_gelu_int(x.data_ptr(), x.numel(), k, 2**io.SAT_BITS, q_bb, q_one, t, out.data_ptr())
        assert torch.equal(out, io._gelu_int_block(x, k, q_bb, q_one, t)), (k, q_bb, q_one, t)
