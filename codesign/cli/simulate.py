"""`codesign simulate`: run one workload x recipe on one hardware config (hwsim) and report latency,
energy, area, storage, swaps, stalls and utilisation; `codesign hw`: list the hardware presets."""

from __future__ import annotations

import sys
import time

from codesign.cli import jsonout


def register(sub) -> None:
    p = sub.add_parser("simulate", help="latency / energy / area of a quantized workload on an edge NPU")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", help="preset name, YAML file, gemm:M,K,N, or a SCALE-Sim topology .csv")
    src.add_argument("--trace", help="a saved op trace (.parquet or .csv), float or already quantized")
    p.add_argument("--hw", default="edge-npu", help="hardware preset (codesign hw), YAML file, or SCALE-Sim .cfg")
    p.add_argument(
        "--base",
        default="edge-npu",
        help="with a SCALE-Sim .cfg: the preset that supplies the rest of the chip (default edge-npu)",
    )
    p.add_argument(
        "--scalesim-report",
        metavar="DIR",
        help="write COMPUTE_REPORT.csv and BANDWIDTH_REPORT.csv (SCALE-Sim layout) and "
        "HWSIM_PER_OP.csv for step 0's ops to DIR",
    )
    p.add_argument("--recipe", help="quantization recipe name or YAML file (default fp16 for --workload)")
    p.add_argument("--prefetch", default="jit", help="weight-set prefetch policy: jit or early")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", help="write PNGs (timeline, breakdown, roofline) to DIR")
    p.add_argument(
        "--timeline",
        nargs="?",
        const=True,
        metavar="FILE.json",
        help="write the engines' activity as Chrome trace-event JSON (opens in Perfetto) to FILE.json; "
        "without a file: include the timelines in --json",
    )
    p.add_argument(
        "--timing",
        action="store_true",
        help="add the wall-clock seconds under one 'timing' key of --json (left out by default, so two "
        "runs print the same bytes)",
    )
    p.set_defaults(func=run)

    h = sub.add_parser("hw", help="list the hardware presets")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=run_hw)


def run(args) -> int:
    from codesign import api
    from codesign.cli.checks import check_in_file, check_out_dir, check_out_file

    if args.scalesim_report:
        check_out_dir("scalesim-report", args.scalesim_report)
    if args.plots:
        check_out_dir("plots", args.plots)
    if args.trace:
        check_in_file("trace", args.trace)
    timeline_file = args.timeline if isinstance(args.timeline, str) else None
    if timeline_file:
        check_out_file("timeline", timeline_file, (".json",))
    hw = api.hardware(args.hw, base=args.base)
    t0 = time.perf_counter()
    trace = api.load_trace(args.trace, args.recipe) if args.trace else api.trace(args.workload, args.recipe)
    t1 = time.perf_counter()
    res = api.simulate(trace, hw, prefetch=args.prefetch, timeline=bool(args.plots or args.timeline))
    t2 = time.perf_counter()
    paths = []
    if args.scalesim_report:
        from hwsim.interchange import write_reports

        paths += write_reports(trace, res, hw, args.scalesim_report)
    if args.plots:
        paths += api.plots(res, hw, args.plots)
    if timeline_file:
        from hwsim.timeline import write_chrome_trace

        paths.append(write_chrome_trace(res, timeline_file))
    if args.json:
        d = res.to_dict(timeline=args.timeline is True)
        d["plots"] = [str(p) for p in paths]
        if args.timing:
            d["timing"] = {"trace_s": t1 - t0, "simulate_s": t2 - t1}
        sys.stdout.write(jsonout.dumps(d) + "\n")
        return 0
    print(api.summary(res, hw, t2 - t1))
    for p in paths:
        print(f"wrote {p}")
    return 0


def run_hw(args) -> int:
    import hwsim

    rows = []
    for name in hwsim.hw_preset_names():
        hw = hwsim.load_hw(name)
        from hwsim.area import area_breakdown_mm2

        rows.append(
            {
                "name": name,
                "description": hw.description,
                "int8_macs": hw.mac.pes,
                "freq_hz": hw.clock.freq_hz,
                "int8_tops": 2 * hw.peak_macs_per_cycle["int8"] * hw.clock.freq_hz / 1e12,
                "sram_bytes": hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes,
                "dram_gb_s": hw.dram.bandwidth_bytes_per_s / 1e9,
                "flash_gb_s": hw.flash.bandwidth_bytes_per_s / 1e9,
                "dynamic_quant": hw.vector.online_reduction,
                "area_mm2": sum(area_breakdown_mm2(hw).values()),
            }
        )
    if args.json:
        print(jsonout.dumps(rows))
        return 0
    print(
        f"{'name':18s} {'MACs':>6s} {'GHz':>5s} {'TOPS':>6s} {'SRAM':>8s} {'DRAM GB/s':>9s} "
        f"{'flash GB/s':>10s} {'dyn-quant':>9s} {'mm2':>6s}"
    )
    for r in rows:
        print(
            f"{r['name']:18s} {r['int8_macs']:6d} {r['freq_hz'] / 1e9:5.2f} {r['int8_tops']:6.2f} "
            f"{r['sram_bytes'] / 2**20:6.1f}Mi {r['dram_gb_s']:9.1f} {r['flash_gb_s']:10.1f} "
            f"{r['dynamic_quant']!s:>9s} {r['area_mm2']:6.2f}"
        )
    return 0
