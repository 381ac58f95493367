"""One design point as text: the report `codesign simulate` prints (and notebooks show) for one
``hwsim.SimResult``."""

from __future__ import annotations


def _si(x: float, unit: str) -> str:
    for scale, pre in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {pre}{unit}"
    return f"{x:.3g} {unit}"


def hw_line(hw) -> str:
    """The chip in one line, from the config itself (a preset's description may no longer hold once
    fields are overridden)."""
    sram = hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes
    return (
        f"{hw.mac.arrays}x{hw.mac.rows}x{hw.mac.cols} PEs {hw.mac.dataflow} at {_si(hw.clock.freq_hz, 'Hz')}, "
        f"{_si(sram, 'B')} SRAM, {hw.dram.channels}x {hw.dram.part} {_si(hw.dram.bandwidth_bytes_per_s, 'B/s')}, "
        f"{hw.tech.node_nm:g} nm"
    )


def format_report(res, hw, sim_s: float) -> str:
    """The `codesign simulate` text report of one result ``res`` of ``hw``, simulated in ``sim_s`` seconds."""
    per_step = res.latency_per_step_s
    lines = [
        f"{res.workload} | recipe {res.recipe} | hw {hw.name} ({hw_line(hw)})",
        f"latency per video   {res.latency_s:.4g} s   ({res.num_steps} steps; per step min "
        f"{min(per_step):.4g} s, max {max(per_step):.4g} s)",
        f"energy per video    {res.energy_j:.4g} J    ({res.energy_per_step_j:.4g} J per step; average "
        f"power {res.energy_j / res.latency_s if res.latency_s else 0:.3g} W)",
        f"area                {res.area_mm2:.4g} mm2",
        f"weights             storage {_si(res.storage_bytes, 'B')} (float {_si(res.float_weight_bytes, 'B')}"
        f" + {res.num_weight_sets} set(s) of {_si(res.weight_set_bytes, 'B')}), placed in {res.weight_placement}",
        f"weight swaps        {res.swap_count} x, {_si(res.swap_bytes, 'B')} moved, exposed {res.swap_stall_s:.4g} s"
        f" (layers waiting for weights {res.swap_wait_s:.4g} s + DRAM/DMA shared with the copy "
        f"{res.swap_contention_s:.4g} s), hidden {res.swap_hidden_s:.4g} s, prefetch {res.prefetch_used}"
        + (f" ({res.note})" if res.note else ""),
        f"initial load        {_si(res.initial_load_bytes, 'B')} from flash in {res.initial_load_s:.3g} s "
        "(once, not in the latency)",
        f"traffic             DRAM {_si(res.dram_bytes, 'B')}, flash {_si(res.flash_bytes, 'B')}, "
        f"SRAM {_si(res.sram_bytes, 'B')}, {_si(res.macs, 'MAC')}",
        f"DRAM vs lower bound {_si(res.dram_bytes, 'B')} / {_si(res.dram_lower_bound_bytes, 'B')} = "
        f"{res.dram_over_bound:.3g}x (compulsory traffic on this chip, docs/schedule.md)",
        "",
        "latency by cause (s):   " + "  ".join(f"{k} {v:.4g}" for k, v in res.stall_breakdown_s.items()),
        "energy (J):             " + "  ".join(f"{k} {v:.4g}" for k, v in res.energy_breakdown_j.items() if v),
        "area (mm2):             " + "  ".join(f"{k} {v:.4g}" for k, v in res.area_breakdown_mm2.items() if v),
        "utilisation:            " + "  ".join(f"{k} {v:.1%}" for k, v in res.utilisation.items()),
        "",
        "slowest ops of step 0 (latency vs roofline bound):",
    ]

    def short(name: str) -> str:
        return name.split(".", 2)[-1] if name.startswith("blocks.") else name

    rows = sorted((r for r in res.per_op if r["latency_s"] > 0), key=lambda r: -r["latency_s"])
    seen: set = set()
    for r in rows:
        name = short(r["name"])
        if name in seen:
            continue
        seen.add(name)
        n = sum(1 for x in res.per_op if x["latency_s"] > 0 and short(x["name"]) == name)
        lines.append(
            f"  {name:28s} x{n:<3d} {r['latency_s'] * 1e3:9.3f} ms  bound {r['bound_s'] * 1e3:9.3f} ms  {r['engine']}"
        )
        if len(seen) == 8:
            break
    lines.append(
        f"(simulated in {sim_s:.2f} s: {res.memo['steps_simulated']} of {res.num_steps} steps, "
        f"{res.memo['units_simulated']} distinct units; sim {res.sim_version})"
    )
    return "\n".join(lines)
