"""The compiled loops (quantmodel.intarith.ckernels) split rows / blocks over torch's OpenMP threads when a call
is large enough: every value must be the one-thread value, bit for bit; and the fused producer-side
quantizers (LayerNorm+modulate straight to int8, softmax handing fp16 values over as float32) equal
the separate steps."""

import pytest
import torch

from quantmodel.intarith import ckernels, fixedpoint, intops

pytestmark = pytest.mark.skipif(
    ckernels.lib() is None, reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)"
)


def _ops(g: torch.Generator):
    """name -> zero-argument function, on inputs above the threading threshold (16384 elements)."""
    x = (torch.randn(2, 160, 96, generator=g) * 3).to(torch.float16)  # [B, N, C]
    y = torch.randint(-3000, 3000, (2, 160, 96), generator=g, dtype=torch.int16)
    gate = torch.randn(2, 1, 96, generator=g)
    shift, scale = torch.randn(2, 1, 96, generator=g), torch.randn(2, 1, 96, generator=g) * 0.3
    inv = torch.rand(96, generator=g) + 0.5
    aq = fixedpoint.ActQuantizer(0.02, 8)
    s_y = float(torch.tensor(0.01))  # a float32 scale (the dequantization is then one float32 product)
    scores = torch.randn(64, 4, 16, 8, generator=g) * 20  # 8-token rows (temporal attention)
    acc = torch.randint(-(2**20), 2**20, (320, 96), generator=g, dtype=torch.int32)
    mult, shift_q = fixedpoint.quantize_multipliers(torch.rand(96, generator=g, dtype=torch.float64) * 1e-3)
    rq = fixedpoint.Requantizer(mult, shift_q, -32767, 32767, torch.int16)
    return {
        "residual": lambda: intops.residual_fp16(x, y, s_y, gate),
        "layernorm_modulate": lambda: intops.layernorm_modulate_fp16(x, shift, scale, inv=inv),
        "layernorm_modulate_q": lambda: intops.layernorm_modulate_fp16(x, shift, scale, inv=inv, aq=aq),
        "layernorm": lambda: intops.layernorm_fp16(x),
        "softmax": lambda: intops.softmax_fp16_scaled(scores, 0.25),
        "softmax_f32": lambda: intops.softmax_fp16_scaled(scores, 0.25, f32_out=True),
        "gelu": lambda: intops.gelu_fp16(x),
        "act_quant": lambda: aq(x),
        "smooth_quant": lambda: fixedpoint.smooth_quantize_fp16(aq, x, inv.half().float()),
        "requant": lambda: rq(acc),
        "dequant": lambda: fixedpoint.dequantize_c(y, s_y, torch.float16),
    }


def test_threaded_loops_equal_one_thread():
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {k: f() for k, f in _ops(torch.Generator().manual_seed(0)).items()}
        torch.set_num_threads(2)
        two = {k: f() for k, f in _ops(torch.Generator().manual_seed(0)).items()}
    finally:
        torch.set_num_threads(n0)
    for k in one:
        assert one[k] is not None and one[k].dtype == two[k].dtype, k
        assert torch.equal(one[k], two[k]), k


def test_fused_producer_quantizers_equal_separate_steps():
    ops = _ops(torch.Generator().manual_seed(1))
    aq = fixedpoint.ActQuantizer(0.02, 8)
    q = ops["layernorm_modulate_q"]()
    assert q.dtype == torch.int8 and torch.equal(q, aq(ops["layernorm_modulate"]()))
    assert q.abs().max() > 0 and (q.abs() == 127).any()  # the range is exercised, saturation included
    p32 = ops["softmax_f32"]()
    assert p32.dtype == torch.float32 and torch.equal(p32, ops["softmax"]().float())
    with ckernels.disabled():  # the eager torch path gives the same values
        assert torch.equal(q, ops["layernorm_modulate_q"]())
        assert torch.equal(p32, ops["softmax_f32"]())


def _split_ref(codes: torch.Tensor, scale: float, parts: int, heads: int, tmask: int) -> list:
    """The head split by torch ops: dequantize (one float32 product), view heads, K^T contiguous."""
    b, n, pc = codes.shape
    d = pc // (parts * heads)
    f = codes.to(torch.float32) * scale
    hs = f.reshape(b, n, parts, heads, d).permute(2, 0, 3, 1, 4)  # [P, B, H, N, D]
    return [hs[p].transpose(-2, -1).contiguous() if (tmask >> p) & 1 else hs[p].contiguous() for p in range(parts)]


@pytest.mark.parametrize("shape", [(16, 16, 4, 16), (2, 1024, 6, 64), (3, 40, 4, 300)])  # D > 256, C > 1024: wide paths
def test_head_split_and_merge_equal_torch_at_one_and_two_threads(shape):
    """qm_split_heads (row-vectorised, K^T in tiles, heads wider than the tile buffer element by element)
    and qm_merge_heads_quant (heads gathered per row) = the torch definitions, at 1 and 2 threads."""
    b, n, h, d = shape
    dll = ckernels.lib()
    g = torch.Generator().manual_seed(7)
    aq = fixedpoint.ActQuantizer(0.01, 8)
    n0 = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            for dtype, kind in ((torch.int8, 0), (torch.int16, 1)):
                for parts, tmask in ((3, 0b010), (2, 0b01), (1, 0)):
                    codes = torch.randint(-120, 120, (b, n, parts * h * d), generator=g, dtype=dtype)
                    out = torch.empty((parts, b, h, n * d))
                    dll.qm_split_heads(codes.data_ptr(), kind, 0.0125, b, n, parts, h, d, out.data_ptr(), tmask)
                    for p, want in enumerate(_split_ref(codes, 0.0125, parts, h, tmask)):
                        assert torch.equal(out[p].reshape(want.shape), want), (nt, dtype, parts, p)
            att = torch.randn(b, h, n, d, generator=g)
            q = torch.empty((b, n, h * d), dtype=torch.int8)
            dll.qm_merge_heads_quant(att.data_ptr(), b, h, n, d, aq.recip, float(aq.qmax), q.data_ptr())
            assert torch.equal(q, aq(att.transpose(1, 2).reshape(b, n, h * d))), nt
    finally:
        torch.set_num_threads(n0)


def test_quantized_attention_operand_split_equals_requantize():
    """qm_split_heads_q8 = fixedpoint.requantize of each part to its product's input scale (exact half
    to even, saturation to +-qmax), head-split as qm_split_heads, at 1 and 2 threads."""
    dll = ckernels.lib()
    g = torch.Generator().manual_seed(8)
    b, n, h, d = 4, 96, 4, 16
    codes = torch.randint(-32767, 32768, (b, n, 3 * h * d), generator=g, dtype=torch.int16)
    reals = (3e-3, 0.0123, 1.0)  # the last keeps the codes: only the saturation to +-127 applies
    pairs = [fixedpoint.quantize_multiplier(r) for r in reals]
    mult = torch.tensor([m for m, _ in pairs], dtype=torch.int64)
    shift = torch.tensor([s for _, s in pairs], dtype=torch.int64)
    n0 = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            out = torch.empty((3, b, h, n * d))
            dll.qm_split_heads_q8(
                codes.data_ptr(), 1, b, n, 3, h, d, mult.data_ptr(), shift.data_ptr(), 127, out.data_ptr(), 0b010
            )
            parts = codes.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
            for p, (m, s) in enumerate(pairs):
                want = fixedpoint.requantize(parts[p].contiguous(), m, s, -127, 127).float()
                want = want.transpose(-2, -1).contiguous() if p == 1 else want
                assert torch.equal(out[p].reshape(want.shape), want), (nt, p)
    finally:
        torch.set_num_threads(n0)
