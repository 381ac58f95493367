"""Exact 2-D int8 x int8 -> int32 products on the CPU: the interchangeable paths and the choice per shape.

Why several paths: ``torch._int_mm`` is fast where the CPU has AVX-512 VNNI (or AMX), but on many CPUs
without it (AVX2-only x86, measured 50-80x slower than a float32 matmul of the same shape) it is far
slower than the float units. Every path below returns the same integers, by construction:

- ``int_mm``: ``torch._int_mm`` (exact int32 accumulation; callers rule out int32 overflow first).
- ``float32``: the operands widened to float32 (exact: |v| <= 128) and K split into chunks of at most
  ``F32_CHUNK_K`` = 1024. Within a chunk every product and every partial sum, whatever order or
  blocking the BLAS uses (fused multiply-add included), is an integer of magnitude at most
  1024 * 128 * 128 = 2**24, and every such integer is a float32 value, so no operation rounds. The chunk
  results (each below 2**24) are converted to int32 exactly and added in int32 (which cannot wrap:
  callers have proved that the whole sum fits int32).
- ``float64``: one float64 product (exact while K * 2**14 < 2**53, i.e. for every K that fits memory).
- ``ckernel``: the C kernel ``qm_gemm_s8`` (intarith/csrc/qmk.c): int16 pair products summed in int32
  (``vpmaddwd`` where built for AVX2, plain C elsewhere), integer arithmetic throughout; the right
  operand is packed once per layer. Without the C kernels it runs the float32 path (same integers).

:func:`choose` picks per shape class (small products; K within one float32 chunk; K past it) the path
a one-time measurement found fastest on this machine. The measurement (a few products of each class,
best of several interleaved runs) is cached as JSON beside the compiled C kernels, keyed by torch
version, ATen CPU capability, oneDNN and MKL ISA limits, C kernel target and CPU flags, so it runs once per
machine and setting.
A path is chosen only where it gave the exact integers on the probes (checked against float64): with
oneDNN limited to AVX2 on this project's VNNI CPU, ``torch._int_mm`` returns wrong integers (int16
saturation of its AVX2 kernel), so a fast answer is not trusted unchecked.
``QUANTMODEL_GEMM=int_mm|float32|float64|ckernel`` (or :func:`forced`, for tests) overrides the choice.
The float copy (4 bytes per weight) or packed copy (2 bytes) of a right operand is remembered on that
tensor, so a layer's weight is converted once, not per call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time

import torch

from workloads.errors import ConfigError
from workloads.io import atomic_open

PATHS = ("int_mm", "float32", "float64", "ckernel")
F32_CHUNK_K = 1024  # 1024 * 128 * 128 = 2**24: the largest exact K per float32 chunk
SMALL_MACS = 2**22  # below this many multiply-adds a product counts as "small" (overhead-bound)
# one probe shape (M, K, N) per shape class; small enough that the slowest path takes well under a second
_PROBES = {"small": (64, 64, 192), "one_chunk": (256, 512, 512), "multi_chunk": (256, 1536, 256)}
_REPEATS = 5

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_STATE: dict = {}
_FORCED: list = [None]


def shape_class(m: int, k: int, n: int) -> str:
    """The calibration class of an [m, k] x [k, n] product."""
    if m * k * n < SMALL_MACS:
        return "small"
    return "one_chunk" if k <= F32_CHUNK_K else "multi_chunk"


def _widened(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``b.to(dtype)`` remembered on ``b`` with its version counter (a weight is widened once)."""
    memo = getattr(b, "_q1_wide", None)
    if memo is not None and memo[0] == b._version and memo[1].dtype == dtype:
        return memo[1]
    w = b.to(dtype)
    try:
        b._q1_wide = (b._version, w)
    except (AttributeError, RuntimeError):
        pass
    return w


def _mm_float32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Chunked exact float32 product into int32 ``out`` [M, N] (see the module docstring)."""
    m, k = a.shape
    af = a.to(torch.float32)  # [M, K]
    bf = _widened(b, torch.float32)  # [K, N]
    chunks = max(1, -(-k // F32_CHUNK_K))
    step = -(-k // chunks) if k else 0  # equal chunks, each <= F32_CHUNK_K
    if chunks == 1:
        out.copy_(torch.mm(af, bf))  # every value an integer below 2**24: exact conversion
        return out
    part = torch.empty((m, b.shape[1]), dtype=torch.float32)
    for i, k0 in enumerate(range(0, k, step)):
        torch.mm(af[:, k0 : k0 + step], bf[k0 : k0 + step], out=part)
        if i == 0:
            out.copy_(part)
        else:
            out.add_(part.to(torch.int32))  # int32 add: exact, the caller proved no overflow
    return out


def _mm_float64(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    out.copy_(torch.mm(a.to(torch.float64), _widened(b, torch.float64)))
    return out


def _packed(b: torch.Tensor, dll) -> torch.Tensor:
    """``b`` packed for ``qm_gemm_s8`` (int16 pairs per 16-column panel), remembered on ``b``."""
    memo = getattr(b, "_q1_packed", None)
    if memo is not None and memo[0] == b._version:
        return memo[1]
    k, n = b.shape
    bc = b.contiguous()
    bp = torch.empty(dll.qm_gemm_pack_b_size(k, n), dtype=torch.int16)
    dll.qm_gemm_pack_b(bc.data_ptr(), k, n, bp.data_ptr())
    try:
        b._q1_packed = (b._version, bp)
    except (AttributeError, RuntimeError):
        pass
    return bp


def _mm_ckernel(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    from quantmodel.intarith import ckernels

    dll = ckernels.lib()
    m, k = a.shape
    n = b.shape[1]
    if dll is None:  # no compiler: the float32 path gives the same integers
        return _mm_float32(a, b, out)
    if k == 0 or m == 0 or n == 0:
        return out.zero_()
    a = a.contiguous()
    res = out if out.is_contiguous() else torch.empty((m, n), dtype=torch.int32)
    ap = torch.empty(dll.qm_gemm_pack_a_size(m, k), dtype=torch.int16)  # A as int16 rows
    dll.qm_gemm_s8(a.data_ptr(), m, k, _packed(b, dll).data_ptr(), n, res.data_ptr(), ap.data_ptr())
    return res if res is out else out.copy_(res)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *, path: str | None = None) -> torch.Tensor:
    """Exact ``a @ b``: a int8 [M, K], b int8 [K, N] (CPU) -> int32 [M, N] (written into ``out`` if given).

    The caller guarantees the int32 sums cannot overflow (e.g. K * 128 * 128 < 2**31), as for
    ``torch._int_mm``. ``path`` forces one of :data:`PATHS`; default: :func:`choose`."""
    m, k = a.shape
    n = b.shape[1]
    p = path or choose(m, k, n)
    if p == "int_mm":
        return torch._int_mm(a, b) if out is None else torch._int_mm(a, b, out=out)
    if out is None:
        out = torch.empty((m, n), dtype=torch.int32)
    if p == "float32":
        return _mm_float32(a, b, out)
    if p == "float64":
        return _mm_float64(a, b, out)
    if p == "ckernel":
        return _mm_ckernel(a, b, out)
    raise ConfigError("gemm path", p, ", ".join(PATHS))


@contextlib.contextmanager
def forced(path: str):
    """Every :func:`mm` inside the block takes ``path`` (tests check each path on any CPU)."""
    if path not in PATHS:
        raise ConfigError("gemm path", path, ", ".join(PATHS))
    old = _FORCED[0]
    _FORCED[0] = path
    try:
        yield
    finally:
        _FORCED[0] = old


def _env_path() -> str | None:
    v = os.environ.get("QUANTMODEL_GEMM", "auto")
    if v == "auto":
        return None
    if v not in PATHS:
        raise ConfigError("QUANTMODEL_GEMM", v, "auto, " + ", ".join(PATHS))
    return v


def choose(m: int, k: int, n: int) -> str:
    """The path for an [m, k] x [k, n] product: forced, else from the environment, else the fastest
    exact one of ``int_mm``, ``float32`` and ``ckernel`` for its shape class as measured once on this
    machine."""
    if _FORCED[0] is not None:
        return _FORCED[0]
    env = _env_path()
    if env is not None:
        return env
    return calibration()["choice"][shape_class(m, k, n)]


def _cpu_key() -> str:
    """What the measurement depends on: torch build, ATen capability, oneDNN and MKL ISA limits, C kernel target,
    CPU flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    parts = [
        torch.__version__,
        torch.backends.cpu.get_cpu_capability(),
        os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        os.environ.get("ATEN_CPU_CAPABILITY", ""),
        os.environ.get("QUANTMODEL_CKERNELS_MARCH", ""),
        flags,
    ]
    if os.environ.get("MKL_ENABLE_INSTRUCTIONS"):  # the float32 path's BLAS limited (keys without it unchanged)
        parts.append("mkl=" + os.environ["MKL_ENABLE_INSTRUCTIONS"])
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _cache_file() -> str:
    from quantmodel.intarith import ckernels

    return os.path.join(ckernels.cache_dir(), f"gemm-paths-{_cpu_key()}.json")


def _probe(m: int, k: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-range random int8 operands with extreme rows and columns: a row of -128 against columns of
    -128 and of 127 (the largest sums), and a row of 127."""
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    a[0], a[1], b[:, 0], b[:, 1] = -128, 127, -128, 127
    return a, b


def measure(repeats: int = _REPEATS, paths: tuple[str, ...] = ("int_mm", "float32", "ckernel")) -> tuple[dict, dict]:
    """Best-of-``repeats`` seconds of each path on each probe shape, runs interleaved (path after path,
    so load from other processes hits all alike), and whether each path gave the exact integers there
    (checked against float64, which is exact by construction: a setting such as ``ONEDNN_MAX_CPU_ISA=AVX2``
    on a VNNI CPU makes ``torch._int_mm`` saturate int16 pair sums, measured here: wrong integers).
    Returns ({class: {path: seconds}}, {class: {path: exact}})."""
    g = torch.Generator().manual_seed(0)
    secs: dict = {}
    exact: dict = {}
    for cls, (m, k, n) in _PROBES.items():
        a, b = _probe(m, k, n, g)
        want = mm(a, b, path="float64")
        out = torch.empty((m, n), dtype=torch.int32)
        best = {p: float("inf") for p in paths}
        exact[cls] = {p: bool(torch.equal(mm(a, b, out, path=p), want)) for p in paths}  # also the warm-up
        for _ in range(repeats):
            for p in paths:
                t0 = time.perf_counter()
                mm(a, b, out, path=p)
                best[p] = min(best[p], time.perf_counter() - t0)
        secs[cls] = best
    return secs, exact


def _choose_from(secs: dict, exact: dict) -> dict:
    """{class: the fastest path that was exact} (float64 if none was: it is exact by construction)."""
    return {c: min((p for p in t if exact[c][p]), key=t.get, default="float64") for c, t in secs.items()}


def calibration() -> dict:
    """{"choice": {class: path}, "seconds": {class: {path: s}}, "exact": {class: {path: bool}},
    "capability": ...}: read from the cache, else measured now (once per process at most) and cached
    (written to a temporary name, renamed)."""
    cal = _STATE.get("cal")
    if cal is not None:
        return cal
    with _LOCK:
        if "cal" in _STATE:
            return _STATE["cal"]
        path = _cache_file()
        try:
            with open(path) as f:
                cal = json.load(f)
            if set(cal.get("choice", {})) != set(_PROBES) or not set(cal["choice"].values()) <= set(PATHS):
                cal = None
        except (OSError, ValueError):
            cal = None
        if cal is None:
            secs, exact = measure()
            cal = {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "torch": torch.__version__,
                "seconds": secs,
                "exact": exact,
                "choice": _choose_from(secs, exact),
            }
            _write_json(path, cal)
        wrong = sorted({p for c in cal.get("exact", {}).values() for p, ok in c.items() if not ok})
        if wrong:
            _log.warning(
                "int8 GEMM: %s gave wrong integers on this CPU setting (capability %s); not used",
                ", ".join(wrong),
                cal.get("capability"),
            )
        _log.info("int8 GEMM paths (CPU capability %s): %s", cal.get("capability"), cal["choice"])
        _STATE["cal"] = cal
        return cal


def _write_json(path: str, obj: dict) -> None:
    """Atomic write (``workloads.io``); a cache that cannot be written is only measured again."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "w") as f:
            json.dump(obj, f, indent=1)
    except OSError as e:
        _log.warning("int8 GEMM calibration not cached (%s)", e)


def matmul_float_exact(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``a @ b`` of int8 operands (or float tensors holding integers of magnitude <= 128) of any
    batch shape, a [..., M, K], b [..., K, N] broadcast as ``torch.matmul`` -> int32 [..., M, N]
    (written into ``out`` if given): float32 products over K chunks of at most ``F32_CHUNK_K`` (exact,
    see the module docstring), the chunks added in int32. The attention products' path: one batched
    float product beats a loop of 2-D integer GEMMs on every CPU. Callers rule out int32 overflow."""
    k = a.shape[-1]
    af, bf = a.to(torch.float32), b.to(torch.float32)
    chunks = max(1, -(-k // F32_CHUNK_K))
    step = -(-k // chunks) if k else 0
    if chunks == 1:
        y = torch.matmul(af, bf)  # integers below 2**24: exact conversion
        return y.to(torch.int32) if out is None else out.copy_(y)
    acc = out
    for i, k0 in enumerate(range(0, k, step)):
        part = torch.matmul(af[..., k0 : k0 + step], bf[..., k0 : k0 + step, :])
        if acc is None:
            acc = part.to(torch.int32)
        elif i == 0:
            acc.copy_(part)
        else:
            acc.add_(part.to(torch.int32))
    return acc
