"""What a notebook or a script calls, one function per step of the flow: build a trace, simulate it on
a hardware configuration, sweep a design space, load the results, write the report. The `codesign`
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

    from codesign.spec import SweepSpec
    from codesign.sweep import SweepSummary
    from hwsim import HWConfig, SimResult
    from workloads.presets import Gemm, Workload
    from workloads.recipes import Recipe
    from workloads.trace import Trace


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


def sweep(spec: str | Path | dict | SweepSpec, out: str | Path, **options) -> SweepSummary:
    """Compute every missing design point of ``spec`` into the results folder ``out`` (resumable);
    ``options`` are :func:`codesign.sweep.run_sweep`'s (``jobs``, ``scheduler``, ``progress``, ...)."""
    from codesign.spec import load_spec, spec_from_dict
    from codesign.sweep import run_sweep

    if isinstance(spec, dict):
        spec = spec_from_dict(spec)
    elif isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    return run_sweep(spec, out, **options)


def load_results(results: str | Path) -> pd.DataFrame:
    """Every design point of a results folder as one DataFrame (columns: ``codesign/store.py``)."""
    from codesign.store import load_results as _load

    return _load(results)


def report(results: str | Path, out: str | Path, timing: bool = False) -> Path:
    """report.md and its PNG figures for a results folder, written into ``out``; report.md's path
    (``timing``: keep the per-point wall-clock seconds in pareto_points.csv)."""
    from codesign.report import write_report

    return write_report(results, out, timing=timing)
