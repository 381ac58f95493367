"""Fused CPU loops for the emulator's elementwise integer pipelines (requantize, activation
quantization, dequantization, the vector-unit kernels), compiled once from the C sources in ``csrc/``
(``qmk.c``; ``qmk.h``, its prototypes, is the one declaration table: :func:`declarations` reads the
ctypes argument types from it) with the system's C compiler on first use.

Why: on the CPU every eager torch op is one pass over memory plus several microseconds of dispatch;
a requantization is 5 such passes (int32 -> float64, multiply, round, clamp, narrow) and on the
emulator's shapes those passes cost more than the int8 GEMM itself. Here each pipeline is one loop
that keeps the value in a register.

Bit exactness: every loop performs *the same IEEE operations in the same order* as the eager torch
code it replaces (documented at each function in fixedpoint.py / emulator.py): float64 or float32
multiplies, ``rint`` (round half to even in the default rounding mode), compares for the clamps,
correctly rounded float -> fp16 conversion (``_Float16``). The compiler flags forbid anything that
could change a value: no ``-ffast-math``, and ``-ffp-contract=off`` (no fused multiply-add).
``-fno-math-errno``/``-fno-trapping-math`` only let ``rint`` and the compares vectorise (they do not
change results). Tests compare these loops with the eager torch path bit for bit
(tests/quantmodel/test_fixedpoint.py, test_intgemm.py, test_ckernels_build.py).

Threads: built with ``-fopenmp`` where the compiler has it (linking the libgomp that torch has already
loaded, so ``torch.set_num_threads`` applies), row / block loops of at least ``PAR_MIN`` elements run
on several threads when more than one is set; every row or block is computed by the same operations as
in the serial loop, so the values do not depend on the thread count (tests/quantmodel/test_ckernels_threads.py).

Build: on first use, not at install, so that ``-march=native`` targets the machine that runs the
code (a prebuilt binary would fix one instruction set) and an install needs no compiler.
``QUANTMODEL_CKERNELS_MARCH`` sets the target instead (e.g. ``x86-64-v3`` for an AVX2-only build, or
empty for the compiler's default); a failed build is retried without ``-march`` (the sources keep every
x86 intrinsic behind ``__AVX512*__`` / ``__AVX2__`` / ``__F16C__`` guards, each with a plain C loop
computing the same values, so they build for any CPU with a C11 compiler that has ``_Float16``).

The eager torch path stays the definition and the fallback: when no C compiler is found, the build
fails, or ``QUANTMODEL_CKERNELS=0`` is set, :func:`lib` returns None and callers use torch ops (the
same values); the reason, with the compiler's last error lines, is logged once (``logging`` warning)
and kept in :func:`unavailable_reason`. The shared object is cached per (sources, flags, target,
compiler, CPU flags) under ``$QUANTMODEL_CKERNELS_DIR`` (default ``~/.cache/quantmodel-ckernels``),
written to a temporary name and renamed (never half-written).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SRC_DIR = Path(__file__).resolve().parent / "csrc"  # qmk.c, qmk.h (package data)
_SOURCES = ("qmk.c", "qmk.h")
# value-preserving flags only (see the module docstring); -march comes from QUANTMODEL_CKERNELS_MARCH
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=gnu11"]
_LOCK = threading.Lock()
_STATE: dict = {}
_ENABLED = [os.environ.get("QUANTMODEL_CKERNELS", "1") != "0"]
_log = logging.getLogger(__name__)

I8, I16, I32, F64 = 0, 1, 2, 3
OUT_KIND = {torch.int8: I8, torch.int16: I16, torch.int32: I32, torch.float64: F64}
IN_KIND_FLOAT = {torch.float32: 0, torch.float16: 1}
IN_KIND_INT = {torch.int8: 0, torch.int16: 1, torch.int32: 2}

# C types of the prototypes in csrc/qmk.h -> ctypes (every pointer is passed as an address)
_C_TYPES = {
    "void": None,
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}
_PROTO = re.compile(r"^(\w+)\s+(qm_\w+)\s*\(([^)]*)\)\s*;", re.MULTILINE)


def declarations(header: str | None = None) -> dict[str, tuple[object, list]]:
    """{name: (restype, argtypes)} of every ``qm_`` prototype in ``csrc/qmk.h`` (the one declaration
    table: signatures are written once, in C)."""
    if header is None:
        header = (SRC_DIR / "qmk.h").read_text()
    table = {}
    for ret, name, args in _PROTO.findall(header):
        types = []
        for arg in (a.strip() for a in args.split(",") if a.strip()):
            if "*" in arg:
                types.append(ctypes.c_void_p)
                continue
            ctype = arg.replace("const ", "").split()[0]
            if ctype not in _C_TYPES or _C_TYPES[ctype] is None:
                raise ValueError(f"qmk.h: {name}: argument {arg!r} has no ctypes mapping")
            types.append(_C_TYPES[ctype])
        if ret not in _C_TYPES:
            raise ValueError(f"qmk.h: {name}: result type {ret!r} has no ctypes mapping")
        table[name] = (_C_TYPES[ret], types)
    return table


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def cache_dir() -> str:
    """Where compiled kernels (and the GEMM path calibration) are cached."""
    return os.environ.get("QUANTMODEL_CKERNELS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "quantmodel-ckernels"
    )


def _arch_flags() -> list[list[str]]:
    """The target flags to try, best first: ``QUANTMODEL_CKERNELS_MARCH`` (default ``native``: the
    build machine's own instructions) and, if that build fails, the compiler's portable default."""
    march = os.environ.get("QUANTMODEL_CKERNELS_MARCH", "native")
    return [[f"-march={march}"], []] if march else [[]]


def _compile(cc: str, src_dir: str, so: str) -> str | None:
    """Compile into ``so`` (written under a temporary name, then renamed: never half-written).
    Returns None on success, else the reason (the compiler's last error lines)."""
    errors = []
    os.makedirs(os.path.dirname(so), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(so)) as tmp:
        tmp_so = os.path.join(tmp, "qmk.so")
        for arch in _arch_flags():
            for omp in (["-fopenmp"], []):  # serial loops where the compiler has no OpenMP
                cmd = [cc, *_FLAGS, *arch, *omp, os.path.join(src_dir, "qmk.c"), "-o", tmp_so, "-lm"]
                r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
                if r.returncode == 0:
                    os.replace(tmp_so, so)  # atomic: another process may have won the race, same bytes
                    return None
                errors.append(f"{' '.join(cmd)}: " + " | ".join(r.stderr.strip().splitlines()[-3:]))
    return errors[0] if len(errors) == 1 else errors[0] + " ; last try: " + errors[-1]


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None), or (None, why not)."""
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc)"
    try:
        ver = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
        texts = [(SRC_DIR / name).read_text() for name in _SOURCES]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"cannot read the kernel sources or run {cc}: {e}"
    key = hashlib.sha256("\0".join([*texts, " ".join(_FLAGS), repr(_arch_flags()), ver, _cpu_flags()]).encode())
    so = os.path.join(cache_dir(), f"qmk-{key.hexdigest()[:16]}.so")
    if not os.path.exists(so):
        try:
            err = _compile(cc, str(SRC_DIR), so)
        except (OSError, subprocess.SubprocessError) as e:
            err = f"build failed: {e}"
        if err is not None:
            return None, f"build failed: {err}"
    try:
        dll = ctypes.CDLL(so)
        for name, (restype, argtypes) in declarations("\n".join(texts[1:])).items():
            fn = getattr(dll, name)
            fn.argtypes, fn.restype = argtypes, restype
    except (OSError, AttributeError, ValueError) as e:
        return None, f"cannot load {so}: {e}"
    return dll, None


def lib() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, or no working compiler): callers then use torch."""
    if not _ENABLED[0]:
        return None
    if "dll" not in _STATE:
        with _LOCK:
            if "dll" not in _STATE:
                dll, why = _build()
                if why is not None:  # said once per process; the torch ops give the same values
                    _log.warning("quantmodel C kernels unavailable, using torch ops (same results, slower): %s", why)
                _STATE["dll"], _STATE["why"] = dll, why
    return _STATE["dll"]


def unavailable_reason() -> str | None:
    """Why :func:`lib` returned None (after a call to it), or None when the kernels loaded."""
    return _STATE.get("why")


@contextlib.contextmanager
def disabled():
    """Run the eager torch path inside the block (tests compare both paths)."""
    old = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = old


def usable(*tensors: torch.Tensor) -> bool:
    """All CPU and contiguous (the loops index raw memory)."""
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
