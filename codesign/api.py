"""What a notebook or a script calls, one function per step of the flow: build a trace, simulate it on
a hardware configuration, sweep or search a design space, load the results, analyse and plot them,
write the report. The `codesign`
commands call the same functions; nothing here parses arguments or prints.

Names or objects are accepted alike (a workload preset name or a ``Workload``, a recipe name or a
``Recipe``, a hardware preset name or an ``HWConfig``, a spec name, file or mapping or a
``SweepSpec``). Heavy packages (torch, dask) are imported on first use, so importing this module is
cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from codesign.optimize import OptimizeSummary
    from codesign.spec import SweepSpec
    from codesign.sweep import SweepSummary
    from hwsim import HWConfig, SimResult
    from workloads.presets import Gemm, Workload
    from workloads.recipes import Recipe
    from workloads.trace import Trace


def workload(name: str | Path) -> Workload | Gemm:
    """A workload preset, YAML file or ``gemm:M,K,N`` as the model's dimensions (``num_steps``,
    ``hidden``, ...), without tracing it."""
    from workloads.presets import get_workload

    return get_workload(str(name))


def trace(workload: str | Workload | Gemm, recipe: str | Recipe | None = None) -> Trace:
    """The op trace of ``workload`` (every op of every step, traced on the meta device), annotated
    with ``recipe``'s bit-widths, weight sets and extra ops (None: fp16). A SCALE-Sim topology file
    (``.csv``) is read as SCALE-Sim runs it (int8 operands) and takes no recipe."""
    from quantmodel.model.tracing import build_trace
    from workloads.errors import ConfigError
    from workloads.presets import get_workload
    from workloads.recipes import annotate_trace, get_recipe

    if isinstance(workload, str) and workload.lower().endswith(".csv"):
        from hwsim.interchange import read_scalesim_topology

        if recipe:
            raise ConfigError(
                "recipe",
                recipe if isinstance(recipe, str) else recipe.name,
                "none with a SCALE-Sim topology (it runs int8 operands, one byte per SCALE-Sim word)",
            )
        return read_scalesim_topology(workload)
    recipe = recipe or "fp16"
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe  # a bad name fails before tracing
    workload = get_workload(workload) if isinstance(workload, str) else workload
    return annotate_trace(build_trace(workload), recipe)


def trace_model(model, inputs, steps: int = 1, recipe: str | Recipe | None = None, name: str | None = None) -> Trace:
    """The op trace of any PyTorch model: ``model`` an ``nn.Module``, a factory or
    ``"package.module:factory"``; ``inputs`` input shapes (``"2x4x32x32,timestep=2:long"``), an
    example-inputs factory or a tuple of tensors (:mod:`quantmodel.model.module_trace`); ``steps``
    forward passes; annotated with ``recipe`` (None: fp16; which layers it quantizes is the recipe's
    ``layers`` patterns)."""
    from quantmodel.model.module_trace import trace_model as _trace_model
    from workloads.recipes import annotate_trace, get_recipe

    recipe = get_recipe(recipe or "fp16") if not hasattr(recipe, "scheme") else recipe
    return annotate_trace(_trace_model(model, inputs, steps, name), recipe)


def load_trace(path: str | Path, recipe: str | Recipe | None = None) -> Trace:
    """A saved trace (.parquet or .csv); a float one is annotated with ``recipe`` when given."""
    from workloads.errors import ConfigError
    from workloads.recipes import annotate_trace, get_recipe
    from workloads.trace import Trace

    tr = Trace.load(path)
    if recipe is None:
        return tr
    name = recipe if isinstance(recipe, str) else recipe.name
    if tr.meta.get("recipe", "fp16") != "fp16":
        raise ConfigError("recipe", name, f"none: trace {path} is already quantized with {tr.meta.get('recipe')}")
    return annotate_trace(tr, get_recipe(recipe) if isinstance(recipe, str) else recipe)


def hardware(hw: str | HWConfig = "edge-npu", overrides: dict | None = None, base: str = "edge-npu") -> HWConfig:
    """A hardware preset name or YAML file (or a config), with dotted fields replaced by ``overrides``
    (e.g. ``{"flash.part": "ufs4.0"}``). A SCALE-Sim ``.cfg`` is laid over the ``base`` preset."""
    import hwsim

    if isinstance(hw, str) and hw.lower().endswith(".cfg"):
        from hwsim.interchange import read_scalesim_cfg

        cfg = read_scalesim_cfg(hw, hwsim.load_hw(base))
    else:
        cfg = hwsim.load_hw(hw) if isinstance(hw, str) else hw
    return hwsim.with_overrides(cfg, overrides) if overrides else cfg


def simulate(tr: Trace, hw: str | HWConfig = "edge-npu", prefetch: str = "jit", timeline: bool = False) -> SimResult:
    """Latency, energy, area, storage, swaps and stalls of ``tr`` on ``hw`` (the SimPy model)."""
    import hwsim

    return hwsim.simulate(tr, hardware(hw), prefetch=prefetch, timeline=timeline)


def summary(res: SimResult, hw: str | HWConfig, sim_s: float = 0.0) -> str:
    """One result as the text report `codesign simulate` prints."""
    from codesign.summary import format_report

    return format_report(res, hardware(hw), sim_s)


def plots(res: SimResult, hw: str | HWConfig, out_dir: str | Path) -> list[Path]:
    """PNG figures of one result (timelines, breakdowns, roofline; timelines need ``timeline=True``
    in :func:`simulate`) written into ``out_dir``; their paths."""
    from hwsim.plots import write_plots

    return write_plots(res, hardware(hw), out_dir)


def load_spec(spec: str | Path | dict | SweepSpec) -> SweepSpec:
    """A sweep spec from a name in ``codesign/specs/``, a YAML file or a mapping of the same fields,
    validated (every axis value against the hardware schema)."""
    from codesign.spec import SweepSpec, spec_from_dict
    from codesign.spec import load_spec as _load

    if isinstance(spec, SweepSpec):
        return spec
    return spec_from_dict(spec) if isinstance(spec, dict) else _load(spec)


def sweep(spec: str | Path | dict | SweepSpec, out: str | Path, **options) -> SweepSummary:
    """Compute every missing design point of ``spec`` into the results folder ``out`` (resumable);
    ``options`` are :func:`codesign.sweep.run_sweep`'s (``jobs``, ``scheduler``, ``progress``, ...)."""
    from codesign.sweep import run_sweep

    return run_sweep(load_spec(spec), out, **options)


def optimize(
    spec: str | Path | dict | SweepSpec,
    out: str | Path,
    objectives: list[str] = ("latency_s", "energy_j", "area_mm2"),
    constraints: list[str] = (),
    trials: int = 100,
    sampler: str = "gp",
    **options,
) -> OptimizeSummary:
    """A multi-objective search (Optuna: ``gp``, ``tpe``, ``nsga2`` or ``random``) of ``trials`` design points
    over ``spec``'s axes and recipes, minimising ``objectives`` (result columns) subject to
    ``constraints`` (``"q.sqnr_db>=40"``), into the same results folder a sweep writes; ``options`` are
    :func:`codesign.optimize.optimize`'s (``seed``, ``batch``, ``jobs``, ``scheduler``, ``progress``)."""
    from codesign.optimize import Constraint
    from codesign.optimize import optimize as _optimize

    cons = [c if isinstance(c, Constraint) else Constraint.parse(c) for c in constraints]
    return _optimize(load_spec(spec), out, list(objectives), cons, trials=trials, sampler=sampler, **options)


def load_results(results: str | Path) -> pd.DataFrame:
    """Every design point of a results folder as one DataFrame (columns: ``codesign/store.py``)."""
    from codesign.store import load_results as _load

    return _load(results)


def load_quality(results: str | Path) -> pd.DataFrame:
    """The quality rows of a results folder (one per quality workload x recipe; ``q.*`` columns)."""
    from codesign.store import load_quality as _load

    return _load(results)


def quality_metric(results: pd.DataFrame) -> tuple[str, str] | None:
    """The quality column a report ranks by in these results and its sense (``"max"``: higher is
    better), or None where the results carry no quality."""
    from codesign.report import quality_metric as _metric

    return _metric(results)


def static_vs_dynamic(ok: pd.DataFrame) -> pd.DataFrame:
    """Each static recipe against dynamic quantization on the same chip and bit-widths: one row per
    pair and metric (``metric``, ``versus``, ``ratio`` = dynamic / static)."""
    from codesign.report import static_vs_dynamic as _pairs

    return _pairs(ok)


def plot_ratios(ratios: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Box plots of :func:`static_vs_dynamic`'s ratios, one panel per metric, written to ``path``."""
    from codesign.plots import ratio_boxes

    return ratio_boxes(ratios, path, title)


def plot_swaps_vs_k(curves: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Swap stall, weight storage (and relative energy) against the number of weight sets K, one line
    per value of the ``curve`` column, written to ``path``."""
    from codesign.plots import swap_vs_k

    return swap_vs_k(curves, path, title)


def report(results: str | Path, out: str | Path, timing: bool = False) -> Path:
    """report.md and its PNG figures for a results folder, written into ``out``; report.md's path
    (``timing``: keep the per-point wall-clock seconds in pareto_points.csv)."""
    from codesign.report import write_report

    return write_report(results, out, timing=timing)
