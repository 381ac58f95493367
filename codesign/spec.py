"""Sweep specs: which workloads, which quantization recipes, which hardware points.

A spec is a YAML file (``codesign/specs/default.yaml`` is the worked example)::

    name: edge-npu-static-vs-dynamic
    cost_workload: opensora-v1.0-16x512x512    # traced at full size for latency / energy / storage
    quality:                                   # optional; omit (or null) to skip quality
      workload: stdit-tiny                     # small enough to run the integer emulator on a CPU
      options: {}                              # keyword arguments for quantmodel.eval.quality
    recipes: [static-w8a8, asq-w8a8, tsq-tsw-w8a8, groups4-w8a8, dynamic-w8a8]
    hardware:
      base: edge-npu                           # hwsim preset name or YAML file
      sampling: random                         # grid (every combination) | random (samples, seed)
      samples: 300
      seed: 0
      axes:                                    # dotted HWConfig fields (+ `prefetch`, a simulate option)
        mac.rows: [16, 32, 64]                 # a list: grid values / uniform choice
        clock.freq_hz: {min: 6.0e8, max: 1.2e9, scale: log}   # random only
        tech.node_nm: [7, 5, 4]                # a node moves energy, area, leakage and the V-f curve
        dram:                                  # a section: each value sets several fields together
          - {part: lpddr5-6400, channels: 2}
          - {part: lpddr5x-8533, channels: 4}

The spec is validated when it is loaded (unknown keys, unknown axes, empty grids, bad recipes all
raise ``ConfigError``), so a sweep never dies half-way on a typo. Its content hash names the results
folder's owner (``spec_hash``) so a folder is never silently filled with two studies' points.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from workloads.errors import ConfigError, check_known_fields

SPEC_DIR = Path(__file__).with_name("specs")
SAMPLING = ("grid", "random")
PREFETCH_AXIS = "prefetch"  # not a HWConfig field: the weight-prefetch policy handed to hwsim.simulate
PREFETCH_POLICIES = ("jit", "early")
_TOP_FIELDS = {"name", "description", "cost_workload", "quality", "recipes", "hardware"}
_QUALITY_FIELDS = {"workload", "options"}
# keyword arguments of the quality evaluation (quantmodel.eval.quality): calibration prompts, evaluation
# samples, emulator backend and non-linear mode, a checkpoint for the quality model, whether the emulator
# measures each layer's SQNR (eager) or runs its compiled program
QUALITY_OPTIONS = {"num_prompts", "num_samples", "backend", "nonlinear", "checkpoint", "layer_sqnr"}
_HW_FIELDS = {"base", "sampling", "samples", "seed", "axes", "prefetch"}
_RANGE_FIELDS = {"min", "max", "scale", "integer"}
# assumption: the most design points (hardware points x recipes) one spec may ask for. A 1,000-point
# sweep of the full-size workload takes about 5 minutes on the 2-core CI machine (README), so this is
# a week of one such machine: a larger number is a typo (samples: 1e9), refused before points are drawn
MAX_DESIGN_POINTS = 2_000_000


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.2 floats: ``8.0e8`` is a number (PyYAML's 1.1 rules read it as a string)."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def canonical_json(obj: object) -> str:
    """Stable JSON for hashing: sorted keys, no spaces, floats as repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: object, length: int = 20) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested mapping -> {dotted.path: leaf value}."""
    out: dict[str, object] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def set_dotted(d: dict, path: str, value: object) -> dict:
    """Copy of nested mapping ``d`` with the leaf at ``path`` replaced."""
    head, _, rest = path.partition(".")
    new = dict(d)
    new[head] = set_dotted(d[head], rest, value) if rest else value
    return new


@dataclass(frozen=True)
class RangeAxis:
    """A continuous axis for random sampling: uniform in [min, max] (or in log space)."""

    min: float
    max: float
    scale: str = "linear"
    integer: bool = False

    def draw(self, rng: np.random.Generator) -> float | int:
        lo, hi = (math.log(self.min), math.log(self.max)) if self.scale == "log" else (self.min, self.max)
        x = float(rng.uniform(lo, hi))
        x = math.exp(x) if self.scale == "log" else x
        return int(round(x)) if self.integer else float(f"{x:.6g}")  # 6 significant digits: stable keys


@dataclass(frozen=True)
class HardwarePoint:
    """One point of the hardware space: axis values over the base config (``prefetch`` separate)."""

    index: int
    overrides: tuple[tuple[str, object], ...]  # (dotted field, value), in axis order
    prefetch: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.overrides)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    cost_workload: str
    recipes: tuple[str, ...]
    hw_base: str
    sampling: str
    axes: tuple[tuple[str, object], ...]  # (name, list of values | RangeAxis)
    samples: int = 0
    seed: int = 0
    prefetch: str = "jit"  # default policy when `prefetch` is not an axis
    quality_workload: str | None = None
    quality_options: dict = field(default_factory=dict)
    description: str = ""
    source: dict = field(default_factory=dict)  # the mapping as loaded, for the results folder

    @property
    def spec_hash(self) -> str:
        """Content hash of what the spec asks for (not of its comments or key order)."""
        return content_hash({k: v for k, v in self.source.items() if k not in ("name", "description")})

    @property
    def axis_names(self) -> list[str]:
        return [a for a, _ in self.axes]

    def hardware_points(self) -> list[HardwarePoint]:
        """Every grid combination, or ``samples`` distinct random draws (seeded, reproducible)."""
        names = self.axis_names
        if self.sampling == "grid":
            combos = list(itertools.product(*(vals for _, vals in self.axes)))
        else:
            rng = np.random.default_rng(self.seed)
            combos, seen = [], set()
            discrete = all(not isinstance(v, RangeAxis) for _, v in self.axes)
            limit = math.prod(len(v) for _, v in self.axes) if discrete else math.inf
            target = min(self.samples, limit)
            attempts = 0
            while len(combos) < target and attempts < 50 * self.samples:
                attempts += 1
                c = tuple(
                    v.draw(rng) if isinstance(v, RangeAxis) else _py(v[rng.integers(len(v))]) for _, v in self.axes
                )
                ck = canonical_json(c)
                if ck not in seen:
                    seen.add(ck)
                    combos.append(c)
        points = []
        for i, combo in enumerate(combos):
            ov = []
            for n, v in zip(names, combo):
                if isinstance(v, dict):  # a section axis: one value sets several fields
                    ov += [(f"{n}.{k}", x) for k, x in flatten(v).items()]
                elif n != PREFETCH_AXIS:
                    ov.append((n, v))
            ov = tuple(ov)
            pf = dict(zip(names, combo)).get(PREFETCH_AXIS, self.prefetch)
            points.append(HardwarePoint(i, ov, pf))
        return points


def _py(v: object) -> object:
    """numpy scalars -> Python scalars (stable hashing and YAML)."""
    return v.item() if isinstance(v, np.generic) else v


def _check_axis_values(name: str, raw: object, sampling: str) -> object:
    if isinstance(raw, dict):
        if sampling != "random":
            raise ConfigError(f"hardware.axes.{name}", raw, "a list of values (ranges need sampling: random)")
        check_known_fields(f"hardware.axes.{name}", raw, _RANGE_FIELDS)
        lo, hi = raw.get("min"), raw.get("max")
        if (
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (lo, hi))
            or not lo <= hi
        ):
            raise ConfigError(f"hardware.axes.{name}", raw, "finite min and max numbers with min <= max")
        scale = raw.get("scale", "linear")
        if scale not in ("linear", "log"):
            raise ConfigError(f"hardware.axes.{name}.scale", scale, "linear or log")
        if scale == "log" and lo <= 0:
            raise ConfigError(f"hardware.axes.{name}.min", lo, "a positive number with scale: log")
        return RangeAxis(float(lo), float(hi), scale, bool(raw.get("integer", False)))
    if not isinstance(raw, list):
        raise ConfigError(f"hardware.axes.{name}", raw, "a non-empty list of values")
    if not raw:
        raise ConfigError(f"hardware.axes.{name}", raw, "a non-empty list of values (an empty grid has no points)")
    if len(set(map(canonical_json, raw))) != len(raw):
        raise ConfigError(f"hardware.axes.{name}", raw, "distinct values")
    return tuple(raw)


def spec_from_dict(data: object, default_name: str = "sweep") -> SweepSpec:
    """Validate a spec mapping (see the module docstring) and resolve its names."""
    from workloads.presets import Gemm, get_workload

    check_known_fields("spec", data, _TOP_FIELDS)
    for req in ("cost_workload", "recipes", "hardware"):
        if req not in data:
            raise ConfigError(f"spec.{req}", None, "a value (the field is required)")
    wl = get_workload(str(data["cost_workload"]))
    if isinstance(wl, Gemm):
        raise ConfigError("spec.cost_workload", data["cost_workload"], "a workload preset or YAML file")
    recipes = _check_recipes(data["recipes"])
    q_wl, q_opts = _check_quality(data.get("quality"))
    base_name, sampling, samples, seed, prefetch, axes = _check_hardware(data["hardware"])
    axes_raw = data["hardware"].get("axes") or {}
    source = {
        "cost_workload": str(data["cost_workload"]),
        "recipes": [str(r) for r in recipes],
        "quality": None if q_wl is None else {"workload": q_wl, "options": q_opts},
        "hardware": {
            "base": base_name,
            "sampling": sampling,
            "prefetch": prefetch,
            "axes": {n: (list(v) if isinstance(v, tuple) else v.__dict__) for n, v in axes},
            **({"samples": samples, "seed": seed} if sampling == "random" else {}),
        },
        "name": str(data.get("name", default_name)),
        "description": str(data.get("description", "")),
    }
    spec = SweepSpec(
        name=source["name"],
        cost_workload=source["cost_workload"],
        recipes=tuple(source["recipes"]),
        hw_base=base_name,
        sampling=sampling,
        axes=tuple(axes),
        samples=int(samples),
        seed=int(seed),
        prefetch=prefetch,
        quality_workload=q_wl,
        quality_options=q_opts,
        description=source["description"],
        source=source,
    )
    _check_point_budget(spec)
    if not spec.hardware_points():
        raise ConfigError("spec.hardware", axes_raw, "axes giving at least one hardware point")
    return spec


def _check_point_budget(spec: SweepSpec) -> None:
    if spec.sampling == "grid":
        hw_points = math.prod(len(v) for _, v in spec.axes)
    else:
        hw_points = spec.samples
    points = hw_points * len(spec.recipes)
    if points > MAX_DESIGN_POINTS:
        raise ConfigError(
            "spec.hardware",
            f"{hw_points:,} hardware points x {len(spec.recipes)} recipes",
            f"at most {MAX_DESIGN_POINTS:,} design points per spec (this one asks for {points:,})",
        )


def _check_recipes(recipes: object) -> list:
    from workloads.recipes import get_recipe

    if not isinstance(recipes, list) or not recipes:
        raise ConfigError("spec.recipes", recipes, "a non-empty list of recipe names or YAML files")
    if len(set(map(str, recipes))) != len(recipes):
        raise ConfigError("spec.recipes", recipes, "distinct recipes")
    for r in recipes:
        get_recipe(str(r))  # raises ConfigError on a bad name
    return recipes


def _check_quality(quality: object) -> tuple[str | None, dict]:
    """The quality workload and the options of its evaluation (None, {} without one)."""
    from workloads.presets import get_workload

    q_wl, q_opts = None, {}
    if quality is not None:
        if isinstance(quality, str):
            quality = {"workload": quality}
        check_known_fields("spec.quality", quality, _QUALITY_FIELDS)
        if "workload" not in quality:
            raise ConfigError("spec.quality.workload", None, "a small workload preset, e.g. stdit-tiny")
        get_workload(str(quality["workload"]))
        q_wl = str(quality["workload"])
        q_opts = quality.get("options") or {}
        if not isinstance(q_opts, dict):
            raise ConfigError("spec.quality.options", q_opts, "a mapping of keyword arguments")
        check_known_fields("spec.quality.options", q_opts, QUALITY_OPTIONS)
        if not isinstance(q_opts.get("layer_sqnr", False), bool):
            raise ConfigError("spec.quality.options.layer_sqnr", q_opts["layer_sqnr"], "true or false")
    return q_wl, q_opts


def _check_hardware(hw: object) -> tuple[str, str, int, int, str, list]:
    """(base preset, sampling, samples, seed, prefetch, axes) of the spec's hardware section."""
    import hwsim

    check_known_fields("spec.hardware", hw, _HW_FIELDS)
    base_name = str(hw.get("base", "edge-npu"))
    base = hwsim.load_hw(base_name)
    known = flatten(hwsim.hw_to_dict(base))
    sampling = hw.get("sampling", "grid")
    if sampling not in SAMPLING:
        raise ConfigError("spec.hardware.sampling", sampling, " or ".join(SAMPLING))
    samples = hw.get("samples", 0)
    seed = hw.get("seed", 0)
    if sampling == "random":
        if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
            raise ConfigError("spec.hardware.samples", samples, "a positive integer (random sampling)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("spec.hardware.seed", seed, "an integer")
    prefetch = hw.get("prefetch", "jit")
    if prefetch not in PREFETCH_POLICIES:
        raise ConfigError("spec.hardware.prefetch", prefetch, " or ".join(PREFETCH_POLICIES))
    axes_raw = hw.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise ConfigError("spec.hardware.axes", axes_raw, "a mapping of dotted HWConfig fields to values")
    sections = {k for k, v in hwsim.hw_to_dict(base).items() if isinstance(v, dict)}
    axes = []
    for name, raw in axes_raw.items():
        if name != PREFETCH_AXIS and name not in known and name not in sections:
            raise ConfigError(
                "spec.hardware.axes",
                name,
                f"{PREFETCH_AXIS}, a section or a dotted field of {base_name}: " + ", ".join(sorted(known)),
            )
        vals = _check_axis_values(name, raw, sampling)
        if name in sections:
            for v in vals if isinstance(vals, tuple) else [vals]:
                if not isinstance(v, dict) or not v:
                    raise ConfigError(f"hardware.axes.{name}", v, f"mappings of fields of section {name}")
                for k in flatten(v):
                    if f"{name}.{k}" not in known:
                        raise ConfigError(
                            f"hardware.axes.{name}",
                            k,
                            f"fields of section {name}: "
                            + ", ".join(sorted(f for f in known if f.startswith(name + "."))),
                        )
        if name == PREFETCH_AXIS:
            bad = [v for v in (vals if isinstance(vals, tuple) else [vals]) if v not in PREFETCH_POLICIES]
            if bad:
                raise ConfigError("spec.hardware.axes.prefetch", bad[0], " or ".join(PREFETCH_POLICIES))
        else:
            _check_axis_schema(base, name, vals)
        axes.append((name, vals))
    return base_name, sampling, samples, seed, prefetch, axes


def _check_axis_schema(base, name: str, vals: object) -> None:
    """Each value of an axis, set alone over the base config, must pass the hardware schema
    (``hwsim.with_overrides``: the checks a hardware YAML gets), so a typo such as ``mac.rows: [a]``
    or a NaN fails when the spec loads instead of failing every point of the sweep. A range axis is
    checked at both ends (and must draw integers for an integer field). An error about another field
    (a cross-field rule the swept combination may satisfy) is left to the point."""
    import hwsim

    if isinstance(vals, RangeAxis):
        if isinstance(flatten(hwsim.hw_to_dict(base)).get(name), int) and not vals.integer:
            raise ConfigError(f"hardware.axes.{name}.integer", False, "true: the field is an integer")
        values: list = [int(vals.min) if vals.integer else vals.min, int(vals.max) if vals.integer else vals.max]
    else:
        values = list(vals)
    fields = flatten(hwsim.hw_to_dict(base))
    for v in values:
        overrides = {f"{name}.{k}": x for k, x in flatten(v).items()} if isinstance(v, dict) else {name: v}
        try:
            hwsim.with_overrides(base, overrides)
        except ConfigError as e:
            sections = {o.split(".")[0] for o in overrides}
            derived = e.field not in fields and e.field.split(".")[0] in sections  # e.g. sram.total_bytes
            if e.field in overrides or derived:
                raise ConfigError(f"hardware.axes.{e.field}", e.value, e.allowed) from None


def load_spec(name_or_path: str | Path) -> SweepSpec:
    """A spec file path, or the name of one in ``codesign/specs/`` (e.g. ``default``)."""
    path = Path(name_or_path)
    if not path.is_file():
        named = SPEC_DIR / f"{name_or_path}.yaml"
        if not named.is_file():
            avail = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml")))
            raise ConfigError("spec", str(name_or_path), f"an existing YAML file or one of {avail}")
        path = named
    try:
        data = yaml.load(path.read_text(), Loader=_SpecLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError("spec", str(path), "valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    return spec_from_dict(data, default_name=path.stem)
