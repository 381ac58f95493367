"""Search, not only sampling: a multi-objective search (Optuna) over the space a sweep spec declares.

A trial is one design point, the spec's hardware axes plus the recipe: list axes are categorical
choices (ordinal when they list three or more numbers in order), range axes continuous (log-scaled
where the spec says so). Optuna's sampler (a Gaussian process with expected hypervolume improvement
by default; multivariate TPE, NSGA-II or plain random for comparison) asks for a batch of trials; the
batch is computed by the sweep's own machinery (:func:`codesign.sweep.run_sweep` with explicit
points), locally or on a Dask cluster, into the same resumable results folder, so ``codesign report``
reads a search like a sweep, and a point a sweep already computed is not computed again. The objectives (result columns, all
minimised) are then told back; constraints (``q.sqnr_db>=40``, ``area_mm2<=4``) make a trial
infeasible for the sampler without hiding it from the store.

Rerunning the same search (same spec, seed, sampler and trial count) asks the same points and finds
them in the store: a killed search resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from codesign import spec as budgets  # read at call time: the budget is a module setting
from codesign.spec import PREFETCH_AXIS, HardwarePoint, RangeAxis, SweepSpec, flatten
from codesign.store import SCALAR_METRICS, load_quality, load_results
from codesign.sweep import point_hw_dict, point_key, run_sweep, workload_identity
from workloads.errors import ConfigError

SAMPLERS = ("gp", "tpe", "nsga2", "random")
NUMERIC_METRICS = tuple(m for m in SCALAR_METRICS if m not in ("weight_placement", "prefetch_used"))
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``column >= value`` or ``column <= value`` on a result column (``q.*``: quality columns)."""

    column: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT.match(text or "")
        if not m:
            raise ConfigError("constraint", text, "COLUMN>=NUMBER or COLUMN<=NUMBER, e.g. q.sqnr_db>=40")
        try:
            value = float(m.group(3))
        except ValueError:
            raise ConfigError("constraint", text, "a finite number after the comparison") from None
        if not math.isfinite(value):
            raise ConfigError("constraint", text, "a finite number after the comparison")
        return cls(m.group(1), m.group(2), value)

    def violation(self, x: float) -> float:
        """<= 0 when satisfied (Optuna's convention); a missing value (NaN) violates."""
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return 1.0
        return self.value - x if self.op == ">=" else x - self.value


@dataclass(frozen=True)
class _PointsSpec(SweepSpec):
    """The spec with the search's points in place of its own sampling (same hash: same folder)."""

    points: tuple = ()

    def hardware_points(self) -> list[HardwarePoint]:
        return list(self.points)


@dataclass
class OptimizeSummary:
    trials: int
    computed: int  # points simulated by this run (the rest were in the store)
    failed: int  # trials whose chip the hardware model refused
    feasible: int
    pareto: list[dict]  # the feasible non-dominated trials: objectives, recipe, hardware values
    wall_s: float
    history: list = dataclasses.field(
        default_factory=list
    )  # per trial in order: objectives, or None (refused/infeasible)
    units: dict = dataclasses.field(default_factory=dict)  # objective or axis name -> unit of its value

    def to_json(self, objectives: list[str]) -> dict:
        """What ``codesign optimize --json`` prints (codesign/schemas/optimize.schema.json)."""
        return {
            "objectives": list(objectives),
            "trials": self.trials,
            "computed": self.computed,
            "from_store": self.trials - self.computed,
            "refused": self.failed,
            "feasible": self.feasible,
            "pareto": [
                {
                    "objectives": {o: self._valued(o, float(row[o])) for o in objectives},
                    "recipe": row["recipe"],
                    "hardware": {
                        k: self._valued(k, v)
                        for k, v in row.items()
                        if k not in objectives and k not in ("recipe", "key")
                    },
                    "key": row["key"],
                }
                for row in self.pareto
            ],
        }  # no wall-clock field: the same search prints the same bytes

    def _valued(self, name: str, value) -> dict:
        return {"value": value, "unit": self.units.get(name, "1")}

    def line(self) -> str:
        return (
            f"{self.trials} trials ({self.computed} computed, {self.trials - self.computed} from the store), "
            f"{self.failed} refused chips, {self.feasible} feasible, {len(self.pareto)} on the Pareto front, "
            f"{self.wall_s:.1f} s"
        )


def _check_columns(objectives: list[str], constraints: list[Constraint], spec: SweepSpec) -> None:
    if not objectives:
        raise ConfigError("objectives", "", "at least one result column, e.g. latency_s,energy_j,area_mm2")
    for o in objectives:
        if o not in NUMERIC_METRICS:
            raise ConfigError("objectives", o, "result columns: " + ", ".join(NUMERIC_METRICS))
    if len(set(objectives)) != len(objectives):
        raise ConfigError("objectives", ",".join(objectives), "distinct result columns")
    for c in constraints:
        if c.column.startswith("q."):
            if spec.quality_workload is None:
                raise ConfigError("constraint", c.column, "a cost column (this spec computes no quality)")
        elif c.column not in NUMERIC_METRICS:
            raise ConfigError("constraint", c.column, "a result column or a q.* quality column")


def _sampler(name: str, seed: int):
    import warnings

    import optuna

    if name not in SAMPLERS:
        raise ConfigError("sampler", name, " or ".join(SAMPLERS))
    # constraints reach the samplers through Trial.set_constraint (Optuna >= 5)
    if name == "gp":  # the costs are a deterministic function of the point: no noise term to fit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10, deterministic_objective=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)


def _ordinal(values) -> bool:
    """A list axis of three or more numbers in order (``mac.arrays: [1, 2, 4]``, ``tech.node_nm: [7, 5, 4]``)."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    steps = [b - a for a, b in zip(nums, nums[1:])]
    return len(nums) == len(values) >= 3 and (all(d > 0 for d in steps) or all(d < 0 for d in steps))


def suggest_point(trial, spec: SweepSpec, index: int) -> tuple[HardwarePoint, str]:
    """The trial's hardware point (as a sweep would have drawn it) and recipe."""
    values = {}
    for name, axis in spec.axes:
        if isinstance(axis, RangeAxis):
            log = axis.scale == "log"
            if axis.integer:
                values[name] = trial.suggest_int(name, int(axis.min), int(axis.max), log=log)
            else:
                values[name] = float(f"{trial.suggest_float(name, axis.min, axis.max, log=log):.6g}")
        elif _ordinal(axis):  # an ordered scale: neighbours are alike, which GP and TPE can use
            values[name] = axis[trial.suggest_int(name, 0, len(axis) - 1)]
        else:
            values[name] = axis[trial.suggest_categorical(name, list(range(len(axis))))]
    recipe = trial.suggest_categorical("recipe", list(spec.recipes))
    ov = []
    for name, v in values.items():
        if isinstance(v, dict):
            ov += [(f"{name}.{k}", x) for k, x in flatten(v).items()]
        elif name != PREFETCH_AXIS:
            ov.append((name, v))
    return HardwarePoint(index, tuple(ov), values.get(PREFETCH_AXIS, spec.prefetch)), recipe


def optimize(
    spec: SweepSpec,
    out: str | Path,
    objectives: list[str],
    constraints: list[Constraint] = (),
    trials: int = 100,
    sampler: str = "gp",
    seed: int = 0,
    batch: int = 10,
    jobs: int | None = None,
    scheduler=None,
    progress: bool = True,
) -> OptimizeSummary:
    """Run ``trials`` search trials of ``spec`` into the results folder ``out`` (see the module docstring)."""
    import optuna

    _check_columns(objectives, list(constraints), spec)
    for name, n in (("trials", trials), ("batch", batch)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(name, n, "a positive integer")
    if trials > budgets.MAX_DESIGN_POINTS:  # the sweep's budget: --trials 99999999999 ran on without end
        raise ConfigError(
            "trials", trials, f"at most {budgets.MAX_DESIGN_POINTS:,} (the design-point budget of a spec)"
        )
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * len(objectives), sampler=_sampler(sampler, seed))
    run = dict(jobs=jobs, scheduler=scheduler, progress=False)
    quality = {}
    if any(c.column.startswith("q.") for c in constraints):  # once per recipe, before the search
        run_sweep(_PointsSpec(**_fields(spec), points=()), out, **run)
        q = load_quality(out)
        quality = {r["recipe"]: r for r in q.to_dict("records")} if len(q) else {}
    computed = failed = 0
    done = 0
    bar = _bar(trials, spec.name, progress)
    while done < trials:
        asked = [study.ask() for _ in range(min(batch, trials - done))]
        points = [suggest_point(t, spec, t.number) for t in asked]
        keys = [_key(spec, p, r) for p, r in points]
        summary = run_sweep(
            _PointsSpec(**_fields(spec), points=tuple(p for p, _ in points)),
            out,
            pairs={(p.index, r) for p, r in points},
            **run,
        )
        computed += summary.computed_points
        rows = load_results(out).drop_duplicates("key", keep="last").set_index("key")
        for trial, (_, r), key in zip(asked, points, keys):
            row = rows.loc[key].to_dict() if key in rows.index else {"status": "failed"}
            if row.get("status") != "ok":
                failed += 1
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            row.update({k: v for k, v in quality.get(r, {}).items() if k.startswith("q.")})
            trial.set_user_attr("key", key)
            violations = [c.violation(row.get(c.column, float("nan"))) for c in constraints]
            trial.set_user_attr("constraints", violations)
            for c, v in zip(constraints, violations):
                trial.set_constraint(f"{c.column}{c.op}{c.value:g}", v)
            study.tell(trial, [float(row[o]) for o in objectives])
        done += len(asked)
        bar.update(len(asked))
    bar.close()
    s = _summary(study, objectives, trials, computed, failed, time.perf_counter() - t0)
    s.units = value_units(spec, objectives)
    return s


def value_units(spec: SweepSpec, objectives: list[str]) -> dict[str, str]:
    """The unit of each value the search reports: an objective's is its store column's, a range axis's
    the hardware column's, a list axis's ``index`` (the sampler picks a position in the spec's list)."""
    from codesign.store_schema import HW_COLUMNS, points_schema

    units = {o: points_schema().field(o).metadata[b"unit"].decode() or "1" for o in objectives}
    for name, axis in spec.axes:
        units[name] = (HW_COLUMNS.get(name, ("",))[0] or "1") if isinstance(axis, RangeAxis) else "index"
    return units


def _fields(spec: SweepSpec) -> dict:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(SweepSpec)}


def _key(spec: SweepSpec, point: HardwarePoint, recipe: str) -> str:
    import hwsim
    from workloads.presets import get_workload
    from workloads.recipes import get_recipe

    d = point_hw_dict(hwsim.hw_to_dict(hwsim.load_hw(spec.hw_base)), point)
    wl = workload_identity(get_workload(spec.cost_workload))
    return point_key(wl, get_recipe(recipe).to_dict(), d, point.prefetch)


def _bar(total: int, name: str, progress: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc=f"optimize {name}", file=sys.stderr, disable=not progress)


def _summary(study, objectives, trials, computed, failed, wall_s) -> OptimizeSummary:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in complete if all(v <= 0 for v in t.user_attrs.get("constraints", []))]
    front = pareto_front([t.values for t in feasible])
    pareto = [
        {**dict(zip(objectives, feasible[i].values)), **feasible[i].params, "key": feasible[i].user_attrs["key"]}
        for i in front
    ]
    ok = {t.number: tuple(t.values) for t in feasible}
    history = [ok.get(t.number) for t in sorted(study.trials, key=lambda t: t.number)]
    return OptimizeSummary(trials, computed, failed, len(feasible), pareto, wall_s, history)


def pareto_front(values: list) -> list[int]:
    """Indices of the non-dominated rows of ``values`` (all objectives minimised)."""
    front = []
    for i, v in enumerate(values):
        dominated = any(
            all(a <= b for a, b in zip(w, v)) and any(a < b for a, b in zip(w, v))
            for j, w in enumerate(values)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def hypervolume(points: list, reference: list) -> float:
    """Volume dominated by ``points`` (minimised objectives) and bounded by ``reference``: exact, by
    slicing along the last objective (2 or 3 objectives; points outside the box are dropped)."""
    pts = [tuple(p) for p in points if all(a < r for a, r in zip(p, reference))]
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    vol = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else reference[-1]
        if upper > p[-1]:
            vol += (upper - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], reference[:-1])
    return vol
