"""Hardware configuration of an edge AI processor: frozen dataclasses, loaded from YAML, validated.

The YAML mirrors the dataclasses (one mapping per section). Every field is checked at load time;
a bad field raises ``ConfigError`` naming the dotted field, the value and what is allowed, and an
unknown field is refused (a typo must not silently fall back to a default). The sources of the
numbers live beside them in ``hwsim/presets/*.yaml``. A preset names a technology node and a clock
(the supply follows from the node's voltage-frequency curve, ``technology.py``) and memory parts by
name (``memory.py``); energies and areas are derived from those (``energy.py``, ``area.py``,
``sram.py``) once per config and cached on it (``HWConfig.costs``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from hwsim import memory, technology
from hwsim.energy import EventEnergies, compute_costs
from workloads.errors import ConfigError

PRESET_DIR = Path(__file__).with_name("presets")
DATAFLOWS = ("output_stationary", "weight_stationary", "input_stationary")
PRECISIONS = ("int8", "int4", "fp16")
OBJECTIVES = ("edp2", "latency", "energy")


@dataclass(frozen=True)
class Clock:
    """The operating point: a clock (YAML: a number, or ``nominal`` for the node's nominal clock);
    the supply voltage follows from the node's voltage-frequency curve (``HWConfig.op``)."""

    freq_hz: float  # NPU core clock; the simulator's time unit is one cycle of it


@dataclass(frozen=True)
class MacArrays:
    """``arrays`` systolic arrays of ``rows x cols`` processing elements (PEs)."""

    arrays: int
    rows: int
    cols: int
    dataflow: str  # output_stationary | weight_stationary | input_stationary (SCALE-Sim os, ws, is)
    macs_per_pe_cycle: dict  # precision -> MACs one PE retires per cycle (int8 1, int4 packed 2, ...)

    def rate(self, precision: str) -> float:
        return float(self.macs_per_pe_cycle[precision])

    @property
    def pes(self) -> int:
        return self.arrays * self.rows * self.cols


@dataclass(frozen=True)
class VectorUnit:
    """SIMD unit for softmax, norms, modulation, activations and (optionally) dynamic-quant stats."""

    lanes: int  # FP16 lanes
    cycles_per_element: dict  # basic (add/mul/compare), exp, rsqrt, gelu: cycles per element per lane
    online_reduction: bool  # abs-max reduction + reciprocal + quantizer for dynamic quantization
    reciprocal_cycles_per_row: int  # scalar reciprocal of one row's abs-max (dynamic scale)


@dataclass(frozen=True)
class Sram:
    weight_buffer_bytes: int  # holds weight tiles (double-buffered) or resident weights
    activation_buffer_bytes: int  # input and output tiles (double-buffered)
    banks: int  # banks over both buffers; bank size sets the energy per access (CACTI-style)
    bytes_per_cycle: int  # read bandwidth from the buffers into the arrays


@dataclass(frozen=True)
class Dma:
    engines: int
    bandwidth_bytes_per_s: float  # per engine
    setup_cycles: int  # descriptor fetch / address setup per transfer


@dataclass(frozen=True)
class Dram:
    """``channels`` JEDEC channels (x16 for LPDDR4X/5/5X) of one part from ``memory.DRAM_PARTS``."""

    part: str
    channels: int
    capacity_bytes: int
    weight_capacity_bytes: int  # part of DRAM the model's weights may occupy (the rest: OS, apps)

    @property
    def spec(self) -> memory.DramPart:
        return memory.DRAM_PARTS[self.part]

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Peak: data rate x bus width (JEDEC)."""
        return self.spec.channel_bandwidth_bytes_per_s * self.channels

    @property
    def efficiency(self) -> float:
        """Sustained / peak for streaming DMA (read/write turnaround, refresh, bank conflicts)."""
        return self.spec.efficiency

    @property
    def sustained_bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_bytes_per_s * self.efficiency

    @property
    def access_latency_s(self) -> float:
        return self.spec.access_latency_s


@dataclass(frozen=True)
class Flash:
    """Weight storage: one part from ``memory.FLASH_PARTS``."""

    part: str
    capacity_bytes: int
    chunk_bytes: int  # size of one read command of a weight-set transfer

    @property
    def spec(self) -> memory.FlashPart:
        return memory.FLASH_PARTS[self.part]

    @property
    def bandwidth_bytes_per_s(self) -> float:  # sequential read
        return self.spec.read_bandwidth_bytes_per_s

    @property
    def energy_pj_per_byte(self) -> float:
        return self.spec.read_pj_per_byte

    @property
    def command_latency_s(self) -> float:
        return self.spec.command_latency_s

    @property
    def queue_depth(self) -> int:
        return self.spec.queue_depth


@dataclass(frozen=True)
class Tech:
    node_nm: float  # CMOS node; energy, area, leakage and the V-f curve follow (technology.py)

    @property
    def node(self) -> technology.Node:
        return technology.node(self.node_nm)


@dataclass(frozen=True)
class Planner:
    """What the compiler's choices (tiling, fusion, hand-over in SRAM) minimise, from their
    closed-form estimates: ``edp2`` energy x delay^2 (default: ``tiling.figure_of_merit`` says
    why), ``latency`` (energy breaks ties) or ``energy`` (latency breaks ties). Optional in YAML."""

    objective: str = "edp2"


@dataclass(frozen=True)
class HWConfig:
    name: str
    description: str
    clock: Clock
    mac: MacArrays
    vector: VectorUnit
    sram: Sram
    dma: Dma
    dram: Dram
    flash: Flash
    tech: Tech
    planner: Planner = Planner()

    @property
    def peak_macs_per_cycle(self) -> dict:
        return {p: self.mac.pes * self.mac.rate(p) for p in PRECISIONS}

    @functools.cached_property
    def op(self) -> technology.OperatingPoint:
        """Node + clock -> supply voltage and energy/leakage factors (computed once per config)."""
        return technology.operating_point(self.tech.node_nm, self.clock.freq_hz)

    @functools.cached_property
    def costs(self) -> EventEnergies:
        """Energy per event, static power and area of this config (``energy.EventEnergies``),
        computed once per config so the simulator and the tile search never recompute them."""
        return compute_costs(self)


_SECTIONS = {
    "clock": Clock,
    "mac": MacArrays,
    "vector": VectorUnit,
    "sram": Sram,
    "dma": Dma,
    "dram": Dram,
    "flash": Flash,
    "tech": Tech,
    "planner": Planner,
}


# ---- validation ---------------------------------------------------------------------------------
def _number(v: object) -> object:
    """YAML 1.1 reads ``1.0e9`` (no sign in the exponent) as a string: accept numeric strings."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _integral(v: object) -> object:
    v = _number(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _pos_int(field: str, v: object) -> int:
    v = _integral(v)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(field, v, "a positive integer")
    return v


def _pos_num(field: str, v: object) -> float:
    v = _number(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
        raise ConfigError(field, v, "a positive finite number")
    return float(v)


def _nonneg_int(field: str, v: object) -> int:
    v = _integral(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(field, v, "an integer >= 0")
    return v


def _bool(field: str, v: object) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(field, v, "true or false")
    return v


def _known(where: str, data: object, cls) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        raise ConfigError(where, data, "a mapping with fields " + ", ".join(sorted(known)))
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}", data[key], "one of " + ", ".join(sorted(known)))
    for key in known:
        if key not in data:
            raise ConfigError(f"{where}.{key}", None, "a value (the field is required)")
    return data


def _table(field: str, v: object, keys: tuple[str, ...], check) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(field, v, "a mapping with keys " + ", ".join(keys))
    for k in v:
        if k not in keys:
            raise ConfigError(f"{field}.{k}", v[k], "one of " + ", ".join(keys))
    for k in keys:
        if k not in v:
            raise ConfigError(f"{field}.{k}", None, "a value (the field is required)")
    return {k: check(f"{field}.{k}", v[k]) for k in keys}


# ---- plausibility -------------------------------------------------------------------------------
class PlausibilityWarning(UserWarning):
    """A value no shipping edge part has, accepted because an idealised study may mean it."""


# field -> (refuse below, refuse above, warn above, source of the bounds). A value outside the refusal
# bounds is no chip at all (a typo or a unit slip: 1e30 bytes of SRAM, 1e-30 B/s); one above the warning
# bound is beyond any shipping edge part but a deliberate "ample resources" study may mean it.
PLAUSIBLE = {
    "sram.total_bytes": (
        None,
        44e9,
        64 * 2**20,
        "refuse above 44 GB: the on-chip SRAM of Cerebras WSE-3, a whole wafer (Cerebras, 2024); warn above "
        "64 MiB: twice the 32 MB SRAM of one Tesla FSD NPU (Talpes et al., IEEE Micro 40(2), 2020)",
    ),
    "dma.bandwidth_bytes_per_s": (
        1e6,
        1e15,
        1e12,
        "refuse below 1 MB/s and above 1 PB/s (assumption: outside any memory bus by 1000x); warn above "
        "1 TB/s: beyond LPDDR (Apple M2 Ultra, 1024-bit LPDDR5, 800 GB/s) toward HBM3E (NVIDIA H200, 4.8 TB/s)",
    ),
    "dram.channels": (
        None,
        2**20,
        64,
        "warn above 64 x16 channels: the 1024-bit LPDDR5 bus of Apple M2 Ultra, the widest LPDDR system "
        "(Apple, 2023); refuse above 2^20 (assumption)",
    ),
    "mac.pes": (
        None,
        2**24,
        2**17,
        "warn above 131072 PEs: Google TPU v4 (2 cores x 4 MXUs of 128x128, Jouppi et al., ISCA 2023); "
        "refuse above 2^24 (assumption: 30x the MACs per cycle of an NVIDIA H100)",
    ),
    "clock.freq_hz": (1e6, None, None, "refuse below 1 MHz (assumption: below any NPU clock by 100x)"),
    "sram.bytes_per_cycle": (None, 2**24, None, "refuse above 16 MiB per cycle (assumption)"),
    "vector.lanes": (None, 2**20, None, "refuse above 2^20 lanes (assumption)"),
    "dram.capacity_bytes": (None, 2**50, None, "refuse above 1 PiB (assumption)"),
    "flash.capacity_bytes": (None, 2**50, None, "refuse above 1 PiB (assumption)"),
}


def check_plausible(field: str, value: float) -> None:
    """Refuse a value outside ``PLAUSIBLE[field]``'s hard bounds; warn (``PlausibilityWarning``) above
    its warning bound. The message names the field, the value and the bound's source."""
    lo, hi, warn_hi, why = PLAUSIBLE[field]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = " and ".join(x for x in (lo and f">= {lo:.3g}", hi and f"<= {hi:.3g}") if x)
        raise ConfigError(field, value, f"a value {bounds} ({why})")
    if warn_hi is not None and value > warn_hi:
        warnings.warn(
            f"{field} = {value:.4g} is beyond any shipping edge part (above {warn_hi:.4g}; {why})",
            PlausibilityWarning,
            stacklevel=3,
        )


def _check_plausible_config(hw: HWConfig) -> None:
    check_plausible("sram.total_bytes", hw.sram.weight_buffer_bytes + hw.sram.activation_buffer_bytes)
    check_plausible("dma.bandwidth_bytes_per_s", hw.dma.bandwidth_bytes_per_s)
    check_plausible("dram.channels", hw.dram.channels)
    check_plausible("mac.pes", hw.mac.pes)
    check_plausible("clock.freq_hz", hw.clock.freq_hz)
    check_plausible("sram.bytes_per_cycle", hw.sram.bytes_per_cycle)
    check_plausible("vector.lanes", hw.vector.lanes)
    check_plausible("dram.capacity_bytes", hw.dram.capacity_bytes)
    check_plausible("flash.capacity_bytes", hw.flash.capacity_bytes)


def hw_from_dict(d: object) -> HWConfig:
    """Build and validate an HWConfig from a nested mapping (the YAML layout). One function on
    purpose: it reads as the YAML does, section by section, each field with its check."""
    if isinstance(d, dict) and "planner" not in d:  # the one optional section
        d = {**d, "planner": {"objective": Planner.objective}}
    d = _known("hw", d, HWConfig)
    if not isinstance(d["name"], str) or not d["name"]:
        raise ConfigError("hw.name", d["name"], "a non-empty string")
    if not isinstance(d["description"], str):
        raise ConfigError("hw.description", d["description"], "a string")
    s = {name: _known(name, d[name], cls) for name, cls in _SECTIONS.items()}

    node_nm = _pos_num("tech.node_nm", s["tech"]["node_nm"])
    node = technology.node(node_nm)  # refuses a node outside the model's range
    tech = Tech(node_nm=node_nm)
    f = s["clock"]["freq_hz"]
    clock = Clock(freq_hz=node.fnom_hz if f == "nominal" else _pos_num("clock.freq_hz", f))
    technology.vdd_for(node, clock.freq_hz)  # refuses a clock above the node's maximum

    m = s["mac"]
    if m["dataflow"] not in DATAFLOWS:
        raise ConfigError("mac.dataflow", m["dataflow"], " or ".join(DATAFLOWS))
    mac = MacArrays(
        arrays=_pos_int("mac.arrays", m["arrays"]),
        rows=_pos_int("mac.rows", m["rows"]),
        cols=_pos_int("mac.cols", m["cols"]),
        dataflow=m["dataflow"],
        macs_per_pe_cycle=_table("mac.macs_per_pe_cycle", m["macs_per_pe_cycle"], PRECISIONS, _pos_num),
    )

    v = s["vector"]
    vector = VectorUnit(
        lanes=_pos_int("vector.lanes", v["lanes"]),
        cycles_per_element=_table(
            "vector.cycles_per_element", v["cycles_per_element"], ("basic", "exp", "rsqrt", "gelu"), _pos_num
        ),
        online_reduction=_bool("vector.online_reduction", v["online_reduction"]),
        reciprocal_cycles_per_row=_pos_int("vector.reciprocal_cycles_per_row", v["reciprocal_cycles_per_row"]),
    )

    r = s["sram"]
    sram = Sram(
        weight_buffer_bytes=_pos_int("sram.weight_buffer_bytes", r["weight_buffer_bytes"]),
        activation_buffer_bytes=_pos_int("sram.activation_buffer_bytes", r["activation_buffer_bytes"]),
        banks=_pos_int("sram.banks", r["banks"]),
        bytes_per_cycle=_pos_int("sram.bytes_per_cycle", r["bytes_per_cycle"]),
    )

    a = s["dma"]
    dma = Dma(
        engines=_pos_int("dma.engines", a["engines"]),
        bandwidth_bytes_per_s=_pos_num("dma.bandwidth_bytes_per_s", a["bandwidth_bytes_per_s"]),
        setup_cycles=_nonneg_int("dma.setup_cycles", a["setup_cycles"]),
    )

    r = s["dram"]
    dram = Dram(
        part=memory.dram_part(r["part"]).name,
        channels=_pos_int("dram.channels", r["channels"]),
        capacity_bytes=_pos_int("dram.capacity_bytes", r["capacity_bytes"]),
        weight_capacity_bytes=_pos_int("dram.weight_capacity_bytes", r["weight_capacity_bytes"]),
    )
    if dram.weight_capacity_bytes > dram.capacity_bytes:
        raise ConfigError(
            "dram.weight_capacity_bytes",
            dram.weight_capacity_bytes,
            f"at most dram.capacity_bytes ({dram.capacity_bytes})",
        )

    if s["planner"]["objective"] not in OBJECTIVES:
        raise ConfigError("planner.objective", s["planner"]["objective"], " or ".join(OBJECTIVES))
    planner = Planner(objective=s["planner"]["objective"])

    f = s["flash"]
    flash = Flash(
        part=memory.flash_part(f["part"]).name,
        capacity_bytes=_pos_int("flash.capacity_bytes", f["capacity_bytes"]),
        chunk_bytes=_pos_int("flash.chunk_bytes", f["chunk_bytes"]),
    )
    hw = HWConfig(
        name=d["name"],
        description=d["description"],
        clock=clock,
        mac=mac,
        vector=vector,
        sram=sram,
        dma=dma,
        dram=dram,
        flash=flash,
        tech=tech,
        planner=planner,
    )
    _check_plausible_config(hw)
    return hw


def hw_to_dict(hw: HWConfig) -> dict:
    return dataclasses.asdict(hw)


def hw_preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_hw(name_or_path: str) -> HWConfig:
    """A preset name (``codesign hw`` lists them) or a YAML file in the preset layout."""
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    path = preset if preset.is_file() else Path(name_or_path)
    if not path.is_file():
        raise ConfigError("hw", name_or_path, "one of " + ", ".join(hw_preset_names()) + " or an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError("hw", str(path), "valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    return hw_from_dict(data)


def with_overrides(hw: HWConfig, overrides: dict) -> HWConfig:
    """A copy of ``hw`` with dotted fields replaced (sweep axes), validated like a loaded file."""
    d = copy.deepcopy(hw_to_dict(hw))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = d
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(dotted, value, "a dotted field of the hardware config, e.g. dram.channels")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(dotted, value, "a dotted field of the hardware config, e.g. dram.channels")
        node[parts[-1]] = value
    return hw_from_dict(d)
