"""The fused CUDA requantization and activation quantization (quantmodel.intarith.cudafused) give the
eager definitions' values: the uncompiled functions on the CPU against the Requantizer / ActQuantizer
(exact int64 vs the proven float64 path, near ties and saturation included), and on a GPU the
compiled kernels against the CPU."""

from fractions import Fraction

import pytest
import torch

from quantmodel.intarith import ckernels, cudafused
from quantmodel.intarith import fixedpoint as fp

# (acc, multiplier, total shift) whose quotient lies within float64 rounding of a half integer
NEAR_TIES = [(1967848214, 1171758570, 62), (708377561, 1126293188, 48), (1283343006, 1154394974, 40)]


def _constants():
    """Per-channel multipliers and shifts: near ties, ordinary, tiny (output 0), zero, saturating."""
    scales = torch.tensor([1e-12, 3e-5, 0.37, 1.0, 1.5, 2.0**20, 0.0, 3.0e9, 2.0**-62])
    m, s = fp.quantize_multipliers(scales)
    m = torch.cat([torch.tensor([t[1] for t in NEAR_TIES]), m])
    s = torch.cat([torch.tensor([t[2] - 31 for t in NEAR_TIES]), s])
    return m, s


def _acc(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    acc = torch.randint(-(2**31), 2**31, (41, n), generator=g, dtype=torch.int64)
    acc[0], acc[1], acc[2] = fp.INT32_MIN, fp.INT32_MAX, 0
    for j, (a, _, _) in enumerate(NEAR_TIES):
        acc[3:6, j] = torch.tensor([a, -a, a - 1])
    return acc.to(torch.int32)


def _oracle(a: int, m: int, s: int, q: int) -> int:
    v = round(Fraction(a * m) / Fraction(2) ** s) if s >= 0 else a * m * 2 ** (-s)
    return max(-q, min(q, v))


@pytest.mark.parametrize("out_dtype, q", [(torch.int8, 127), (torch.int16, 32767), (torch.int32, fp.INT32_MAX)])
def test_exact_int64_requantization_equals_the_float64_path_and_the_oracle(out_dtype, q):
    m, sh = _constants()
    acc = _acc(m.numel())
    for mm, ss in ((m, sh), (m[0], sh[0]), (m[5], sh[5]), (m[-2], sh[-2])):  # per channel and per tensor
        rq = fp.Requantizer(mm, ss, -q, q, out_dtype)
        with ckernels.disabled():
            want = rq(acc)
        consts = cudafused.requant_constants(torch.as_tensor(mm), torch.as_tensor(ss) + fp.MULT_BITS, acc.device)
        got = cudafused.requant_exact(acc, *consts, -q, q, out_dtype)
        assert got.dtype == out_dtype and torch.equal(got, want)
    consts = cudafused.requant_constants(m, sh + fp.MULT_BITS, acc.device)
    got = cudafused.requant_exact(acc[:8], *consts, -q, q, out_dtype)  # rows: extremes, 0, near ties
    exact = [[_oracle(a, int(mi), int(si) + 31, q) for a, mi, si in zip(row, m, sh)] for row in acc[:8].tolist()]
    assert got.long().tolist() == exact


def test_bias_fused_requantization_equals_requantizing_the_biased_accumulator(monkeypatch):
    """A linear layer's bias added inside the CUDA requantization kernel (Requantizer.with_bias) gives
    the requantization of ``acc + bias``: per channel and per tensor, biases near the int32 bound."""
    monkeypatch.setattr(cudafused, "compiled", lambda fn: fn)  # the function CUDA compiles, run as is
    m, sh = _constants()
    n = m.numel()
    acc = (_acc(n).to(torch.int64) // 4).to(torch.int32)
    bias = torch.randint(-(2**29), 2**29, (n,), generator=torch.Generator().manual_seed(4), dtype=torch.int32)
    bias[0], bias[1] = 2**29, -(2**29)
    for mm, ss in ((m, sh), (m[4], sh[4])):
        rq = fp.Requantizer(mm, ss, -32767, 32767, torch.int16)
        with ckernels.disabled():
            want = rq(acc + bias)
        assert torch.equal(rq.with_bias(acc, bias), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fused_activation_quantization_equals_the_act_quantizer(dtype):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(64, 96, generator=g) * 40).to(dtype)
    x[0, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1e4, -1e4, 0.0], dtype=dtype)  # ties and saturation
    for bits in (4, 6, 8, 12):
        aq = fp.ActQuantizer(1.0 if bits == 8 else 0.75, bits)
        with ckernels.disabled():
            want = aq(x)
        recip = torch.tensor(aq.recip, dtype=torch.float32)
        got = cudafused.act_quant(x, recip, aq.qmax, aq.out_dtype)
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_int_vector_kernels_compiled_give_the_eager_integers(tmp_path, monkeypatch):
    """The int-mode kernels that run compiled on CUDA (softmax, LayerNorm, GELU, the modulate / gated
    add tail), compiled here by Inductor's CPU backend, equal their eager form: no reassociation, the
    same floor divisions and shifts (saturated rows, all-zero rows and int32 extremes included).
    Inductor's C++ backend is built scalar (simdlen 1) into an empty cache: what CUDA runs is the graph
    lowered to Triton, not the CPU's SIMD code, and Inductor's AVX2 vectorisation gives wrong integers
    on GELU's mixed int32 / int64 arithmetic (torch 2.13, ATEN_CPU_CAPABILITY=avx2), as does a kernel
    cached under another forced CPU capability."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cudafused, "_compiled", {})
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.simdlen": 1}):  # (monkeypatch's undo would delete the key)
        _compiled_vector_kernels_equal_eager()


def _compiled_vector_kernels_equal_eager():
    from quantmodel.intarith import intops as io

    g = torch.Generator().manual_seed(0)
    q = torch.randint(-(2**20), 2**20, (37, 300), generator=g, dtype=torch.int32)
    q[0], q[1], q[2, ::2] = 0, 2**31 - 1, -(2**31)
    for scale in (1e-3, 0.6):
        k = io.working_shift(scale)
        c = (k, *io.exp_constants(scale * 2.0**k), 7)
        assert torch.equal(cudafused.compiled(io._softmax_int_rows)(q, *c), io._softmax_int_rows(q, *c))
        eps = torch.tensor(io.ln_eps_table(scale, 300, 1e-6))
        x = q.to(torch.int64)
        assert torch.equal(cudafused.compiled(io._layernorm_int_rows)(x, eps), io._layernorm_int_rows(x, eps))
        qb, qo, t, _ = io.gelu_constants(scale * 2.0**k)
        assert torch.equal(cudafused.compiled(io._gelu_int_block)(q, k, qb, qo, t), io._gelu_int_block(q, k, qb, qo, t))
    a = torch.randint(-(2**31), 2**31, (4, 50, 300), generator=g).double()
    f = torch.randint(-(2**31), 2**31, (4, 1, 300), generator=g).double()
    r = torch.randint(-(2**31), 2**31, (4, 1, 300), generator=g).double()
    # ties of the Q16 product (+-0.5, 1.5), saturation, ties of the final / 2^8 (0.5, 1.5)
    a[0, 0, :6] = torch.tensor([2.0**15, -(2.0**15), 3 * 2.0**15, 2.0**31 - 1, 128 * 2.0**16, 384 * 2.0**16])
    f[0, 0, :6], r[0, 0, :6] = 1.0, 0.0
    want = io._madd_finish(a, f, r, -127, 127)
    assert want[0, 0, :6].tolist() == [0, 0, 0, 127, 0, 2]
    assert torch.equal(cudafused.compiled(io._madd_finish)(a, f, r, -127, 127), want)


def test_fused_modulate_and_gated_add_equal_the_unfused_path(tmp_path, monkeypatch):
    """On CUDA the modulate / gated add run as one kernel with the input requantization(s) fused in
    (intops._madd_at, _madd_at2: no float64 intermediate): the same integers as the C loop and as the
    unfused torch ops, here on the CPU with the CUDA branch forced (uncompiled, then compiled by
    Inductor's scalar CPU backend, as above), over scales that saturate, round to ties and vanish."""
    import torch._inductor.config as inductor_config

    from quantmodel.intarith import intops as io

    g = torch.Generator().manual_seed(3)
    qx = torch.randint(-(2**23), 2**23, (2, 40, 96), generator=g, dtype=torch.int32)
    qy = torch.randint(-(2**15), 2**15, (2, 40, 96), generator=g, dtype=torch.int32)
    qx[0, 0, :4] = torch.tensor([2**23 - 1, -(2**23), 0, 1])
    f = torch.randint(-(2**17), 2**17, (2, 1, 96), generator=g).double()
    r = torch.randint(-(2**20), 2**20, (2, 1, 96), generator=g).double()
    cases = [(1e-3, 0.07, 0.05), (0.25, 1e-2, 3e-4), (2.0**-20, 4.0, 1e-9)]  # (s_x, s_y, s_out)

    def run():
        out = []
        for s_x, s_y, s_out in cases:
            out.append(io.modulate_apply(qx, s_x, f, r, s_out, -127, 127))
            out.append(io.gated_add_apply(qx, s_x, qy, s_y, f, s_out, -(2**23) + 1, 2**23 - 1))
        return out

    with ckernels.disabled():
        unfused = run()
    want = run()  # the C loop where it is built
    assert all(torch.equal(a, b) for a, b in zip(unfused, want, strict=True))
    compiled = cudafused.compiled
    monkeypatch.setattr(cudafused, "enabled", lambda t: True)
    with ckernels.disabled():
        monkeypatch.setattr(cudafused, "compiled", lambda fn: fn)
        assert all(torch.equal(a, b) for a, b in zip(run(), want, strict=True))
        monkeypatch.setattr(cudafused, "compiled", compiled)
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(cudafused, "_compiled", {})
        torch._dynamo.reset()
        with inductor_config.patch({"cpp.simdlen": 1}):
            assert all(torch.equal(a, b) for a, b in zip(run(), want, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compiled_cuda_kernels_equal_the_cpu(monkeypatch):
    monkeypatch.setenv("QUANTMODEL_CUDA_FUSED", "1")
    m, sh = _constants()
    acc = _acc(m.numel())
    for q, dt in ((127, torch.int8), (32767, torch.int16)):
        for mm, ss in ((m, sh), (m[4], sh[4])):
            rq_cpu, rq_gpu = fp.Requantizer(mm, ss, -q, q, dt), fp.Requantizer(mm, ss, -q, q, dt, device="cuda")
            assert torch.equal(rq_gpu(acc.cuda()).cpu(), rq_cpu(acc))
            wide = torch.zeros((acc.shape[0], m.numel() + 3), dtype=dt, device="cuda")
            if mm.dim():
                rq_gpu(acc.cuda(), out=wide[:, 1 : 1 + m.numel()])
                assert torch.equal(wide[:, 1 : 1 + m.numel()].cpu(), rq_cpu(acc)) and not wide[:, 0].any()
    x = torch.randn(257, 131, generator=torch.Generator().manual_seed(2)) * 30
    for dtype in (torch.float16, torch.float32):
        aq = fp.ActQuantizer(0.37, 8)
        assert torch.equal(aq(x.to(dtype).cuda()).cpu(), aq(x.to(dtype)))
