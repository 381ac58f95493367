"""The op trace: the contract between the model half and the hardware half.

``quantmodel`` writes a trace (every operation of every denoising step, with its shapes, MACs and
bytes, and, once a quantization recipe is applied, its bit-widths and weight set); ``hwsim`` reads
it. It is plain data: a list of frozen ``Op`` records plus a metadata dict, versioned, saved as
Parquet or CSV.

GEMM convention: an op of kind linear/conv/matmul_* computes ``batch`` independent products
``[m, k] x [k, n]``; ``macs = batch * m * k * n``. Vector ops (softmax, norms, modulation, ...) touch
``elements`` elements of their output. Bytes are at the op's bit-widths (float ops: 2 bytes, FP16).

What each op writes and reads (version 2): ``out_bits`` is the width of every element of the output
as the op writes it (16: FP16 or int16 codes, 8: int8 codes written by a producer that quantizes on
write, 32: int32 accumulators); ``reads`` lists the activation tensors the op reads, one
``producer:part:elements:bits`` entry each (``producer`` the name of the op of the same step that
wrote it, empty for a model input; ``part`` the offset of the piece read, 0 for the whole tensor);
``input_bytes`` is their sum. So bytes are conserved: every entry's bits are
its producer's ``out_bits``, and a producer writes what its consumers read (tests/quantmodel/test_trace_conservation.py).
``epilogue`` names the conversion an op applies to its output as it writes it (``requant``: int32 x
multiplier, rounding shift, clamp to int16 codes; ``requant_dequant``: the same codes then scaled to
FP16; ``quant``: quantize FP16 to int8 at a static scale; ``zero_point`` on the ``dyn_stats`` /
``dyn_rescale`` ops of an asymmetric dynamic recipe: a min beside the max reduction and the zero point
added per element / the per-token rank-1 correction ``acc - z * colsum(W)``, one multiply-add per output
element), and ``dequant_elements`` counts input elements it converts from integer codes to FP16 as it
reads them: the hardware model charges both to the unit that does them.
``table_bytes`` are the constants a quantized GEMM reads at this step that are not part of its weight
set: the per-step activation scales and requantization tables of recipes whose scales change between
steps that share one weight set (``tsq``, ``groupsK-tsq``; ``workloads.recipes.scale_table_bytes``).
The column is optional on load (0 when absent): traces written before it carry no such tables.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from workloads.errors import ConfigError
from workloads.io import atomic_open, atomic_path

TRACE_VERSION = 2  # 2: out_bits, reads, epilogue, dequant_elements (what each op writes and reads)

GEMM_KINDS = ("linear", "conv", "matmul_qk", "matmul_av")
VECTOR_KINDS = (
    "softmax",  # row softmax (exp, sum, reciprocal, multiply)
    "layernorm",  # no affine weights in STDiT
    "modulate",  # x * (1 + scale) + shift (adaLN)
    "gelu",
    "silu",
    "elementwise",  # residual adds, gated residuals, positional-embedding adds
    "embedding",  # sinusoidal timestep embedding, table lookups
    "smooth_mul",  # SmoothQuant per-channel multiply that could not be folded (static: then quantize;
    # dynamic channel balancing: FP16 out, out_bits 16, quantized by the dyn_stats that follows)
    "dyn_stats",  # dynamic quantization: per-token abs-max reduction + scale + quantize
    "dyn_rescale",  # dynamic quantization: per-row rescale of the GEMM output
    "quantize",  # static quantization of a tensor that other ops also read in FP16 (scale per consumer)
)
EPILOGUES = ("", "requant", "requant_dequant", "quant", "zero_point")
KINDS = GEMM_KINDS + VECTOR_KINDS


@dataclass(frozen=True)
class Op:
    step: int  # denoising step index, 0 = first step run
    name: str  # module path, e.g. blocks.3.attn.qkv
    kind: str
    batch: int = 1
    m: int = 0
    k: int = 0
    n: int = 0
    elements: int = 0  # output elements (vector ops: elements processed)
    macs: int = 0
    weight_bytes: int = 0  # static operand (weights); 0 for activation x activation matmuls
    input_bytes: int = 0  # activation operands read
    output_bytes: int = 0
    w_bits: int = 16  # weight (or second operand) bits; 16 = FP16
    a_bits: int = 16  # activation bits
    weight_set: int = -1  # which quantized weight set the step uses; -1 = no weights / float
    block: int = -1  # transformer block index; -1 outside the blocks
    out_bits: int = 16  # bits per output element as written (16 FP16 / int16 codes, 8 int8, 32 int32)
    reads: str = ""  # "producer:part:elements:bits" per activation input, ";"-separated ("" = model input)
    epilogue: str = ""  # conversion on write: "" | requant (int32 -> int16 codes) | requant_dequant (-> FP16)
    # | quant (FP16 -> int8)
    dequant_elements: int = 0  # input elements converted from integer codes to FP16 on read
    table_bytes: int = 0  # per-step scale / requantization constants read from DRAM at this step

    @property
    def is_gemm(self) -> bool:
        return self.kind in GEMM_KINDS

    def read_entries(self) -> list[tuple[str, int, int, int]]:
        """``(producer, part, elements, bits)`` of each activation input; ``part`` tells apart the
        pieces of one output that different readers take (its offset in the producer's output:
        q, k and v of one qkv GEMM, the six chunks of the adaLN parameters), 0 for a whole tensor."""
        out = []
        for e in self.reads.split(";") if self.reads else ():
            name, part, el, bits = e.rsplit(":", 3)
            out.append((name, int(part), int(el), int(bits)))
        return out


def reads_str(entries) -> str:
    """The ``reads`` field of ``(producer, part, elements, bits)`` entries."""
    return ";".join(f"{p}:{o}:{e}:{b}" for p, o, e, b in entries)


def entry_bytes(elements: int, bits: int) -> int:
    return -(-elements * bits // 8)


OP_FIELDS = tuple(f.name for f in dataclasses.fields(Op))
_STR_FIELDS = ("name", "kind", "reads", "epilogue")
_INT_FIELDS = tuple(f for f in OP_FIELDS if f not in _STR_FIELDS)
_OPTIONAL_FIELDS = {"table_bytes": 0}  # columns added after version 2 was fixed: default when absent


@dataclass
class Trace:
    """Ops of a whole sampling run plus metadata (workload, recipe, version)."""

    ops: list[Op]
    meta: dict = field(default_factory=dict)
    version: int = TRACE_VERSION

    @property
    def num_steps(self) -> int:
        return 1 + max((op.step for op in self.ops), default=-1)

    def step_ops(self, step: int) -> list[Op]:
        return [op for op in self.ops if op.step == step]

    def table_storage_bytes(self) -> int:
        """Bytes of the per-step constant tables as stored: one table per op per activation-scale set
        (``meta["step_to_scale_set"]``; each step its own set when the meta does not say)."""
        sts = self.meta.get("step_to_scale_set") or []
        seen: dict[tuple[int, str], int] = {}
        for op in self.ops:
            if op.table_bytes:
                seen[(sts[op.step] if op.step < len(sts) else op.step, op.name)] = op.table_bytes
        return sum(seen.values())

    def summary(self) -> dict:
        """Totals a user checks first: steps, ops, MACs, weight and activation bytes (the stored
        weights include the per-step scale tables of recipes that have them)."""
        steps = self.num_steps
        per_set: dict[int, dict[str, int]] = {}
        for op in self.ops:
            if op.weight_bytes:
                per_set.setdefault(op.weight_set, {})[op.name] = op.weight_bytes
        float_bytes = sum(per_set.pop(-1, {}).values())  # float weights, shared by every step
        set_bytes = [sum(v.values()) for v in per_set.values()]
        return {
            "workload": self.meta.get("workload", ""),
            "recipe": self.meta.get("recipe", "fp16"),
            "trace_version": self.version,
            "steps": steps,
            "ops": len(self.ops),
            "ops_per_step": len(self.ops) // steps if steps else 0,
            "total_macs": sum(op.macs for op in self.ops),
            "macs_per_step": sum(op.macs for op in self.ops) // steps if steps else 0,
            "weight_sets": len(set_bytes),
            "weight_bytes_per_set": max(set_bytes, default=0),
            "float_weight_bytes": float_bytes,
            "scale_table_bytes": (tables := self.table_storage_bytes()),
            "weight_storage_bytes": float_bytes + sum(set_bytes) + tables,
            "activation_bytes": sum(op.input_bytes + op.output_bytes for op in self.ops),
        }

    # ---- files ---------------------------------------------------------------------------------
    def to_columns(self) -> dict[str, list]:
        return {f: [getattr(op, f) for op in self.ops] for f in OP_FIELDS}

    def save(self, path: str | Path) -> Path:
        """Write Parquet (``.parquet``) or CSV (``.csv``), atomically (``workloads.io``)."""
        path = Path(path)
        if path.suffix not in (".parquet", ".csv"):
            raise ConfigError("out", str(path), "a file ending in .parquet or .csv")
        header = json.dumps({"trace_version": self.version, "meta": self.meta})
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(self.to_columns()).replace_schema_metadata({"trace": header})
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        else:
            with atomic_open(path, "w", newline="") as fh:
                fh.write(f"# {header}\n")
                w = csv.writer(fh)
                w.writerow(OP_FIELDS)
                for op in self.ops:
                    w.writerow([getattr(op, f) for f in OP_FIELDS])
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("trace", str(path), "an existing .parquet or .csv trace file")
        if path.suffix not in (".parquet", ".csv"):
            raise ConfigError("trace", str(path), "a file ending in .parquet or .csv")
        try:
            header, cols = _read_columns(path)
            if not isinstance(header, dict):
                raise ValueError("the header is not a mapping")
        except (OSError, ValueError, IndexError, TypeError, csv.Error) as e:  # torn, garbage or foreign
            why = (str(e).splitlines() or [""])[0][:80]
            raise ConfigError("trace", str(path), f"a readable trace written by codesign trace ({why})") from None
        version = header.get("trace_version")
        if version != TRACE_VERSION:
            raise ConfigError(
                "trace_version",
                version,
                f"{TRACE_VERSION} (this build's trace format, which says "
                "what each op writes and reads; re-create the trace with codesign trace)",
            )
        n = len(cols.get("name", ()))
        for f, default in _OPTIONAL_FIELDS.items():
            cols.setdefault(f, [default] * n)
        missing = [f for f in OP_FIELDS if f not in cols]
        if missing:
            raise ConfigError("trace column", missing[0], "the columns " + ", ".join(OP_FIELDS))
        n = len(cols["name"])
        if any(len(cols[f]) != n for f in OP_FIELDS):
            raise ConfigError("trace", str(path), "columns of equal length (the file is torn)")
        ops = [Op(**{f: cols[f][i] for f in OP_FIELDS}) for i in range(n)]
        for op in ops:
            _check_op_counts(op)
        meta = header.get("meta", {})
        if not isinstance(meta, dict):
            raise ConfigError("trace meta", meta, "a mapping")
        return cls(ops=ops, meta=meta, version=version)


def _check_op_counts(op: Op) -> None:
    """A loaded op's counts agree with its shape (output bytes with its elements; a GEMM's MACs,
    elements and input bytes with batch, m, k, n). An edited trace whose ``m`` grew but whose
    ``macs``, ``elements`` or ``input_bytes`` did not was simulated as nonsense without a word (a
    GEMM of 6.4e13 rows planned as one tile: its bytes per element were ~0)."""
    if not all(isinstance(getattr(op, f), int) for f in _INT_FIELDS):
        return  # types and kinds are checked where the trace is used (hwsim)
    where = f"trace op {op.name!r}"
    least = entry_bytes(op.elements, op.out_bits) if op.out_bits > 0 else 0
    if op.output_bytes < least:
        raise ConfigError(f"{where}.output_bytes", op.output_bytes, f">= {least} (elements at out_bits)")
    if op.kind not in GEMM_KINDS:
        return
    b, m, k, n = op.batch, op.m, op.k, op.n
    if op.macs != b * m * k * n:
        raise ConfigError(f"{where}.macs", op.macs, f"batch x m x k x n = {b * m * k * n} (the GEMM's shape)")
    if op.elements != b * m * n:
        raise ConfigError(f"{where}.elements", op.elements, f"batch x m x n = {b * m * n} (the GEMM's output)")
    least = entry_bytes(b * m * k, op.a_bits) if op.a_bits > 0 else 0
    if op.input_bytes < least:
        raise ConfigError(f"{where}.input_bytes", op.input_bytes, f">= {least} (batch x m x k at a_bits)")


def _read_columns(path: Path) -> tuple[dict, dict]:
    """(header, columns) of a trace file; any parse error propagates for ``Trace.load`` to name."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        header = json.loads((table.schema.metadata or {}).get(b"trace", b"{}"))
        return header, table.to_pydict()
    with open(path, newline="") as fh:
        first = fh.readline()
        header = json.loads(first[2:]) if first.startswith("# ") else {}
        rows = list(csv.reader(fh))
    names, body = rows[0], rows[1:]
    cols = {n: [r[i] for r in body] for i, n in enumerate(names)}
    for f in _INT_FIELDS:
        if f in cols:
            cols[f] = [int(v) for v in cols[f]]
    for f in _STR_FIELDS:  # an empty CSV cell is an empty string
        if f in cols:
            cols[f] = [v or "" for v in cols[f]]
    return header, cols


def gemm_trace(m: int, k: int, n: int, w_bits: int = 16, a_bits: int = 16) -> Trace:
    """Trace of one linear layer ``[m,k] x [k,n]`` (``--workload gemm:M,K,N``), built without torch."""
    op = Op(
        step=0,
        name="gemm",
        kind="linear",
        batch=1,
        m=m,
        k=k,
        n=n,
        elements=m * n,
        macs=m * k * n,
        weight_bytes=k * n * w_bits // 8,
        input_bytes=m * k * a_bits // 8,
        output_bytes=m * n * 2,
        w_bits=w_bits,
        a_bits=a_bits,
        reads=reads_str([("", 0, m * k, a_bits)]),
    )
    return Trace(ops=[op], meta={"workload": f"gemm:{m},{k},{n}", "num_steps": 1, "single_gemm": True})
