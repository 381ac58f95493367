"""Every int8 GEMM path gives the same integers as the float64 oracle, whatever CPU runs the tests:
extremes, long K past the float32 chunk limit, odd shapes, requantization ties; the choice is cached."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantmodel.emulator import integer as emu_mod
from quantmodel.intarith import fixedpoint as fp
from quantmodel.intarith import gemmpaths
from quantmodel.intarith import reference as ref
from quantmodel.intarith.intgemm import PreparedLinear, int_linear_requant, int_matmul
from workloads.errors import ConfigError


def _oracle(a, b):
    want, overflow = ref.matmul(a, b)
    assert not overflow
    return want


@pytest.mark.parametrize("path", gemmpaths.PATHS)
@pytest.mark.parametrize(
    "m,k,n", [(1, 1, 1), (3, 1023, 5), (2, 1024, 7), (5, 1025, 3), (4, 2051, 9), (17, 3000, 1), (0, 8, 4), (6, 0, 4)]
)
def test_extremes_every_path(path, m, k, n):
    """-128 * -128 everywhere (the largest product), and 127 against -128, across the chunk limit."""
    for va, vb in ((-128, -128), (127, -128), (-128, 127)):
        a = torch.full((m, k), va, dtype=torch.int8)
        b = torch.full((k, n), vb, dtype=torch.int8)
        got = gemmpaths.mm(a, b, path=path)
        assert got.dtype == torch.int32 and got.shape == (m, n)
        assert torch.equal(got, torch.full((m, n), k * va * vb, dtype=torch.int32))


@pytest.mark.parametrize("path", gemmpaths.PATHS)
def test_largest_proved_k_every_path(path):
    """K = 131071: K * 128 * 128 is the largest sum the load-time proof admits (just below 2**31)."""
    k = 131_071
    a = torch.full((2, k), -128, dtype=torch.int8)
    a[1, ::2] = 127  # alternating row: a different, non-uniform sum
    b = torch.full((k, 3), -128, dtype=torch.int8)
    got = gemmpaths.mm(a, b, path=path)
    assert torch.equal(got.double(), _oracle(a, b))
    assert int(got[0, 0]) == k * 128 * 128


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 33), st.integers(1, 2200), st.integers(1, 33), st.integers(0, 2**31))
def test_random_shapes_all_paths_equal_oracle(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    want = _oracle(a, b)
    for path in gemmpaths.PATHS:
        out = torch.empty((m, n), dtype=torch.int32)
        assert torch.equal(gemmpaths.mm(a, b, out, path=path).double(), want), path
        assert torch.equal(out.double(), want), path


def test_widened_weight_follows_in_place_changes():
    """The float copy of a right operand is remembered, but never stale after an in-place change."""
    a = torch.ones((2, 3), dtype=torch.int8)
    b = torch.ones((3, 2), dtype=torch.int8)
    assert int(gemmpaths.mm(a, b, path="float32")[0, 0]) == 3
    b.fill_(-2)
    assert int(gemmpaths.mm(a, b, path="float32")[0, 0]) == -6
    assert int(gemmpaths.mm(a, b, path="float64")[0, 0]) == -6


@pytest.mark.parametrize("k", [64, 1024, 1100, 2600])
def test_batched_float_exact_across_chunk_limit(k):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (2, 3, 4, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (3, k, 5), generator=g, dtype=torch.int8)  # broadcast batch
    a[0, 0, 0] = -128
    b[0, :, 0] = -128  # one full -128 * -128 accumulation
    want = ref.matmul(a, b)[0]
    assert torch.equal(gemmpaths.matmul_float_exact(a, b).double(), want)
    out = torch.empty(want.shape, dtype=torch.int32)
    gemmpaths.matmul_float_exact(a.float(), b.float(), out=out)  # float operands holding integers
    assert torch.equal(out.double(), want)
    assert torch.equal(int_matmul(a, b).double(), want)


@pytest.mark.parametrize("path", gemmpaths.PATHS)
@pytest.mark.parametrize("k", [7, 1152])
def test_requantization_ties_identical_on_every_path(path, k):
    """Accumulators on exact .5 ties of the requantizer (multiplier 0.5): the fused GEMM + requant of a
    prepared layer, and the unprepared one, equal the oracle on every path (round half to even)."""
    n = 900  # wider than one column block
    a = torch.zeros((300, k), dtype=torch.int8)
    a[:, 0] = torch.arange(300, dtype=torch.int64).remainder(255).sub(127).to(torch.int8)
    a[:, 1:] = -128
    w = torch.ones((k, n), dtype=torch.int8)
    w[:, 1::3] = -128
    bias = torch.arange(n, dtype=torch.int32) - 450
    mult, shift = fp.quantize_multipliers(torch.full((n,), 0.5, dtype=torch.float64))
    rq = fp.Requantizer(mult, shift, -32767, 32767, torch.int16)
    want = ref.linear_requant(a, w, bias, mult, shift, -32767, 32767)
    with gemmpaths.forced(path):
        assert torch.equal(PreparedLinear(w, bias, rq)(a).double(), want.double())
        assert torch.equal(int_linear_requant(a, w, bias, rq).double(), want.double())


@pytest.mark.parametrize("path", ["float32", "float64", "ckernel"])
def test_emulator_forward_identical_on_every_forced_path(tiny_workload, path):
    """Whole emulator forwards (a static and a dynamic recipe, both modes) give the same bits when every
    2-D GEMM takes another path as with ``torch._int_mm``."""
    from quantmodel.model.build import build_stdit
    from quantmodel.model.config import STDiTConfig
    from quantmodel.quant.artifact import build_artifact
    from quantmodel.quant.calibrate import calibrate
    from workloads.recipes import get_recipe

    model = build_stdit(STDiTConfig.from_workload(tiny_workload), seed=0)
    stats = calibrate(model, tiny_workload, num_prompts=1)
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    t = torch.tensor([999, 999])
    for recipe in ("asq-w8a8", "dynamic-w8a8"):
        r = get_recipe(recipe)
        art = build_artifact(model, r, stats if r.scheme != "dynamic" else None, tiny_workload.num_steps, "t")
        for mode in ("fp16", "int"):
            with gemmpaths.forced("int_mm"):
                want = emu_mod.IntegerEmulator(model, art, nonlinear=mode).forward(x, t, y, 0)
            with gemmpaths.forced(path):
                got = emu_mod.IntegerEmulator(model, art, nonlinear=mode).forward(x, t, y, 0)
            assert torch.equal(got, want), (recipe, mode)


def test_choice_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTMODEL_CKERNELS_DIR", str(tmp_path))
    monkeypatch.delenv("QUANTMODEL_GEMM", raising=False)
    monkeypatch.setattr(gemmpaths, "_STATE", {})
    cal = gemmpaths.calibration()
    files = list(tmp_path.glob("gemm-paths-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == cal
    assert set(cal["choice"]) == {"small", "one_chunk", "multi_chunk"}
    for cls, secs in cal["seconds"].items():
        assert cal["choice"][cls] == min((p for p in secs if cal["exact"][cls][p]), key=secs.get)
        assert cal["exact"][cls]["float32"]
    # a later process reads the file instead of measuring: an edited choice is obeyed
    cal["choice"] = {c: "float64" for c in cal["choice"]}
    files[0].write_text(json.dumps(cal))
    monkeypatch.setattr(gemmpaths, "_STATE", {})
    assert gemmpaths.choose(300, 2000, 300) == "float64"
    monkeypatch.setenv("QUANTMODEL_GEMM", "float32")
    assert gemmpaths.choose(300, 2000, 300) == "float32"
    with gemmpaths.forced("int_mm"):
        assert gemmpaths.choose(300, 2000, 300) == "int_mm"


def test_a_fast_but_wrong_path_is_never_chosen():
    """Measured on this project's CPU: with oneDNN limited to AVX2, torch._int_mm saturates and returns
    wrong integers; the choice takes the fastest path among those that were exact on the probes."""
    secs = {
        "small": {"int_mm": 1.0, "float32": 2.0},
        "one_chunk": {"int_mm": 1.0, "float32": 2.0},
        "multi_chunk": {"int_mm": 3.0, "float32": 2.0},
    }
    exact = {
        "small": {"int_mm": True, "float32": True},
        "one_chunk": {"int_mm": False, "float32": True},
        "multi_chunk": {"int_mm": True, "float32": True},
    }
    assert gemmpaths._choose_from(secs, exact) == {"small": "int_mm", "one_chunk": "float32", "multi_chunk": "float32"}
    assert gemmpaths._choose_from({"small": {"int_mm": 1.0}}, {"small": {"int_mm": False}}) == {"small": "float64"}


def test_bad_path_names_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="gemm path"), gemmpaths.forced("avx"):
        pass
    monkeypatch.setenv("QUANTMODEL_GEMM", "fast")
    with pytest.raises(ConfigError, match="QUANTMODEL_GEMM"):
        gemmpaths.choose(1, 1, 1)
