"""`codesign workloads` and `codesign trace`: list workload presets; build a full-size op trace."""

from __future__ import annotations

import sys
import time

from codesign.cli import jsonout


def register(sub) -> None:
    p = sub.add_parser("workloads", help="list workload presets")
    p.add_argument("--json", action="store_true", help="print the presets as JSON")
    p.set_defaults(func=run_workloads)
    p = sub.add_parser("trace", help="build the op trace of a workload (meta device, no arithmetic)")
    p.add_argument("--workload", help="preset name, YAML file, or gemm:M,K,N")
    p.add_argument(
        "--model", metavar="PKG.MODULE:FACTORY", help="instead of --workload: any torch.nn.Module (built on meta)"
    )
    p.add_argument(
        "--input",
        metavar="SHAPES|PKG.MODULE:FN",
        help="with --model: input shapes (2x4x32x32,timestep=2:long) or an example-inputs factory",
    )
    p.add_argument("--steps", type=int, default=1, help="with --model: forward passes to trace (default 1)")
    p.add_argument(
        "--layers", help="comma list of layer-name patterns the recipe quantizes (default: the recipe's own)"
    )
    p.add_argument("--recipe", default="fp16", help="annotate with a quantization recipe (default fp16)")
    p.add_argument("--out", help="write the trace (.parquet or .csv)")
    p.add_argument(
        "--scalesim-topology",
        metavar="CSV",
        help="also write the GEMMs of one step as a SCALE-Sim topology (Layer Name, M, N, K)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--timing",
        action="store_true",
        help="add the build time under one 'timing' key of --json (left out by default: reproducible output)",
    )
    p.set_defaults(func=run_trace)


def run_workloads(args) -> int:
    from workloads.presets import get_workload, preset_names

    rows = []
    for name in preset_names():
        w = get_workload(name)
        t, h, wd = w.latent_size
        rows.append(
            {
                "name": name,
                "frames": w.num_frames,
                "height": w.height,
                "width": w.width,
                "latent": f"{t}x{h}x{wd}",
                "tokens": w.num_tokens,
                "depth": w.model.depth,
                "hidden": w.model.hidden_size,
                "sampler": w.sampler,
                "steps": w.num_steps,
                "cfg": w.cfg_scale,
                "description": w.description,
            }
        )
    if args.json:
        print(jsonout.dumps(rows))
        return 0
    print(f"{'name':28} {'video':>11} {'latent':>9} {'tokens':>7} {'model':>9} {'sampler':>8} {'steps':>5} {'cfg':>4}")
    for r in rows:
        video = f"{r['frames']}x{r['height']}x{r['width']}"
        print(
            f"{r['name']:28} {video:>11} {r['latent']:>9} {r['tokens']:>7} "
            f"{str(r['depth']) + 'x' + str(r['hidden']):>9} {r['sampler']:>8} {r['steps']:>5} "
            f"{r['cfg']:>4}"
        )
    print("also: a workload YAML file (see workloads/presets/*.yaml) or gemm:M,K,N")
    return 0


def run_trace(args) -> int:
    from codesign import api
    from codesign.cli.checks import check_out_file
    from workloads.errors import ConfigError
    from workloads.presets import get_workload
    from workloads.recipes import get_recipe

    if bool(args.workload) == bool(args.model):
        raise ConfigError("workload", args.workload or "(none)", "exactly one of --workload or --model")
    if args.model and not args.input:
        raise ConfigError("input", None, "input shapes or an example-inputs factory for --model")
    if args.out:
        check_out_file("out", args.out, (".parquet", ".csv"))
    if args.scalesim_topology:
        check_out_file("scalesim-topology", args.scalesim_topology, (".csv",))
    workload = get_workload(args.workload) if args.workload else None
    recipe = get_recipe(args.recipe)
    if args.layers:
        import dataclasses

        recipe = dataclasses.replace(recipe, layers=tuple(p.strip() for p in args.layers.split(",") if p.strip()))
    t0 = time.perf_counter()
    trace = api.trace(workload, recipe) if workload else api.trace_model(args.model, args.input, args.steps, recipe)
    build_s = time.perf_counter() - t0
    if args.out:
        trace.save(args.out)
    summary = dict(trace.summary())
    if args.out:
        summary["out"] = args.out
    if args.scalesim_topology:
        from hwsim.interchange import write_scalesim_topology

        summary["scalesim_topology"] = args.scalesim_topology
        summary["scalesim_layers"] = write_scalesim_topology(trace, args.scalesim_topology)
    if args.json:
        if args.timing:
            summary["timing"] = {"build_s": build_s}
        print(jsonout.dumps(summary))
        return 0
    gib = 2**30
    print(f"workload   {summary['workload']}   recipe {summary['recipe']}")
    print(f"steps      {summary['steps']}   ops {summary['ops']:,} ({summary['ops_per_step']} per step)")
    print(f"MACs       {summary['total_macs']:.4e} total, {summary['macs_per_step']:.4e} per step")
    print(
        f"weights    {summary['weight_storage_bytes'] / gib:.3f} GiB stored "
        f"({summary['weight_sets']} quantized set(s) of {summary['weight_bytes_per_set'] / gib:.3f} GiB"
        f" + {summary['float_weight_bytes'] / gib:.3f} GiB float"
        + (
            f" + {summary['scale_table_bytes'] / gib:.3f} GiB per-step scale tables"
            if summary["scale_table_bytes"]
            else ""
        )
        + ")"
    )
    print(f"activations {summary['activation_bytes'] / gib:.1f} GiB moved (inputs + outputs of all ops)")
    if args.scalesim_topology:
        print(f"SCALE-Sim topology: {summary['scalesim_layers']} GEMM layers of one step in {args.scalesim_topology}")
    print(f"built in {build_s:.2f} s" + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0
