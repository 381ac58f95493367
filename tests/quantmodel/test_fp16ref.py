"""The independent fp16 vector-unit reference agrees with the kernels (bit for bit where no transcendental
is involved), and a kernel that drops one fp16 rounding disagrees with it."""

import numpy as np
import pytest
import torch

from quantmodel.intarith import fixedpoint, fp16ref, intops


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 40, 96, generator=g) * 3).half()  # row count and width not powers of two
    y = torch.randn(2, 40, 96, generator=g).half()
    p = [torch.randn(2, 1, 96, generator=g) * 0.5 for _ in range(3)]
    return x, y, p


def _ulp(got: torch.Tensor, want: np.ndarray) -> np.ndarray:
    return fp16ref.ulp_diff(got.numpy(), want)


def test_exact_kernels(data):
    x, y, (shift, scale, gate) = data
    s = torch.rand(96) + 0.5
    assert _ulp(intops.layernorm_fp16(x, 1e-6), fp16ref.layernorm(x.numpy(), 1e-6)).max() == 0
    assert (
        _ulp(intops.modulate_fp16(x, shift, scale), fp16ref.modulate(x.numpy(), shift.numpy(), scale.numpy())).max()
        == 0
    )
    inv = 1.0 / s
    sc2, sh2 = (1 + scale) * inv - 1, shift * inv  # the emulator's fold of a consumer's factors
    want = fp16ref.modulate(x.numpy(), shift.numpy(), scale.numpy(), s.numpy())
    assert _ulp(intops.modulate_fp16(x, sh2, sc2), want).max() == 0
    assert _ulp(intops.gated_add_fp16(x, y, gate), fp16ref.add(x.numpy(), y.numpy(), gate.numpy())).max() == 0
    assert _ulp(x + y, fp16ref.add(x.numpy(), y.numpy())).max() == 0
    q = torch.randint(-32767, 32768, (500,), dtype=torch.int16)
    got = fixedpoint.dequantize(q, 0.0123).clamp(-65504, 65504).half()
    assert _ulp(got, fp16ref.dequant(q.numpy(), 0.0123)).max() == 0


def test_transcendental_kernels_within_tolerance(data):
    x, _, _ = data
    s32 = torch.randn(3, 4, 50, 50) * 20
    for got, want in (
        (intops.gelu_fp16(x), fp16ref.gelu(x.numpy())),
        (intops.softmax_fp16(intops._h(s32 * 0.125)), fp16ref.softmax(s32.numpy(), 0.125)),
    ):
        d = _ulp(got, want)
        assert d.max() <= 1 and (d > 0).mean() <= fp16ref.TRANSCENDENTAL_TOLERANCE["max_fraction"]


def test_dynamic_quant_definition():
    x = np.array([[0.0, 0.0], [1.0, -0.5], [127.0, 63.5]], dtype=np.float32)
    q, s = fp16ref.dynamic_quant(x, 8)
    assert s.tolist() == [1.0, np.float32(1 / 127), 1.0]
    assert q.tolist() == [[0, 0], [127, -64], [127, 64]]  # 63.5 at scale 1 is a tie: half to even gives 64


def test_a_dropped_rounding_is_seen(data):
    x, _, _ = data
    xf = x.float()  # GELU with the cube kept in float32 (one fp16 rounding dropped)
    inner = intops._h(0.7978845608028654 * (xf + intops._h(0.044715 * (xf * xf * xf)).float()))
    bad = intops._h(0.5 * xf * (1.0 + intops._h(torch.tanh(inner.float())).float()))
    d = _ulp(bad, fp16ref.gelu(x.numpy()))
    assert (d > 0).mean() > fp16ref.TRANSCENDENTAL_TOLERANCE["max_fraction"]
