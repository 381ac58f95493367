"""Where the weights live and how weight sets move between steps.

Float weights (``weight_set == -1``) are shared by every step; each quantized weight set
(``weight_set >= 0``, one per step for TSQ+TSW) is needed only by its steps. Placement, from the
closest memory outwards:

- ``sram``: the float weights and the sets needed at once fit half the SRAM weight buffer (the other
  half keeps streaming the attention operands): weights are resident; sets that do not all fit move
  DRAM (or flash) -> SRAM between steps;
- ``dram``: every set fits the DRAM capacity given to weights: loaded once, never swapped;
- ``flash``: sets stay in flash and are copied flash -> DRAM into one slot (``jit``) or two
  double-buffered slots (``early``) before the step that needs them.

Prefetch policies: ``jit`` starts copying a step's set when that step starts (the only slot frees
when the previous step ends) and each layer waits for its own weights; ``early`` copies the next
step's set into the free slot while the current step runs.

Per-step scale tables (``Op.table_bytes``: recipes with one weight set and per-step activation scales)
are stored beside the weights (in ``storage_bytes``) and live in DRAM: each quantized GEMM reads its
step's table from DRAM with its first weight tile, resident weights or not (``simulate._gemm_unit``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hwsim.config import HWConfig
from workloads.errors import ConfigError
from workloads.trace import Trace

PREFETCH = ("jit", "early")


@dataclass(frozen=True)
class WeightPlan:
    float_bytes: int
    set_bytes: dict  # weight set -> bytes
    storage_bytes: int  # float weights once + every set (what a recipe stores: float weights plus its quantized sets)
    placement: str  # sram | dram | flash
    resident: bool  # weights resident in SRAM (GEMMs do not fetch them)
    swaps: bool  # weight sets move between steps
    from_flash: bool  # swaps read flash (else DRAM -> SRAM)
    prefetch: str  # policy asked for
    prefetch_used: str  # policy run (early falls back to jit when only one slot fits)
    initial_load_bytes: int  # flash -> DRAM before the first step (not part of a video's latency)
    note: str = ""
    table_bytes: int = 0  # per-step scale tables stored (in storage_bytes; they live in DRAM)


def weight_sets(trace: Trace) -> tuple[int, dict]:
    per: dict[int, dict[str, int]] = {}
    for op in trace.ops:
        if op.weight_bytes:
            per.setdefault(op.weight_set, {})[op.name] = op.weight_bytes
    float_bytes = sum(per.pop(-1, {}).values())
    return float_bytes, {s: sum(v.values()) for s, v in sorted(per.items())}


def plan_weights(
    trace: Trace, hw: HWConfig, prefetch: str, sets_of_trace: tuple | None = None, table_bytes: int | None = None
) -> WeightPlan:
    """``sets_of_trace``: ``weight_sets(trace)`` and ``table_bytes``: ``trace.table_storage_bytes()``
    when the caller already has them (they read every op)."""
    tables = trace.table_storage_bytes() if table_bytes is None else table_bytes
    plan = _plan_weights(trace, hw, prefetch, sets_of_trace, tables)
    return dataclasses.replace(plan, storage_bytes=plan.storage_bytes + tables, table_bytes=tables) if tables else plan


def _plan_weights(trace: Trace, hw: HWConfig, prefetch: str, sets_of_trace: tuple | None, tables: int) -> WeightPlan:
    if prefetch not in PREFETCH:
        raise ConfigError("prefetch", prefetch, " or ".join(PREFETCH))
    float_bytes, sets = sets_of_trace if sets_of_trace is not None else weight_sets(trace)
    sets = dict(sets)
    total = float_bytes + sum(sets.values())
    biggest = max(sets.values(), default=0)
    many = len(sets) > 1
    if total + tables > hw.flash.capacity_bytes:
        raise ConfigError(
            "flash.capacity_bytes", hw.flash.capacity_bytes, f">= {total + tables} bytes (the recipe's weight storage)"
        )
    half_wbuf = hw.sram.weight_buffer_bytes // 2
    dram_cap = hw.dram.weight_capacity_bytes
    all_in_dram = total <= dram_cap
    used, note = prefetch, ""
    if total <= half_wbuf:
        return WeightPlan(float_bytes, sets, total, "sram", True, False, False, prefetch, prefetch, total)
    slots = 2 if prefetch == "early" else 1
    if many and float_bytes + slots * biggest <= half_wbuf:
        return WeightPlan(
            float_bytes,
            sets,
            total,
            "sram",
            True,
            True,
            not all_in_dram,
            prefetch,
            prefetch,
            total if all_in_dram else float_bytes + biggest,
        )
    if all_in_dram:
        return WeightPlan(float_bytes, sets, total, "dram", False, False, False, prefetch, prefetch, total)
    if float_bytes + slots * biggest > dram_cap:
        if slots == 2 and float_bytes + biggest <= dram_cap:
            used, note = "jit", "early needs two weight-set slots in DRAM; only one fits, ran jit"
        else:
            raise ConfigError(
                "dram.weight_capacity_bytes",
                dram_cap,
                f">= {float_bytes + biggest} bytes (float weights + one weight set)",
            )
    return WeightPlan(float_bytes, sets, total, "flash", False, True, True, prefetch, used, float_bytes + biggest, note)
