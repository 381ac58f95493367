"""Bounded work: the tile budget of one GEMM or vector-op plan.

The planner enumerates a GEMM's tiles one by one (their order decides which operand tiles are
reloaded), so its time and memory grow with the tile count: a legal but huge GEMM (``gemm:1e14,1,1``)
would run for hours or exhaust memory. Beyond ``MAX_GEMM_TILES`` tiles a GEMM's numbers come from
its closed form instead (``gemm_closed_form.py``); ``plan_gemm`` itself still refuses to enumerate
them, with the number and the tile shape. A vector op's plan is a list of tiles too (an edited
trace of 1e15 elements ran out of memory after minutes), under the same budget, refused.
"""

from __future__ import annotations

import math

from workloads.errors import ConfigError

# assumption from a measurement on this project's 2-core CI machine: 8.3 million tiles took 41 s and
# about 4 GB; one million keeps a plan under ~5 s and ~0.5 GB. The largest GEMM of the presets
# (OpenSora v1.2 at 720p) plans a few thousand tiles.
MAX_GEMM_TILES = 1_000_000


def gemm_tile_count(batch: int, m: int, k: int, n: int, shape: tuple) -> int:
    """Tiles of a ``batch x [m,k] x [k,n]`` GEMM tiled as ``shape`` = (kt, nt, mt, bt, ...)."""
    kt, nt, mt, bt = shape[:4]
    return math.ceil(batch / bt) * math.ceil(m / mt) * math.ceil(n / nt) * math.ceil(k / kt)


def check_gemm_tiles(batch: int, m: int, k: int, n: int, shape: tuple) -> None:
    """Refuse a GEMM plan of more than ``MAX_GEMM_TILES`` tiles (before enumerating them)."""
    tiles = gemm_tile_count(batch, m, k, n, shape)
    if tiles > MAX_GEMM_TILES:
        kt, nt, mt, bt = shape[:4]
        raise ConfigError(
            "workload",
            f"GEMM {batch}x[{m},{k}]x[{k},{n}]",
            f"at most {MAX_GEMM_TILES:,} tiles per GEMM on this chip (this one needs {tiles:,} tiles of "
            f"{bt}x{mt}x{kt}x{nt}; a smaller GEMM or more SRAM)",
        )


def check_vector_tiles(kind: str, elements: int, tile_elements: int) -> None:
    """Refuse a vector-op plan of more than ``MAX_GEMM_TILES`` tiles (the replay costs the same per
    tile as a GEMM's), before enumerating them."""
    tiles = -(-elements // tile_elements)
    if tiles > MAX_GEMM_TILES:
        raise ConfigError(
            "workload",
            f"{kind} of {elements:,} elements",
            f"at most {MAX_GEMM_TILES:,} tiles per op on this chip (this one needs {tiles:,} tiles of "
            f"{tile_elements:,} elements)",
        )
