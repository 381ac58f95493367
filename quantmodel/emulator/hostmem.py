"""The host's allocator keeps the memory it frees, so a denoising step's large float tensors reuse pages.

Why: on a GPU the emulator's float parts around the blocks (patch and position embedding, the final
layer) run on the host CPU (bit for bit the CPU emulator's values; see ``IntegerEmulator``). At full
size their tensors are tens of MB each ([2, 4096, 1152] float32 is 37.7 MB at 16x256x256), above
glibc's largest mmap threshold (32 MiB on 64-bit, mallopt(3)), so glibc maps each one fresh and
unmaps it when freed: every step faults in every page again. Measured with
``benchmarks/bench_host.py`` (the numbers are in the README): the host's part of a step is then mostly
the kernel zeroing pages, not arithmetic. Serving large blocks from the heap and keeping freed memory
at its top (up to 2 GiB) makes the pages of one step's tensors the next step's.

The setting is the process's (glibc has no per-call choice): the ``codesign`` commands turn it on
when they run on CUDA (``--device cuda``), as do the GPU benchmarks; a library user calls
:func:`keep_freed_host_memory` once. Values are unchanged: only where the bytes live. The process
holds what it frees, so its resident memory stays near its peak. Elsewhere than glibc (musl, macOS)
it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc <malloc.h> parameter numbers (mallopt(3))
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# the most free memory kept at the heap's top: mallopt takes an int, so 2**31 - 1 bytes at most
KEEP_FREE_BYTES = 2**31 - 1

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Large blocks from the heap, freed memory kept (up to ``KEEP_FREE_BYTES``); True where applied
    (glibc), False elsewhere. Idempotent."""
    global _applied
    if _applied is None:
        _applied = _mallopt({M_MMAP_MAX: 0, M_TRIM_THRESHOLD: KEEP_FREE_BYTES})
    return _applied


def _mallopt(settings: dict[int, int]) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in settings.items())
