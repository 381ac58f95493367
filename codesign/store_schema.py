"""The explicit Arrow schema of the results store: every column of a points part and of a quality part,
its type, whether it may be null, and its unit and meaning (in the field's metadata).

Why explicit: a part used to be whatever pandas inferred from its rows, so the same column was
``int64`` in one part and ``double`` in the next (a failed point makes its metrics NaN) and a column
of nulls had no type at all. Now every part is written with :func:`points_schema` or
:data:`QUALITY_SCHEMA`; a row with a column the schema lacks, a value of the wrong type or a null in
a column that may not hold one is refused with an error naming the column. Parts written before this
schema existed still load (``store.load_results`` reads each part as it is).

The ``hw.*`` columns are the leaves of ``hwsim``'s hardware config (``hwsim.hw_to_dict``): their
names and types come from the config itself, their meaning from :data:`HW_COLUMNS` below (a test
holds the two equal, so a new hardware field cannot land undocumented).
"""

from __future__ import annotations

import functools
import math

import pyarrow as pa

from workloads.errors import ConfigError

SCHEMA_VERSION = "1"  # bumped only when a column changes meaning or type; new columns keep the version

SCALAR_METRICS = (
    "latency_s",
    "energy_j",
    "area_mm2",
    "storage_bytes",
    "swap_stall_s",
    "swap_hidden_s",
    "swap_bytes",
    "swap_count",
    "weight_set_bytes",
    "float_weight_bytes",
    "initial_load_s",
    "dram_bytes",
    "flash_bytes",
    "macs",
    "weight_placement",
    "prefetch_used",
)
BREAKDOWN_PREFIXES = {
    "energy_breakdown_j": "energy_j.",
    "area_breakdown_mm2": "area_mm2.",
    "stall_breakdown_s": "stall_s.",
    "utilisation": "util.",
}

STR, I64, F64, BOOL = pa.large_string(), pa.int64(), pa.float64(), pa.bool_()

# (name, type, nullable, unit, meaning) -- one row per column, in the order a part stores them
_IDENTITY = [
    ("key", STR, False, "", "content hash of (cost workload, recipe, full hardware config, prefetch policy, "
     "hwsim.SIM_VERSION): the identity of a design point"),
    ("spec_hash", STR, False, "", "content hash of the sweep spec that computed the row"),
    ("spec_name", STR, False, "", "name of the sweep spec that computed the row"),
    ("cost_workload", STR, False, "", "workload the costs are for (full size, traced)"),
    ("recipe", STR, False, "", "quantization recipe name (codesign recipes)"),
    ("scheme", STR, False, "", "recipe scheme: fp16, static, asq, tsq, tsq+tsw, groups or dynamic"),
    ("w_bits", I64, False, "bits", "weight bit-width (16 = FP16)"),
    ("a_bits", I64, False, "bits", "activation bit-width (16 = FP16)"),
    ("num_weight_sets", I64, False, "sets", "weight sets the recipe stores (1 ASQ/static/dynamic, K groups, "
     "one per step TSQ+TSW, 0 float)"),
    ("hw_base", STR, False, "", "hardware preset the spec's axes override"),
    ("sim_version", STR, False, "", "hwsim.SIM_VERSION that produced the numbers"),
    ("quality_workload", STR, True, "", "workload the quality was measured on (small); null when the spec has none"),
    ("quality_key", STR, True, "", "content hash of (quality workload, recipe, quality options); joins the "
     "quality part; null when the spec has no quality workload"),
    ("point_index", I64, False, "", "index of the hardware point in its spec's point list"),
    ("hw_key", STR, False, "", "content hash of (full hardware config, prefetch): equal hardware across recipes"),
    ("prefetch", STR, False, "", "weight-prefetch policy asked for: jit or early"),
]  # fmt: skip
_STATUS = [
    ("status", STR, False, "", "ok, or failed when the hardware point failed validation (its metrics are null)"),
    ("error", STR, False, "", "why the point failed (one line); empty when ok"),
]
_METRICS = [
    ("latency_s", F64, "s", "latency of the whole sampling loop (all steps; the initial load excluded)"),
    ("energy_j", F64, "J", "energy of the whole sampling loop, static energy included"),
    ("area_mm2", F64, "mm2", "silicon area of the NPU (MAC arrays, SRAM, vector unit, dynamic-quant unit, DMA, control)"),
    ("storage_bytes", I64, "bytes", "weights stored in flash: every quantized weight set plus the float weights plus per-step scale tables (tsq)"),
    ("swap_stall_s", F64, "s", "latency the weight-set swaps added (waits, tails, DRAM contention)"),
    ("swap_hidden_s", F64, "s", "swap transfer time hidden under compute"),
    ("swap_bytes", I64, "bytes", "bytes moved by weight-set swaps over the loop"),
    ("swap_count", I64, "swaps", "steps that brought in a new weight set"),
    ("weight_set_bytes", I64, "bytes", "largest quantized weight set"),
    ("float_weight_bytes", I64, "bytes", "weights kept in float (not quantized), shared by every step"),
    ("initial_load_s", F64, "s", "flash -> DRAM load of the weights before the first step (not in latency_s)"),
    ("dram_bytes", I64, "bytes", "DRAM traffic of the loop (reads + writes)"),
    ("flash_bytes", I64, "bytes", "flash reads during the loop"),
    ("macs", I64, "MACs", "multiply-accumulates of the loop"),
    ("weight_placement", STR, "", "where the weights live during the loop: sram, dram or flash"),
    ("prefetch_used", STR, "", "the weight-prefetch policy hwsim applied"),
    ("latency_step_max_s", F64, "s", "latency of the slowest denoising step"),
]  # fmt: skip
_BREAKDOWNS = {
    "energy_j.": (F64, "J", {
        "mac_int8": "int8 MACs", "mac_int4": "int4 MACs", "mac_fp16": "FP16 MACs",
        "vector": "vector unit (norms, softmax, activations, elementwise)",
        "dyn_quant": "dynamic-quantization unit (on-line abs-max, reciprocal, quantizer)",
        "quant_epilogue": "requantize / quantize / dequantize lanes beside the arrays",
        "sram": "SRAM reads and writes", "dram": "DRAM reads and writes", "flash": "flash reads",
        "leakage": "logic and SRAM leakage over the latency", "dram_static": "DRAM refresh and background power over the latency",
    }),
    "area_mm2.": (F64, "mm2", {
        "mac_arrays": "MAC arrays", "sram": "SRAM buffers", "vector": "vector unit",
        "dyn_quant": "dynamic-quantization unit (0 without one)", "dma": "DMA engines", "control": "control and interconnect overhead",
    }),
    "stall_s.": (F64, "s", {
        "mac_compute": "ideal MAC time at peak rate", "mac_fill_drain": "MAC-array fill, drain and under-use beyond the ideal",
        "vector_ops": "vector ops on the critical path", "memory": "waits for memory (DMA / DRAM) and the tail",
        "vector_stage": "MAC arrays waiting for a vector stage", "store": "waits for output stores",
        "swap": "weight-set swap stalls",
    }),
    "util.": (F64, "fraction", {
        "mac_useful": "useful MAC work / (peak MAC rate x latency)", "mac_arrays": "MAC arrays busy",
        "vector": "vector unit busy", "dram": "DRAM busy", "dma": "DMA engines busy (mean over engines)", "flash": "flash busy",
    }),
}  # fmt: skip
_TAIL = [("sim_wall_s", F64, False, "s", "wall-clock seconds the simulation of this point took")]

# hw.<leaf> -> (unit, meaning); names and types come from the hardware config (hwsim.hw_to_dict)
HW_COLUMNS = {
    "name": ("", "hardware config name"),
    "description": ("", "hardware config description"),
    "clock.freq_hz": ("Hz", "NPU core clock"),
    "mac.arrays": ("arrays", "systolic MAC arrays"),
    "mac.rows": ("PEs", "rows of processing elements per array"),
    "mac.cols": ("PEs", "columns of processing elements per array"),
    "mac.dataflow": ("", "output_stationary, weight_stationary or input_stationary"),
    "mac.macs_per_pe_cycle.int8": ("MACs/cycle", "int8 MACs one PE retires per cycle"),
    "mac.macs_per_pe_cycle.int4": ("MACs/cycle", "int4 MACs one PE retires per cycle"),
    "mac.macs_per_pe_cycle.fp16": ("MACs/cycle", "FP16 MACs one PE retires per cycle"),
    "vector.lanes": ("lanes", "FP16 lanes of the vector unit"),
    "vector.cycles_per_element.basic": ("cycles", "per element per lane: add, mul, compare, convert"),
    "vector.cycles_per_element.exp": ("cycles", "per element per lane: exp"),
    "vector.cycles_per_element.rsqrt": ("cycles", "per element per lane: reciprocal square root"),
    "vector.cycles_per_element.gelu": ("cycles", "per element per lane: GELU"),
    "vector.online_reduction": ("", "dynamic-quantization unit present (on-line abs-max, reciprocal, quantizer)"),
    "vector.reciprocal_cycles_per_row": ("cycles", "reciprocal of one row's abs-max (dynamic scale)"),
    "sram.weight_buffer_bytes": ("bytes", "weight buffer"),
    "sram.activation_buffer_bytes": ("bytes", "activation buffer (input and output tiles)"),
    "sram.banks": ("banks", "SRAM banks over both buffers"),
    "sram.bytes_per_cycle": ("bytes/cycle", "read bandwidth from the buffers into the arrays"),
    "dma.engines": ("engines", "DMA engines"),
    "dma.bandwidth_bytes_per_s": ("bytes/s", "bandwidth of one DMA engine"),
    "dma.setup_cycles": ("cycles", "descriptor fetch and address setup per transfer"),
    "dram.part": ("", "DRAM part (hwsim memory catalogue)"),
    "dram.channels": ("channels", "JEDEC DRAM channels"),
    "dram.capacity_bytes": ("bytes", "DRAM capacity"),
    "dram.weight_capacity_bytes": ("bytes", "part of DRAM the model's weights may occupy"),
    "flash.part": ("", "flash part (hwsim memory catalogue)"),
    "flash.capacity_bytes": ("bytes", "flash capacity"),
    "flash.chunk_bytes": ("bytes", "size of one read command of a weight-set transfer"),
    "tech.node_nm": ("nm", "CMOS technology node"),
    "planner.objective": ("", "what the schedule planner minimises: edp2 (energy x delay^2), latency or energy"),
}

_QUALITY = [
    ("key", STR, False, "", "content hash of (quality workload, recipe, quality options); equals quality_key"),
    ("quality_key", STR, False, "", "joins the points part's quality_key"),
    ("recipe", STR, False, "", "quantization recipe name"),
    ("quality_workload", STR, False, "", "workload the quality was measured on"),
    ("q.backend", STR, False, "", "emulator (integer, bit-exact), fakequant, or float for fp16"),
    ("q.nonlinear", STR, False, "", "vector-unit mode of the emulator: fp16 or int"),
    ("q.sqnr_db", F64, False, "dB", "final sample's SQNR against the float model's (inf for fp16)"),
    ("q.psnr_db", F64, False, "dB", "final sample's PSNR against the float model's (inf for fp16)"),
    ("q.worst_layer_sqnr_db", F64, False, "dB", "SQNR of the worst quantized layer (NaN unless the eager emulator measured it: layer_sqnr)"),
    ("q.worst_layer", STR, False, "", "name of that layer"),
    ("q.weight_storage_bytes", I64, False, "bytes", "weights stored: every weight set plus the float weights plus per-step scale tables (tsq)"),
    ("q.num_weight_sets", I64, False, "sets", "weight sets of the recipe"),
    ("q.step_to_set", STR, False, "", "comma list: the weight set each denoising step uses"),
    ("q.clip_signal_energy", STR, True, "", "comma list: each evaluated clip's float-sample energy sum(ref^2) (float64 repr; null in parts written before it was stored)"),
    ("q.clip_error_energy", STR, True, "", "comma list: each evaluated clip's error energy sum((q - ref)^2); the SQNR of any set of clips is 10 log10 of the two sums' ratio"),
    ("q.semantic_accuracy", F64, True, "fraction", "stdit-shapes only: mean attribute accuracy of the classifier"),
    ("q.semantic_accuracy_all", F64, True, "fraction", "stdit-shapes only: clips with all five attributes right"),
    ("q.frechet_distance", F64, True, "", "stdit-shapes only: Frechet distance of the clips' features to real clips"),
    ("q.frechet_distance_real_floor", F64, True, "", "stdit-shapes only: the same distance between two real sets"),
    ("q.temporal_jerk_px", F64, True, "px", "stdit-shapes only: mean centroid jerk (temporal consistency)"),
]  # fmt: skip


def _field(name: str, typ: pa.DataType, nullable: bool, unit: str, meaning: str) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"unit": unit, "description": meaning})


def _arrow_type(value: object) -> pa.DataType:
    """The column type of a hardware-config leaf as the sweep stores it (lists and dicts as text)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return I64
    if isinstance(value, float):
        return F64
    return STR


def hw_leaves() -> dict[str, object]:
    """Leaf path -> value of the default hardware config, as ``codesign.sweep`` flattens it."""
    import hwsim
    from codesign.spec import flatten

    return flatten(hwsim.hw_to_dict(hwsim.load_hw("edge-npu")))


@functools.cache
def points_schema() -> pa.Schema:
    """Schema of a points part (one row per design point), in the order the sweep writes them."""
    fields = [_field(*row) for row in _IDENTITY]
    for leaf, value in hw_leaves().items():
        unit, meaning = HW_COLUMNS.get(leaf, ("", "hardware config field (undocumented)"))
        fields.append(_field(f"hw.{leaf}", _arrow_type(value), False, unit, f"hardware config: {meaning}"))
    fields += [_field(*row) for row in _STATUS]
    fields += [_field(n, t, True, u, m + " (null when failed)") for n, t, u, m in _METRICS]
    for prefix, (typ, unit, parts) in _BREAKDOWNS.items():
        what = {"energy_j.": "energy of", "area_mm2.": "area of", "stall_s.": "time in", "util.": "utilisation:"}
        fields += [
            _field(prefix + k, typ, True, unit, f"{what[prefix]} {m} (null when failed)") for k, m in parts.items()
        ]
    fields += [_field(*row) for row in _TAIL]
    return pa.schema(fields, metadata={"codesign_store_schema": SCHEMA_VERSION, "part": "points"})


QUALITY_SCHEMA = pa.schema(
    [_field(*row) for row in _QUALITY], metadata={"codesign_store_schema": SCHEMA_VERSION, "part": "quality"}
)


def part_schema(kind: str) -> pa.Schema:
    """The schema of a ``points`` or ``quality`` part."""
    return points_schema() if kind == "points" else QUALITY_SCHEMA


def _cell(value: object, f: pa.Field) -> object:
    """A value as its column stores it, undoing what a pandas round trip (compaction, old parts) does:
    NaN -> null in a column that may be null or is not float, integral float -> int in an integer
    column (pandas makes an int column with a null float)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value) and (f.nullable or not pa.types.is_floating(f.type)):
            return None
        if pa.types.is_integer(f.type) and value.is_integer():
            return int(value)
    return value


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> a table of exactly ``schema``; a column the schema lacks, a wrong type or a null where
    none may be is a ``ConfigError`` naming the column (nothing is written)."""
    names = set(schema.names)
    for row in rows:
        for col in row:
            if col not in names:
                raise ConfigError(
                    "store column", col, "a column of the store schema (codesign/store_schema.py documents each)"
                )
    arrays = []
    for f in schema:
        values = [_cell(row.get(f.name), f) for row in rows]
        if pa.types.is_integer(f.type):  # pyarrow would truncate 1.5 to 1 without a word
            frac = next((v for v in values if isinstance(v, float)), None)
            if frac is not None:
                raise ConfigError(f"store column {f.name}", frac, f"whole numbers (the column is {f.type})")
        try:
            arr = pa.array(values, type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise ConfigError(
                f"store column {f.name}", _first_misfit(values, f.type), f"values of type {f.type} ({e})"
            ) from None
        if arr.null_count and not f.nullable:
            raise ConfigError(f"store column {f.name}", None, "a value in every row (the column may not be null)")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)


def _first_misfit(values: list, typ: pa.DataType) -> object:
    for v in values:
        try:
            pa.array([v], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return v
    return values[0] if values else None


def columns_markdown() -> str:
    """The docs page's table of the store's columns, made from the schemas' metadata."""
    out = []
    for kind in ("points", "quality"):
        out += [
            f"#### `{kind}` parts",
            "",
            "| column | type | null | unit | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for f in part_schema(kind):
            md = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
            typ = {STR: "string", I64: "int64", F64: "double", BOOL: "bool"}.get(f.type, str(f.type))
            null = "yes" if f.nullable else "no"
            out.append(f"| `{f.name}` | {typ} | {null} | {md.get('unit', '')} | {md.get('description', '')} |")
        out.append("")
    return "\n".join(out)
