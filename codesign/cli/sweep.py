"""`codesign sweep` and `codesign report`: run a design-space sweep into a results folder; turn a
results folder into plots and a Markdown summary."""

from __future__ import annotations

import sys

from codesign.cli import progress_enabled


def register(sub) -> None:
    p = sub.add_parser("sweep", help="sweep quantization recipes x hardware points (resumable)")
    p.add_argument("spec", help="sweep spec YAML (or a name in codesign/specs/, e.g. default)")
    p.add_argument("--out", required=True, help="results folder (Parquet parts; rerun resumes)")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: one per core)")
    p.add_argument(
        "--scheduler", default=None, help="Dask scheduler address (tcp://host:8786) to run on a cluster instead"
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the Dask scheduler (default 10)",
    )
    p.add_argument(
        "--append", action="store_true", help="add this spec's points to a folder holding another spec's results"
    )
    p.add_argument(
        "--flush-every",
        type=float,
        default=1.0,
        metavar="S",
        help="write finished points to the store at least every S seconds (default 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sweep_cmd)

    p = sub.add_parser("report", help="plots (PNG) and a Markdown summary of a results folder")
    p.add_argument("results", help="results folder written by `codesign sweep`")
    p.add_argument("--out", required=True, help="report folder (report.md + PNG plots)")
    p.add_argument(
        "--timing",
        action="store_true",
        help="keep the per-point wall-clock seconds (sim_wall_s) in pareto_points.csv; left out by "
        "default so two reports of the same results are identical byte for byte",
    )
    p.set_defaults(func=run_report_cmd)


def run_sweep_cmd(args) -> int:
    from codesign import api
    from codesign.cli.checks import check_out_dir
    from codesign.spec import load_spec
    from workloads.errors import ConfigError

    check_out_dir("--out", args.out)
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs", args.jobs, "a positive integer")
    if args.jobs is not None and args.scheduler:
        raise ConfigError("--jobs", args.jobs, "no value with --scheduler (the cluster sets the workers)")
    spec = load_spec(args.spec)
    for flag, v in (("--connect-timeout", args.connect_timeout), ("--flush-every", args.flush_every)):
        if not v > 0:
            raise ConfigError(flag, v, "a positive number of seconds")
    summary = api.sweep(
        spec,
        args.out,
        jobs=args.jobs,
        scheduler=args.scheduler,
        append=args.append,
        progress=progress_enabled(args),
        connect_timeout_s=args.connect_timeout,
        flush_every_s=args.flush_every,
    )
    print(summary.line())
    print(f"results: {args.out} (codesign report {args.out} --out REPORT_DIR)")
    return 0


def run_report_cmd(args) -> int:
    import shutil

    from codesign import api
    from codesign.cli.checks import check_out_dir

    out = check_out_dir("--out", args.out)
    created = not out.exists()
    try:
        path = api.report(args.results, out, timing=args.timing)
    except BaseException:
        if created:  # a report that failed half-way leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"report: {path}", file=sys.stdout)
    return 0
