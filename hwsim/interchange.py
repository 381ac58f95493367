"""SCALE-Sim interchange: read SCALE-Sim v3's own inputs (a ``.cfg`` hardware file and a topology
CSV), write any trace's GEMMs as a SCALE-Sim topology, and write per-op results in the layout of
SCALE-Sim's ``COMPUTE_REPORT.csv`` and ``BANDWIDTH_REPORT.csv``, so a user can run both tools on the
same layers and compare them line by line (docs/scalesim.md).

SCALE-Sim describes one systolic array and its three SRAM buffers; the rest of a chip (vector unit,
DMA, DRAM, flash, technology) comes from a named base preset. SCALE-Sim counts operands in words
and moves them at ``Bandwidth`` words per cycle; here a word is one byte (int8 operands, int8
outputs), so hwsim runs a topology on the int8 datapath at SCALE-Sim's one MAC per PE per cycle.

Reading refuses a bad field with a one-line ``ConfigError`` naming the file, the field, the value and
what is allowed; writing goes to a temporary file renamed into place (nothing half-written).
"""

from __future__ import annotations

import configparser
import csv
import dataclasses
import math
import re
from pathlib import Path

from hwsim.config import HWConfig, with_overrides
from hwsim.tiling import systolic_cycles, systolic_dims
from workloads.errors import ConfigError
from workloads.io import atomic_open, write_text
from workloads.trace import GEMM_KINDS, Op, Trace, reads_str

WORD_BYTES = 1  # one SCALE-Sim word = one int8 operand (assumption stated in the module docstring)
DATAFLOW_NAMES = {"os": "output_stationary", "ws": "weight_stationary", "is": "input_stationary"}
SCALESIM_DATAFLOW = {v: k for k, v in DATAFLOW_NAMES.items()}

GEMM_HEADER = ("Layer Name", "M", "N", "K")
CONV_HEADER = (
    "Layer name",
    "IFMAP Height",
    "IFMAP Width",
    "Filter Height",
    "Filter Width",
    "Channels",
    "Num Filter",
    "Strides",
)
COMPUTE_COLUMNS = (
    "LayerID",
    "Layer Name",
    "Batch",
    "Total Cycles (incl. prefetch)",
    "Total Cycles",
    "Stall Cycles",
    "Overall Util %",
    "Mapping Efficiency %",
    "Compute Util %",
    "Stall-free Cycles per item (1 array)",
)
BANDWIDTH_COLUMNS = (
    "LayerID",
    "Layer Name",
    "Avg IFMAP SRAM BW",
    "Avg FILTER SRAM BW",
    "Avg OFMAP SRAM BW",
    "Avg IFMAP DRAM BW",
    "Avg FILTER DRAM BW",
    "Avg OFMAP DRAM BW",
    "DRAM Bytes",
)


def _bad(path: Path, field: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{path.name}: {field}", value, allowed)


# ---- .cfg -> hardware ---------------------------------------------------------------------------
def _cfg_int(path: Path, sec: configparser.SectionProxy, key: str, minimum: int = 1) -> int:
    raw = sec.get(key)
    if raw is None:
        raise _bad(path, f"[{sec.name}] {key}", None, "a value (the field is required)")
    try:
        v = int(raw.strip())
    except ValueError:
        raise _bad(path, f"[{sec.name}] {key}", raw.strip(), f"an integer >= {minimum}") from None
    if v < minimum:
        raise _bad(path, f"[{sec.name}] {key}", v, f"an integer >= {minimum}")
    return v


def read_scalesim_cfg(path: str | Path, base: HWConfig) -> HWConfig:
    """The base chip with SCALE-Sim's array and buffers in place of its own.

    ``ArrayHeight`` x ``ArrayWidth`` -> one array of that many rows x columns; ``Dataflow``
    os/ws/is -> the dataflow; ``FilterSramSzkB`` -> the weight buffer; ``IfmapSramSzkB`` +
    ``OfmapSramSzkB`` -> the activation buffer (hwsim keeps inputs and outputs in one buffer);
    ``Bandwidth`` (words per cycle, ``InterfaceBandwidth: USER``) at the base clock -> the fewest
    channels of the base preset's DRAM part that give at least that bandwidth (DRAM comes in
    channels); with ``CALC`` SCALE-Sim sizes the bandwidth so nothing stalls, and the base preset's
    DRAM is kept. Offsets, request buffers and the SRAM bank layout have no counterpart and are
    read past; sparsity is refused (hwsim models dense arrays). One function: it reads the file's
    keys in the order the mapping above lists them, each with its own check.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("hw", str(path), "an existing SCALE-Sim .cfg file")
    cp = configparser.ConfigParser()
    try:
        cp.read_string(path.read_text())
    except configparser.Error as e:
        raise _bad(path, "syntax", type(e).__name__, "a SCALE-Sim .cfg (INI sections and key: value lines)") from None
    if not cp.has_section("architecture_presets"):
        raise _bad(path, "section", "architecture_presets", "present (SCALE-Sim's [architecture_presets])")
    arch = cp["architecture_presets"]
    rows = _cfg_int(path, arch, "ArrayHeight")
    cols = _cfg_int(path, arch, "ArrayWidth")
    ifmap_kb = _cfg_int(path, arch, "IfmapSramSzkB")
    filter_kb = _cfg_int(path, arch, "FilterSramSzkB")
    ofmap_kb = _cfg_int(path, arch, "OfmapSramSzkB")
    df = (arch.get("Dataflow") or "").strip()
    if df not in DATAFLOW_NAMES:
        raise _bad(path, "[architecture_presets] Dataflow", df, "os, ws or is")
    mode = "CALC"
    if cp.has_section("run_presets"):
        mode = (cp["run_presets"].get("InterfaceBandwidth") or "CALC").strip()
        if mode not in ("CALC", "USER"):
            raise _bad(path, "[run_presets] InterfaceBandwidth", mode, "CALC or USER")
    if cp.has_section("sparsity") and (cp["sparsity"].get("SparsitySupport") or "false").strip().lower() == "true":
        raise _bad(path, "[sparsity] SparsitySupport", "true", "false (hwsim models dense arrays)")
    over = {
        "mac.arrays": 1,
        "mac.rows": rows,
        "mac.cols": cols,
        "mac.dataflow": DATAFLOW_NAMES[df],
        "sram.weight_buffer_bytes": filter_kb * 1024,
        "sram.activation_buffer_bytes": (ifmap_kb + ofmap_kb) * 1024,
    }
    if mode == "USER":
        raw = (arch.get("Bandwidth") or "").strip()
        try:
            words = [int(x) for x in raw.split(",")]
        except ValueError:
            words = []
        if len(words) != 1 or words[0] < 1:
            raise _bad(path, "[architecture_presets] Bandwidth", raw, "one integer >= 1 (words per cycle)")
        want = words[0] * WORD_BYTES * base.clock.freq_hz  # bytes per second at the base clock
        over["dram.channels"] = max(1, math.ceil(want / base.dram.spec.channel_bandwidth_bytes_per_s))
    name = cp.get("general", "run_name", fallback=path.stem).strip() or path.stem
    hw = with_overrides(base, over)
    return _renamed(
        hw,
        name,
        f"SCALE-Sim {path.name}: {rows}x{cols} {df}, {ifmap_kb}+{filter_kb}+{ofmap_kb} kB "
        f"SRAM, rest of the chip from {base.name}",
    )


def _renamed(hw: HWConfig, name: str, description: str) -> HWConfig:
    return dataclasses.replace(hw, name=name, description=description)


# ---- topology CSV <-> trace ---------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    cells = [c.strip() for c in line.strip().split(",")]
    while cells and cells[-1] == "":
        cells.pop()
    return cells


def is_scalesim_topology(path: str | Path) -> bool:
    """Whether a CSV file starts with a SCALE-Sim topology header (GEMM or conv layout)."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with open(path) as fh:
        head = [c.lower() for c in _cells(fh.readline())]
    return head[:4] == [h.lower() for h in GEMM_HEADER] or head[:3] == [h.lower() for h in CONV_HEADER[:3]]


def _gemm_op(name: str, m: int, k: int, n: int, kind: str, input_bytes: int) -> Op:
    """One layer as an int8 GEMM that writes int8 (SCALE-Sim's one-word outputs): its int32 sums are
    requantized on the arrays' epilogue lanes (energy only; they keep pace with the arrays)."""
    return Op(
        step=0,
        name=name,
        kind=kind,
        batch=1,
        m=m,
        k=k,
        n=n,
        elements=m * n,
        macs=m * k * n,
        weight_bytes=k * n * WORD_BYTES,
        input_bytes=input_bytes,
        output_bytes=m * n * WORD_BYTES,
        w_bits=8,
        a_bits=8,
        out_bits=8 * WORD_BYTES,
        epilogue="requant",
        reads=reads_str([("", 0, input_bytes // WORD_BYTES, 8 * WORD_BYTES)]),
    )


def read_scalesim_topology(path: str | Path) -> Trace:
    """A one-step int8 trace of a SCALE-Sim topology: GEMM rows ``name, M, N, K`` as linear layers;
    conv rows ``name, ifmap h, ifmap w, filter h, filter w, channels, filters, stride`` as the GEMM
    SCALE-Sim runs for them (M = output pixels, K = filter h x w x channels, N = filters; the output
    size is SCALE-Sim's ``ceil((ifmap - filter + stride) / stride)``). One function: the header
    decides how every row is read, and each row's checks name its line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("workload", str(path), "an existing SCALE-Sim topology .csv file")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise _bad(
            path,
            "header",
            "",
            "a SCALE-Sim topology header: " + ", ".join(GEMM_HEADER) + " or " + ", ".join(CONV_HEADER),
        )
    head = [c.lower() for c in _cells(lines[0])]
    gemm = head[:4] == [h.lower() for h in GEMM_HEADER]
    if not gemm and head[:3] != [h.lower() for h in CONV_HEADER[:3]]:
        raise _bad(
            path,
            "header",
            ", ".join(_cells(lines[0])),
            "a SCALE-Sim topology header: " + ", ".join(GEMM_HEADER) + " or " + ", ".join(CONV_HEADER),
        )
    cols = GEMM_HEADER if gemm else CONV_HEADER
    ops = []
    for i, line in enumerate(lines[1:], start=2):
        cells = _cells(line)
        if len(cells) < len(cols):
            raise _bad(path, f"line {i}", line.strip(), f"{len(cols)} fields: " + ", ".join(cols))
        vals = []
        for col, raw in zip(cols[1:], cells[1 : len(cols)]):
            try:
                v = int(raw)
            except ValueError:
                v = None
            if v is None or v < 1:
                raise _bad(path, f"line {i} {col}", raw, "a positive integer")
            vals.append(v)
        name = cells[0] or f"layer{i - 1}"
        if gemm:
            m, n, k = vals
            ops.append(_gemm_op(name, m, k, n, "linear", m * k * WORD_BYTES))
            continue
        ih, iw, fh, fw, ch, nf, stride = vals
        if fh > ih or fw > iw:
            raise _bad(path, f"line {i} Filter Height/Width", f"{fh}x{fw}", f"at most the IFMAP size {ih}x{iw}")
        oh, ow = math.ceil((ih - fh + stride) / stride), math.ceil((iw - fw + stride) / stride)
        ops.append(_gemm_op(name, oh * ow, fh * fw * ch, nf, "conv", ih * iw * ch * WORD_BYTES))
    if not ops:
        raise _bad(path, "layers", 0, "at least one layer row under the header")
    meta = {
        "workload": path.stem,
        "num_steps": 1,
        "recipe": "scalesim-int8",
        "scheme": "static",
        "w_bits": 8,
        "a_bits": 8,
        "num_weight_sets": 0,
        "step_to_set": [],
        "source": "scalesim-topology",
    }
    return Trace(ops=ops, meta=meta)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def write_scalesim_topology(trace: Trace, path: str | Path) -> int:
    """Write the GEMMs of the trace's first step as a SCALE-Sim GEMM topology (``name, M, N, K``);
    returns the number of rows. SCALE-Sim has no batch: a GEMM of ``batch`` independent products
    (attention's per-head matmuls) is written once per op, its name suffixed ``_xB``; its
    SCALE-Sim cycles are then per item (the COMPUTE report here has the same per-item column)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ConfigError("scalesim-topology", str(path), "a file ending in .csv")
    rows = []
    for op in trace.ops:
        if op.step != 0 or op.kind not in GEMM_KINDS:
            continue
        name = _SAFE_NAME.sub("_", op.name) + (f"_x{op.batch}" if op.batch > 1 else "")
        rows.append(f"{name}, {op.m}, {op.n}, {op.k},")
    write_text(path, ", ".join(GEMM_HEADER) + ",\n" + "\n".join(rows) + ("\n" if rows else ""))
    return len(rows)


# ---- results -> SCALE-Sim-like reports ------------------------------------------------------------
def _mapping_efficiency(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> float:
    """Share of the PEs that hold useful work over the folds (SCALE-Sim's mapping efficiency)."""
    sr, sc, _, _ = systolic_dims(m, k, n, dataflow)
    return sr * sc / (math.ceil(sr / rows) * rows * math.ceil(sc / cols) * cols)


def report_rows(trace: Trace, res, hw: HWConfig) -> tuple[list[list], list[list]]:
    """COMPUTE and BANDWIDTH rows for the GEMM ops of step 0 (``res``: the ``SimResult`` of the
    trace on ``hw``). Cycles are hwsim's simulated ones (the op's latency, with DMA and memory
    stalls); the last compute column is SCALE-Sim's stall-free count for one batch item on one
    array, the number to hold against SCALE-Sim's own report (which prints it minus one).
    Bandwidths are bytes (= words) per cycle over the op's latency."""
    mac, f = hw.mac, hw.clock.freq_hz
    ops = [op for op in trace.ops if op.step == 0]
    if len(ops) != len(res.per_op):
        raise ValueError("the result does not belong to this trace (per-op rows differ)")
    compute, bandwidth = [], []
    for op, r in zip(ops, res.per_op):
        if op.kind not in GEMM_KINDS:
            continue
        lid = len(compute)
        total = round(r["latency_s"] * f)
        per_item = systolic_cycles(op.m, op.k, op.n, mac.rows, mac.cols, mac.dataflow, mac.rate(r["precision"]))
        stall_free = math.ceil(op.batch * per_item / mac.arrays)
        stall = max(0, total - stall_free) if r["fused_into"] == "" else 0
        pes = mac.pes * mac.rate(r["precision"])
        util = 100.0 * op.macs / (total * pes) if total else 0.0
        comp_util = 100.0 * op.macs / (stall_free * pes) if stall_free else 0.0
        mapping = 100.0 * _mapping_efficiency(op.m, op.k, op.n, mac.rows, mac.cols, mac.dataflow)
        compute.append([lid, op.name, op.batch, total, total, stall, util, mapping, comp_util, per_item])
        cyc = max(total, 1)
        a_bytes = (
            op.input_bytes
            if op.kind in ("linear", "conv")
            else op.input_bytes * op.m * op.k // (op.m * op.k + op.k * op.n)
        )
        b_bytes = op.weight_bytes if op.kind in ("linear", "conv") else op.input_bytes - a_bytes
        bandwidth.append(
            [
                lid,
                op.name,
                a_bytes / cyc,
                b_bytes / cyc,
                op.output_bytes / cyc,
                a_bytes / cyc,
                b_bytes / cyc,
                op.output_bytes / cyc,
                r["dram_bytes"],
            ]
        )
    return compute, bandwidth


def write_reports(trace: Trace, res, hw: HWConfig, out_dir: str | Path) -> list[Path]:
    """``COMPUTE_REPORT.csv`` and ``BANDWIDTH_REPORT.csv`` (SCALE-Sim's file names and leading
    columns) plus ``HWSIM_PER_OP.csv`` (every op of step 0, ours) in ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("scalesim-report", str(out), "a directory (created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    compute, bandwidth = report_rows(trace, res, hw)
    per_op_cols = tuple(res.per_op[0]) if res.per_op else ("name",)
    files = [
        ("COMPUTE_REPORT.csv", COMPUTE_COLUMNS, compute),
        ("BANDWIDTH_REPORT.csv", BANDWIDTH_COLUMNS, bandwidth),
        ("HWSIM_PER_OP.csv", per_op_cols, [[r[c] for c in per_op_cols] for r in res.per_op]),
    ]
    paths = []
    for name, cols, rows in files:
        p = out / name
        with atomic_open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            w.writerows(rows)
        paths.append(p)
    return paths
