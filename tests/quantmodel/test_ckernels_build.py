"""The C kernels as C sources: one declaration table that matches the definitions, a build for a
portable target, and a failed build that says why once and leaves the torch path (the same values)."""

import logging
import re
import shutil

import pytest
import torch

from quantmodel.intarith import ckernels, fixedpoint, gemmpaths

_DEF = re.compile(r"^(void|int|int64_t|double)\s+(qm_\w+)\s*\(([^)]*)\)\s*\{", re.MULTILINE)


def _norm(args: str) -> list[str]:
    return [" ".join(a.split()) for a in args.split(",")]


def test_header_declares_exactly_the_defined_kernels():
    src = (ckernels.SRC_DIR / "qmk.c").read_text()
    hdr = (ckernels.SRC_DIR / "qmk.h").read_text()
    defined = {name: (ret, _norm(args)) for ret, name, args in _DEF.findall(src)}
    declared = {name: (ret, _norm(args)) for ret, name, args in ckernels._PROTO.findall(hdr)}
    assert declared == defined and len(declared) == 42
    table = ckernels.declarations()
    assert set(table) == set(defined)
    assert all(len(table[n][1]) == len(defined[n][1]) for n in table)
    assert table["qm_dequant"][0] is not None and table["qm_requant"][0] is None


def test_intrinsics_only_behind_guards():
    """Every x86 intrinsic sits inside an #if on an ISA macro, so other targets build the C loops."""
    depth, guarded = 0, []
    for line in (ckernels.SRC_DIR / "qmk.c").read_text().splitlines():
        s = line.strip()
        if s.startswith("#if"):
            guarded.append(any(m in s for m in ("__AVX512", "QMK_AVX512", "__AVX2__", "__F16C__", "__x86_64__")))
            depth += 1
        elif s.startswith("#elif"):
            guarded[-1] = any(m in s for m in ("__AVX512", "QMK_AVX512", "__AVX2__", "__F16C__"))
        elif s.startswith("#endif"):
            guarded.pop()
        elif re.search(r"\b_mm(256|512)?_\w+\(|immintrin", s):
            assert any(guarded), line


def _check_dynamic_codes(dll) -> None:
    """qm_dyn_quant and qm_dyn_rows (a strided view) = fixedpoint.symmetric_scale + fixedpoint.quantize, for
    float32 and fp16 rows: random rows, exact half-way quotients (power-of-two scales), quotients one float32
    step either side of a half-way point, rows near the float32 limit and tiny rows (scales outside the
    division-free path), all-zero rows, 2 to 8 bits; a zero code is +0.0 in the float codes."""
    g = torch.Generator().manual_seed(3)
    for trial in range(60):
        rows, k = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 200, (1,), generator=g))
        bits = int(torch.randint(2, 9, (1,), generator=g))
        qmax = 2 ** (bits - 1) - 1
        x = torch.randn(rows, k, generator=g) * 10.0 ** float(torch.randint(-30, 30, (1,), generator=g))
        if trial % 3 == 0:  # exact ties: a power-of-two scale and half-integer multiples of it
            sc = 2.0 ** float(torch.randint(-20, 20, (1,), generator=g))
            x = torch.randint(-2 * qmax, 2 * qmax + 1, (rows, k), generator=g).float() / 2 * sc
            x[:, 0] = qmax * sc
        if trial % 3 == 1:  # one float32 step above or below a half-way point
            s_row = fixedpoint.symmetric_scale(x.abs().amax(1).double(), bits).float()[:, None]
            y = (torch.randint(-qmax, qmax, (rows, k), generator=g).float() + 0.5) * s_row
            up = torch.rand(rows, k, generator=g) < 0.5
            y = torch.where(up, y.nextafter(torch.full_like(y, 1e38)), y.nextafter(torch.full_like(y, -1e38)))
            x = torch.where(y.abs() < x.abs().amax(1, keepdim=True) * 0.99, y, x)
        if trial % 7 == 2:
            x[0] = 3.4e38 * torch.sign(torch.randn(k, generator=g))
            if rows > 2:
                x[1], x[2] = 1e-36 * torch.randint(-3, 4, (k,), generator=g), 0
        for dtype, kind in ((torch.float32, 0), (torch.float16, 1)):
            xx = x.to(dtype).nan_to_num(posinf=65504, neginf=-65504)
            s_ref = fixedpoint.symmetric_scale(xx.float().abs().amax(dim=1).double(), bits)
            q_ref = fixedpoint.quantize(xx.float(), s_ref, bits, axis=0)
            q, s = torch.empty(rows, k, dtype=torch.int8), torch.empty(rows)
            assert dll.qm_dyn_quant(xx.data_ptr(), kind, rows, k, qmax, q.data_ptr(), s.data_ptr()) == 0
            assert torch.equal(s, s_ref.float()) and torch.equal(q, q_ref), (trial, dtype)
            v = xx.t().contiguous().t()  # rows with element stride `rows`
            q8, qf, s2 = torch.empty(rows, k, dtype=torch.int8), torch.empty(rows, k), torch.empty(rows)
            xb = torch.empty(rows, k, dtype=dtype)
            args = (v.data_ptr(), kind, 1, 1, rows, k, 0, 0, *v.stride(), qmax)
            assert dll.qm_dyn_rows(*args, xb.data_ptr(), q8.data_ptr(), qf.data_ptr(), s2.data_ptr()) == 0
            assert torch.equal(q8, q_ref) and torch.equal(qf, q_ref.float()) and torch.equal(s2, s_ref.float())
            assert not (qf.signbit() & (qf == 0)).any()


def test_dynamic_codes_equal_the_definition_at_ties():
    _check_dynamic_codes(ckernels.lib())


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("march", ["x86-64-v3", ""])
def test_portable_build_gives_the_same_values(tmp_path, monkeypatch, march):
    """An x86-64-v3 (AVX2, no AVX-512) build and a default-target build (plain C loops: no AVX2 on
    x86-64) requantize, quantize (dynamic codes at ties included) and multiply to the same integers."""
    import platform

    if march and platform.machine() != "x86_64":
        pytest.skip("x86 target")
    monkeypatch.setenv("QUANTMODEL_CKERNELS_DIR", str(tmp_path))
    monkeypatch.setenv("QUANTMODEL_CKERNELS_MARCH", march)
    monkeypatch.setattr(ckernels, "_STATE", {})
    dll = ckernels.lib()
    assert dll is not None, ckernels.unavailable_reason()
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**24), 2**24, (37, 53), generator=g, dtype=torch.int32)
    mult, shift = fixedpoint.quantize_multipliers(torch.rand(53, generator=g, dtype=torch.float64) * 1e-3)
    rq = fixedpoint.Requantizer(mult, shift, -127, 127, torch.int8)
    got = rq(acc)
    with ckernels.disabled():
        want = rq(acc)
    assert torch.equal(got, want)
    x = torch.randn(5, 300, generator=g) * 3
    q, s = torch.empty((5, 300), dtype=torch.int8), torch.empty(5)
    assert dll.qm_dyn_quant(x.data_ptr(), 0, 5, 300, 127, q.data_ptr(), s.data_ptr()) == 0
    s_ref = fixedpoint.symmetric_scale(x.abs().amax(dim=1).double(), 8)
    assert torch.equal(s, s_ref.float())
    assert torch.equal(q, fixedpoint.quantize(x, s_ref, 8, axis=0))
    a = torch.randint(-128, 128, (13, 1031), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (1031, 37), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = -128, -128
    assert torch.equal(gemmpaths.mm(a, b, path="ckernel"), gemmpaths.mm(a, b, path="float64"))
    _check_dynamic_codes(dll)


def test_failed_build_is_logged_once_with_the_compiler_error(tmp_path, monkeypatch, caplog):
    src = tmp_path / "src"
    src.mkdir()
    (src / "qmk.c").write_text('#include "qmk.h"\nthis is not C;\n')
    (src / "qmk.h").write_text((ckernels.SRC_DIR / "qmk.h").read_text())
    monkeypatch.setattr(ckernels, "SRC_DIR", src)
    monkeypatch.setenv("QUANTMODEL_CKERNELS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ckernels, "_STATE", {})
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    with caplog.at_level(logging.WARNING, logger="quantmodel.intarith.ckernels"):
        assert ckernels.lib() is None
        assert ckernels.lib() is None
    msgs = [r.getMessage() for r in caplog.records if r.name == "quantmodel.intarith.ckernels"]
    assert len(msgs) == 1 and "using torch ops" in msgs[0] and "error" in msgs[0]
    assert "error" in ckernels.unavailable_reason()


def test_no_compiler_is_a_logged_fallback(monkeypatch, caplog):
    monkeypatch.setattr(ckernels.shutil, "which", lambda name: None)
    monkeypatch.setattr(ckernels, "_STATE", {})
    with caplog.at_level(logging.WARNING, logger="quantmodel.intarith.ckernels"):
        assert ckernels.lib() is None
    assert "no C compiler" in ckernels.unavailable_reason()
    assert sum("no C compiler" in r.getMessage() for r in caplog.records) == 1
    # the torch ops then give the integers the kernels give
    acc = torch.arange(-50, 50, dtype=torch.int32).reshape(4, 25) * 1001
    mult, shift = fixedpoint.quantize_multipliers(torch.full((25,), 0.37, dtype=torch.float64))
    rq = fixedpoint.Requantizer(mult, shift, -127, 127, torch.int8)
    without = rq(acc)
    monkeypatch.undo()
    ckernels._STATE.clear()
    assert ckernels.lib() is not None or ckernels.unavailable_reason()
    assert torch.equal(rq(acc), without)
