"""`codesign simulate`: run one workload x recipe on one hardware config (hwsim) and report latency,
energy, area, storage, swaps, stalls and utilisation; `codesign hw`: list the hardware presets."""
from __future__ import annotations

import json
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("simulate", help="latency / energy / area of a quantized workload on an edge NPU")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", help="preset name, YAML file, gemm:M,K,N, or a SCALE-Sim topology .csv")
    src.add_argument("--trace", help="a saved op trace (.parquet or .csv), float or already quantized")
    p.add_argument("--hw", default="edge-npu", help="hardware preset (codesign hw), YAML file, or SCALE-Sim .cfg")
    p.add_argument("--base", default="edge-npu",
                   help="with a SCALE-Sim .cfg: the preset that supplies the rest of the chip (default edge-npu)")
    p.add_argument("--scalesim-report", metavar="DIR",
                   help="write COMPUTE_REPORT.csv and BANDWIDTH_REPORT.csv (SCALE-Sim layout) and "
                        "HWSIM_PER_OP.csv for step 0's ops to DIR")
    p.add_argument("--recipe", help="quantization recipe name or YAML file (default fp16 for --workload)")
    p.add_argument("--prefetch", default="jit", help="weight-set prefetch policy: jit or early")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", help="write PNGs (timeline, breakdown, roofline) to DIR")
    p.add_argument("--timeline", action="store_true", help="include engine timelines in --json")
    p.set_defaults(func=run)

    h = sub.add_parser("hw", help="list the hardware presets")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=run_hw)


def _trace(args):
    from workloads.errors import ConfigError
    from workloads.trace import Trace

    if args.trace:
        trace = Trace.load(args.trace)
        if args.recipe:
            if trace.meta.get("recipe", "fp16") != "fp16":
                raise ConfigError("recipe", args.recipe, f"none: trace {args.trace} is already quantized "
                                  f"with {trace.meta.get('recipe')}")
            from workloads.recipes import annotate_trace, get_recipe
            trace = annotate_trace(trace, get_recipe(args.recipe))
        return trace
    if args.workload.lower().endswith(".csv"):  # a SCALE-Sim topology: int8 words, as SCALE-Sim runs it
        from hwsim.interchange import read_scalesim_topology

        if args.recipe:
            raise ConfigError("recipe", args.recipe, "none with a SCALE-Sim topology (it runs int8 operands, "
                              "one byte per SCALE-Sim word)")
        return read_scalesim_topology(args.workload)
    from quantmodel.model.tracing import build_trace
    from workloads.presets import get_workload
    from workloads.recipes import annotate_trace, get_recipe

    recipe = get_recipe(args.recipe or "fp16")  # bad names fail before the (slower) trace
    return annotate_trace(build_trace(get_workload(args.workload)), recipe)


def load_hw_arg(hw_arg: str, base: str):
    """A preset, a YAML file, or a SCALE-Sim ``.cfg`` laid over the ``base`` preset."""
    import hwsim

    if hw_arg.lower().endswith(".cfg"):
        from hwsim.interchange import read_scalesim_cfg

        return read_scalesim_cfg(hw_arg, hwsim.load_hw(base))
    return hwsim.load_hw(hw_arg)


def run(args) -> int:
    import hwsim

    hw = load_hw_arg(args.hw, args.base)
    if args.scalesim_report:
        from pathlib import Path

        from workloads.errors import ConfigError

        if Path(args.scalesim_report).exists() and not Path(args.scalesim_report).is_dir():
            raise ConfigError("scalesim-report", args.scalesim_report, "a directory (created if missing)")
    t0 = time.perf_counter()
    trace = _trace(args)
    t1 = time.perf_counter()
    res = hwsim.simulate(trace, hw, prefetch=args.prefetch, timeline=bool(args.plots or args.timeline))
    t2 = time.perf_counter()
    paths = []
    if args.scalesim_report:
        from hwsim.interchange import write_reports
        paths += write_reports(trace, res, hw, args.scalesim_report)
    if args.plots:
        from hwsim.plots import write_plots
        paths += write_plots(res, hw, args.plots)
    if args.json:
        d = res.to_dict(timeline=args.timeline)
        d["trace_seconds"], d["simulate_seconds"] = t1 - t0, t2 - t1
        d["plots"] = [str(p) for p in paths]
        json.dump(d, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(format_report(res, hw, t2 - t1))
    for p in paths:
        print(f"wrote {p}")
    return 0


def _si(x: float, unit: str) -> str:
    for scale, pre in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {pre}{unit}"
    return f"{x:.3g} {unit}"


def format_report(res, hw, sim_s: float) -> str:
    per_step = res.latency_per_step_s
    lines = [
        f"{res.workload} | recipe {res.recipe} | hw {hw.name} ({hw.description})",
        f"latency per video   {res.latency_s:.4g} s   ({res.num_steps} steps; per step min "
        f"{min(per_step):.4g} s, max {max(per_step):.4g} s)",
        f"energy per video    {res.energy_j:.4g} J    ({res.energy_per_step_j:.4g} J per step; average "
        f"power {res.energy_j / res.latency_s if res.latency_s else 0:.3g} W)",
        f"area                {res.area_mm2:.4g} mm2",
        f"weights             storage {_si(res.storage_bytes, 'B')} (float {_si(res.float_weight_bytes, 'B')}"
        f" + {res.num_weight_sets} set(s) of {_si(res.weight_set_bytes, 'B')}), placed in {res.weight_placement}",
        f"weight swaps        {res.swap_count} x, {_si(res.swap_bytes, 'B')} moved, exposed {res.swap_stall_s:.4g} s,"
        f" hidden {res.swap_hidden_s:.4g} s, prefetch {res.prefetch_used}"
        + (f" ({res.note})" if res.note else ""),
        f"initial load        {_si(res.initial_load_bytes, 'B')} from flash in {res.initial_load_s:.3g} s "
        "(once, not in the latency)",
        f"traffic             DRAM {_si(res.dram_bytes, 'B')}, flash {_si(res.flash_bytes, 'B')}, "
        f"SRAM {_si(res.sram_bytes, 'B')}, {_si(res.macs, 'MAC')}",
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
        lines.append(f"  {name:28s} x{n:<3d} {r['latency_s'] * 1e3:9.3f} ms  bound {r['bound_s'] * 1e3:9.3f} ms"
                     f"  {r['engine']}")
        if len(seen) == 8:
            break
    lines.append(f"(simulated in {sim_s:.2f} s: {res.memo['steps_simulated']} of {res.num_steps} steps, "
                 f"{res.memo['units_simulated']} distinct units; sim {res.sim_version})")
    return "\n".join(lines)


def run_hw(args) -> int:
    import hwsim

    rows = []
    for name in hwsim.hw_preset_names():
        hw = hwsim.load_hw(name)
        from hwsim.area import area_breakdown_mm2
        rows.append({"name": name, "description": hw.description, "int8_macs": hw.mac.pes,
                     "freq_hz": hw.clock.freq_hz,
                     "int8_tops": 2 * hw.peak_macs_per_cycle["int8"] * hw.clock.freq_hz / 1e12,
                     "sram_bytes": hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes,
                     "dram_gb_s": hw.dram.bandwidth_bytes_per_s / 1e9,
                     "flash_gb_s": hw.flash.bandwidth_bytes_per_s / 1e9,
                     "dynamic_quant": hw.vector.online_reduction,
                     "area_mm2": sum(area_breakdown_mm2(hw).values())})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':18s} {'MACs':>6s} {'GHz':>5s} {'TOPS':>6s} {'SRAM':>8s} {'DRAM GB/s':>9s} "
          f"{'flash GB/s':>10s} {'dyn-quant':>9s} {'mm2':>6s}")
    for r in rows:
        print(f"{r['name']:18s} {r['int8_macs']:6d} {r['freq_hz'] / 1e9:5.2f} {r['int8_tops']:6.2f} "
              f"{r['sram_bytes'] / 2**20:6.1f}Mi {r['dram_gb_s']:9.1f} {r['flash_gb_s']:10.1f} "
              f"{r['dynamic_quant']!s:>9s} {r['area_mm2']:6.2f}")
    return 0
