"""`codesign optimize`: a multi-objective search (Optuna) over a sweep spec's space, into the same
resumable results folder a sweep writes (so `codesign report` reads it)."""

from __future__ import annotations

from codesign.cli import jsonout, progress_enabled


def register(sub) -> None:
    p = sub.add_parser("optimize", help="multi-objective search over a sweep spec's hardware axes and recipes")
    p.add_argument("spec", help="sweep spec YAML (or a name in codesign/specs/, e.g. default)")
    p.add_argument("--out", required=True, help="results folder (shared with sweeps of the same spec)")
    p.add_argument(
        "--objectives", default="latency_s,energy_j,area_mm2", help="result columns to minimise (comma list)"
    )
    p.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="COL>=X",
        help="feasibility bound on a result or q.* quality column, e.g. q.sqnr_db>=40 (repeatable)",
    )
    p.add_argument("--trials", type=int, default=100, help="design points to evaluate (default 100)")
    p.add_argument(
        "--sampler",
        default="gp",
        help="gp (default: Gaussian process, best hypervolume in benchmarks/bench_optimize.py), tpe, nsga2, or random",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=10, help="trials asked and computed together (default 10)")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: one per core)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address to run the trials on a cluster")
    p.add_argument("--json", action="store_true", help="print the summary and Pareto front as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from codesign.cli.checks import check_out_dir
    from codesign.optimize import Constraint, optimize
    from codesign.spec import load_spec
    from workloads.errors import ConfigError

    check_out_dir("--out", args.out)
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs", args.jobs, "a positive integer")
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    constraints = [Constraint.parse(c) for c in args.constraint]
    spec = load_spec(args.spec)
    summary = optimize(
        spec,
        args.out,
        objectives,
        constraints,
        trials=args.trials,
        sampler=args.sampler,
        seed=args.seed,
        batch=args.batch,
        jobs=args.jobs,
        scheduler=args.scheduler,
        progress=progress_enabled(args),
    )
    if args.json:
        print(jsonout.dumps(summary.to_json(objectives), default=str))
        return 0
    print(summary.line())
    for row in sorted(summary.pareto, key=lambda r: r[objectives[0]]):
        objs = ", ".join(f"{o} {row[o]:.4g}" for o in objectives)
        print(f"  {row['recipe']:<16} {objs}")
    print(f"results: {args.out} (codesign report {args.out} --out REPORT_DIR)")
    return 0
