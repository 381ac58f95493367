"""Regenerate hwsim/data/cacti7_sram.csv by running a CACTI 7 binary (this script never builds CACTI).

Usage: python tools/regen_cacti.py /path/to/cacti [--out hwsim/data/cacti7_sram.csv]

Each row is one single-bank scratchpad RAM ("cache type ram": no tag array) of one capacity at one
node: read and write dynamic energy per access, leakage power and area, as CACTI prints them. The
configuration below is written into the CSV header so that the table says how it was made.
CACTI must be run from its own directory (it reads tech_params/ relative to the working directory).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

NODES_UM = (
    0.045,
    0.032,
    0.022,
)  # the nodes this CACTI 7 build accepts at and below 45 nm (its parameter.cc disables 16 nm)
# 8 KiB .. 8 MiB: every power of two and every 3 x 2^k between them (21 per node)
CAPACITIES_BYTES = tuple(sorted({8192 << i for i in range(11)} | {3 * (4096 << i) for i in range(10)}))
WORD_BYTES = 16  # 128-bit port: one NPU scratchpad access
# Lines of CACTI's own cache.cfg (shipped beside the binary) replaced for each run, by prefix.
CELL = "itrs-lstp"  # bitcell array: ITRS low-standby-power devices (high-Vt SRAM cells)
PERIPHERY = "itrs-lop"  # decoders, sense amps, drivers: ITRS low-operating-power devices (mobile SoC)
OVERRIDES = {
    "-block size (bytes)": f"-block size (bytes) {WORD_BYTES}",
    "-associativity": "-associativity 1",
    "-UCA bank count": "-UCA bank count 1",
    "-output/input bus width": f"-output/input bus width {8 * WORD_BYTES}",
    "-operating temperature (K)": "-operating temperature (K) 350",
    "-cache type": '-cache type "ram"',
    "-Data array cell type": f'-Data array cell type - "{CELL}"',
    "-Data array peripheral type": f'-Data array peripheral type - "{PERIPHERY}"',
    "-Tag array cell type": f'-Tag array cell type - "{CELL}"',
    "-Tag array peripheral type": f'-Tag array peripheral type - "{PERIPHERY}"',
    "-design objective": "-design objective (weight delay, dynamic power, leakage power, cycle time, area) "
    "0:100:0:0:100",
    "-deviate": "-deviate (delay, dynamic power, leakage power, cycle time, area) 100000:100000:100000:100000:100000",
    "-Optimize ED or ED^2": '-Optimize ED or ED^2 (ED, ED^2, NONE): "NONE"',
    "-Add ECC": '-Add ECC - "false"',
    "-Print input parameters": '-Print input parameters - "false"',
}


def cfg_text(template: str, size_bytes: int, node_um: float) -> str:
    """CACTI's cache.cfg with the size, the node and ``OVERRIDES`` put in."""
    per_run = {"-size (bytes)": f"-size (bytes) {size_bytes}", "-technology (u)": f"-technology (u) {node_um}"}
    out = []
    for line in template.splitlines():
        for prefix, repl in {**OVERRIDES, **per_run}.items():
            if line.startswith(prefix):
                line = repl
                break
        out.append(line)
    return "\n".join(out) + "\n"


_PATTERNS = {
    "read_pj": r"Total dynamic read energy per access \(nJ\):\s*([0-9.eE+-]+)",
    "write_pj": r"Total dynamic write energy per access \(nJ\):\s*([0-9.eE+-]+)",
    "leakage_mw": r"Total leakage power of a bank \(mW\):\s*([0-9.eE+-]+)",
    "area_mm2": r"Cache height x width \(mm\):\s*([0-9.eE+-]+)\s*x\s*([0-9.eE+-]+)",
    "access_ns": r"Access time \(ns\):\s*([0-9.eE+-]+)",
}


def parse(out: str) -> dict:
    row = {}
    for key, pat in _PATTERNS.items():
        m = re.search(pat, out)
        if not m:
            raise RuntimeError(f"CACTI output has no '{key}' line")
        if key == "area_mm2":
            row[key] = float(m.group(1)) * float(m.group(2))
        elif key in ("read_pj", "write_pj"):
            row[key] = float(m.group(1)) * 1e3  # nJ -> pJ
        else:
            row[key] = float(m.group(1))
    return row


def run(cacti: Path, size: int, node_um: float) -> dict:
    template = (cacti.parent / "cache.cfg").read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(cfg_text(template, size, node_um))
    out = subprocess.run(
        [str(cacti), "-infile", f.name], cwd=cacti.parent, capture_output=True, text=True, timeout=3600, check=True
    ).stdout
    return parse(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cacti", type=Path, help="path to a built CACTI 7 binary (in its source directory)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "hwsim/data/cacti7_sram.csv")
    ap.add_argument(
        "--version",
        default="CACTI 7.0, github.com/HewlettPackard/cacti commit 1ffd8dfb10303d306ecd8d215320aea07651e878",
    )
    args = ap.parse_args(argv)
    cacti = args.cacti.resolve()
    rows = []
    for node in NODES_UM:
        for size in CAPACITIES_BYTES:
            r = run(cacti, size, node)
            rows.append((round(node * 1000), size, r))
            print(
                f"{node * 1000:.0f} nm {size:>8d} B: read {r['read_pj']:.3f} pJ, area {r['area_mm2']:.4f} mm2",
                file=sys.stderr,
            )
    header = [
        f"# {args.version}; generated by tools/regen_cacti.py",
        f"# config: cache type ram, single bank (UCA bank count 1), {WORD_BYTES}-byte word "
        f"(block size and bus width {8 * WORD_BYTES} bits), otherwise CACTI's cache.cfg with: "
        + "; ".join(OVERRIDES.values()),
        (
            "# columns: read/write energy per access of one word (pJ), leakage power of the bank (mW), "
            "area (mm2), access time (ns)"
        ),
        "node_nm,capacity_bytes,read_pj,write_pj,leakage_mw,area_mm2,access_ns",
    ]
    lines = [
        f"{n},{s},{r['read_pj']:.5g},{r['write_pj']:.5g},{r['leakage_mw']:.5g},{r['area_mm2']:.5g},{r['access_ns']:.5g}"
        for n, s, r in rows
    ]
    args.out.write_text("\n".join(header + lines) + "\n")
    print(f"wrote {len(lines)} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
