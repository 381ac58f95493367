"""On-chip SRAM banks: access energy, leakage and area fitted to CACTI 7.

``hwsim/data/cacti7_sram.csv`` holds CACTI 7 runs of single-bank scratchpad RAMs from 8 KiB to 8 MiB
(every 2^k and 3 x 2^k bytes)
at the nodes CACTI covers at and below 45 nm (its header names the CACTI commit and configuration;
``tools/regen_cacti.py`` regenerates it).

Per node, read energy and area are a power law in capacity, ``y = a * capacity^b``, least squares in
log-log over the node's 21 rows (``POWER_LAW``): within +-17 % of every CACTI row. Write energy and
leakage are not: CACTI's organisation search (sub-array counts, mux degrees, sense-amp sharing) makes
them jump by 2-4x between neighbouring capacities, so a single power law misses rows by up to 3.4x
(``single_power_law_worst``); for those two the model interpolates the table itself, piecewise
linear in log(capacity) -> log(value) (``TABLE``), and says so in ``codesign validate``.

Between CACTI nodes the fitted value is interpolated as a power law in the node (as in
``technology.py``); below the smallest CACTI node (22 nm) it is carried by the technology model:
dynamic energy by the logic energy factor, area by the published 6T bitcell area, leakage by the
bitcell area too (assumption: leakage per mm2 of SRAM macro held at its value at the last CACTI
node). Above the largest CACTI node the model refuses the node.
"""

from __future__ import annotations

import bisect
import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from hwsim import technology
from workloads.errors import ConfigError

CACTI_CSV = Path(__file__).with_name("data") / "cacti7_sram.csv"
QUANTITIES = ("read_pj", "write_pj", "leakage_mw", "area_mm2")
POWER_LAW = ("read_pj", "area_mm2")  # fitted: a * capacity^b per node
TABLE = ("write_pj", "leakage_mw")  # interpolated between the table's capacities
WORD_BYTES = 16  # CACTI runs use a 128-bit word (tools/regen_cacti.py)


@dataclass(frozen=True)
class Bank:
    """One SRAM bank of ``capacity_bytes`` at a node: per access of one word and per bank."""

    capacity_bytes: float
    read_pj: float  # per word read
    write_pj: float  # per word written
    leakage_mw: float
    area_mm2: float

    @property
    def read_pj_per_byte(self) -> float:
        return self.read_pj / WORD_BYTES

    @property
    def write_pj_per_byte(self) -> float:
        return self.write_pj / WORD_BYTES


@functools.lru_cache(maxsize=1)
def cacti_rows() -> tuple[dict, ...]:
    """The CACTI table as dicts of floats (comment lines start with '#')."""
    lines = [ln for ln in CACTI_CSV.read_text().splitlines() if ln and not ln.startswith("#")]
    return tuple({k: float(v) for k, v in row.items()} for row in csv.DictReader(lines))


def cacti_header() -> list[str]:
    return [ln[1:].strip() for ln in CACTI_CSV.read_text().splitlines() if ln.startswith("#")]


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    """{node_nm: [(log capacity, {quantity: log value}), ...] sorted by capacity}."""
    by_node: dict = {}
    for r in cacti_rows():
        by_node.setdefault(r["node_nm"], []).append(
            (math.log(r["capacity_bytes"]), {q: math.log(r[q]) for q in QUANTITIES})
        )
    return {nm: sorted(rows, key=lambda t: t[0]) for nm, rows in by_node.items()}


@functools.cache
def power_law(nm: float, quantity: str) -> tuple[float, float]:
    """(a, b) of ``y = a * capacity_bytes^b``: least squares in log-log over the node's rows."""
    rows = _table()[nm]
    xs = [r[0] for r in rows]
    ys = [r[1][quantity] for r in rows]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - b * mx), b


def _at_cacti_node(nm: float, capacity_bytes: float) -> dict:
    rows = _table()[nm]
    x = math.log(capacity_bytes)
    xs = [r[0] for r in rows]
    i = min(max(bisect.bisect_left(xs, x), 1), len(rows) - 1)
    (x0, y0), (x1, y1) = rows[i - 1], rows[i]
    t = (x - x0) / (x1 - x0)
    out = {q: math.exp(y0[q] + t * (y1[q] - y0[q])) for q in TABLE}
    for q in POWER_LAW:
        a, b = power_law(nm, q)
        out[q] = a * capacity_bytes**b
    return out


def single_power_law_worst(nm: float, quantity: str) -> float:
    """Worst row ratio (>= 1) of the node's least-squares power law for ``quantity``."""
    a, b = power_law(nm, quantity)
    return max(max(v, 1 / v) for v in (a * math.exp(x * b) / math.exp(y[quantity]) for x, y in _table()[nm]))


def cacti_nodes() -> list[float]:
    return sorted(_table())


def bank(node_nm: float, capacity_bytes: float) -> Bank:
    """One bank's energies, leakage and area at ``node_nm`` (any node the technology model covers
    up to the largest CACTI node)."""
    nodes = cacti_nodes()
    if node_nm > nodes[-1]:
        raise ConfigError(
            "tech.node_nm", node_nm, f"at most {nodes[-1]:g} nm for SRAM (the largest node of the CACTI table)"
        )
    if node_nm in nodes:
        v = _at_cacti_node(node_nm, capacity_bytes)
    elif node_nm > nodes[0]:
        hi = min(n for n in nodes if n > node_nm)
        lo = max(n for n in nodes if n < node_nm)
        a, b = _at_cacti_node(lo, capacity_bytes), _at_cacti_node(hi, capacity_bytes)
        v = {q: technology._interp_log(node_nm, lo, hi, a[q], b[q]) for q in QUANTITIES}
    else:  # past CACTI: carry the smallest CACTI node by the technology model
        base_nm = nodes[0]
        v = _at_cacti_node(base_nm, capacity_bytes)
        n, b = technology.node(node_nm), technology.node(base_nm)
        e, cell = n.energy / b.energy, n.sram_bitcell_um2 / b.sram_bitcell_um2
        v = {
            "read_pj": v["read_pj"] * e,
            "write_pj": v["write_pj"] * e,
            "leakage_mw": v["leakage_mw"] * cell,
            "area_mm2": v["area_mm2"] * cell,
        }
    return Bank(capacity_bytes=capacity_bytes, **v)
