"""Two GEMMs run row block by row block, the tensor between them kept in SRAM: the MLP's
fc1 -> GELU -> fc2 as an NPU compiler fuses it when one row block of the hidden tensor fits.

For each block of ``rows`` token rows, the first GEMM (with its fused prologue, and its epilogue:
GELU and the second GEMM's SmoothQuant multiply or quantization) writes its block of the hidden
tensor into the activation buffer, and the second GEMM reads it from there (with its own
epilogue, e.g. the residual add). The hidden block holds its bytes of the activation buffer for
both GEMMs' tiles (``GemmUnit.held_bytes``), so both are tiled in what is left. The price: each
row block brings both weight matrices in again unless they are resident, against writing and
reading the whole hidden tensor once (4x the model width per token in OpenSora's MLP). The
planner keeps the chain only where its objective is better (``simulate._Units._chain``).

The replay runs the blocks' tiles in order on one machine; the second GEMM's first tile of a
block starts on the arrays after the first GEMM's last tile of that block, while that tile's
epilogue may still be running on the vector unit (one output tile's epilogue per block of
overlap the model allows, assumption).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hwsim import bounded
from hwsim.config import HWConfig
from hwsim.tiling import GemmUnit, Plan, _blocks, _round_up, block_ladder
from workloads.errors import ConfigError


@dataclass(frozen=True)
class ChainUnit:
    """``first`` then ``second`` per block of ``rows`` rows; ``first``'s output (``second``'s
    input) stays in SRAM. Both are the whole GEMMs (all rows, as the unfused schedule has them)."""

    first: GemmUnit
    second: GemmUnit
    rows: int

    @property
    def macs(self) -> int:
        return self.first.macs + self.second.macs

    @property
    def precision(self) -> str:
        return self.first.precision

    def hidden_bytes_per_row(self) -> float:
        return self.first.out_bytes / self.first.m

    def held_bytes(self, rows: int) -> int:
        return math.ceil(rows * self.hidden_bytes_per_row())

    def blocks(self) -> list[tuple[int, int]]:
        """``(count, rows)`` of the full row blocks and the edge block."""
        return _blocks(self.first.m, self.rows)

    def parts(self, rows: int) -> tuple[GemmUnit, GemmUnit]:
        """The two GEMMs of one block of ``rows`` rows: the first writes its output to SRAM only,
        the second reads it from there; both leave the hidden block's bytes out of their tiles."""
        f, s, m = self.first, self.second, self.first.m
        held = self.held_bytes(rows)

        def part(u: GemmUnit, **kw) -> GemmUnit:
            return dataclasses.replace(
                u,
                m=rows,
                a_bytes=max(1, math.ceil(u.a_bytes * rows / m)),
                out_bytes=max(1, math.ceil(u.out_bytes * rows / m)),
                res_bytes=math.ceil(u.res_bytes * rows / m),
                dequant_elements=math.ceil(u.dequant_elements * rows / m),
                **kw,
            )

        return part(f, dram_out=False, held_bytes=f.held_bytes + held), part(s, dram_in=False, held_bytes=held)


def chainable(first, second) -> bool:
    """Two GEMM units the chain can join: shared weights (not attention), one batch item, the same
    rows, the first's output read from DRAM by the second as its input."""
    return (
        isinstance(first, GemmUnit)
        and isinstance(second, GemmUnit)
        and not first.b_per_item
        and not second.b_per_item
        and first.batch == second.batch == 1
        and first.m == second.m
        and first.dram_out
        and second.dram_in
        and not second.pre  # the hidden tensor enters the second GEMM's arrays as it is
    )


CHAIN_BLOCKS = (1, 2, 4, 8, 16, 32)  # assumption: row-block counts a compiler tries for a chain (each costs a
# plan of both GEMMs per block)


def row_options(first: GemmUnit, second: GemmUnit, hw: HWConfig) -> list[int]:
    """Rows per block to try: the most whose hidden block takes at most half, and at most a
    quarter, of the activation buffer (the rest is for the tiles), in whole rows of the arrays and
    balanced over the blocks; none when not even one array's rows fit. A latency planner tries
    every balanced block (``tiling.block_ladder``) whose hidden block takes at most half."""
    R, m = hw.mac.rows, first.m
    per_row = first.out_bytes / m
    if hw.planner.objective == "latency":  # every balanced block that fits half: monotone in the buffer
        return [r for r in block_ladder(m, R, CHAIN_BLOCKS) if r * per_row <= hw.sram.activation_buffer_bytes // 2]
    out = []
    for share in (2, 4):
        most = int(hw.sram.activation_buffer_bytes // share // per_row)
        most = min(m, most - most % R if most >= R else 0)
        if most < min(R, m):
            continue
        rows = min(most, _round_up(math.ceil(m / math.ceil(m / most)), R))
        if rows not in out:
            out.append(rows)
    return out


def plan_chain(u: ChainUnit, plan_part, barrier: bool = False) -> Plan:
    """The chain's tiles: per row block, the first GEMM's tiles then the second's, each planned
    by ``plan_part(gemm_unit) -> Plan`` (the caller's tile search and cache). Buffers: the larger
    of the two parts' (each part fits what the hidden block leaves); counts: the parts' summed.

    ``barrier`` (the latency planner's chain): each part starts once the one before has drained,
    so the chain takes exactly the sum of its parts' replays alone, and a part tiled for its own
    fastest replay is tiled for the chain's. Without it the next part's loads overlap the last
    one's tail, which is faster by that overlap, but then which part tilings are best depends on
    both together, and a chip with more of a resource (whose parts' best tilings change) could
    run the chain slower than a smaller chip does."""
    tiles: list = []
    counts: dict[str, int] = {}
    caps = [1, 1, 1]
    parts = [(n, [plan_part(x) for x in u.parts(rows)]) for n, rows in u.blocks()]
    ntiles = sum(n * len(p.tiles) for n, ps in parts for p in ps)
    if ntiles > bounded.MAX_GEMM_TILES or any(p.closed for _, ps in parts for p in ps):
        # bounded work: a chain replays its parts' tiles one by one (the caller runs them apart)
        raise ConfigError("workload", f"chain of {ntiles:,} tiles", f"at most {bounded.MAX_GEMM_TILES:,} tiles")
    for n, (p1, p2) in parts:
        tiles += (p1.tiles + p2.tiles) * n
        for p in (p1, p2):
            for k, v in p.counts.items():
                counts[k] = counts.get(k, 0) + n * v
            caps = [max(caps[0], p.in_cap), max(caps[1], p.w_cap), max(caps[2], p.out_cap)]
    seq = tuple(p for n, ps in parts for _ in range(n) for p in ps) if barrier else ()
    return Plan("mac", tiles, caps[0], caps[1], caps[2], counts, ("chain", u.rows), parts=seq)
