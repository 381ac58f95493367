"""Technology model: what a CMOS node does to energy, area, leakage and the voltage-frequency curve.

Everything is relative to Horowitz's 45 nm, 0.9 V figures ("Computing's energy problem", ISSCC 2014),
which ``energy.py`` and ``area.py`` hold. From 45 nm to 7 nm the factors come from Stillmaker & Baas,
"Scaling equations for the accurate prediction of CMOS device performance from 180 nm to 7 nm",
Integration 58 (2017): their area factors, and their energy-per-operation polynomials in Vdd (one per
node) evaluated at each node's nominal supply. Past 7 nm, published foundry ratios (cited per row)
carry the 7 nm figures to 5, 4 and 3 nm.

Between tabulated nodes every factor is interpolated linearly in log(node) against log(factor), i.e. a
power law between neighbours; outside ``NODE_RANGE_NM`` (3-45 nm: nothing is extrapolated past
Horowitz's 45 nm anchor or the 3 nm foundry data) the model refuses the node (``ConfigError``).

Voltage and frequency: each node has a nominal point (vnom, fnom) and the alpha-power law of Sakurai &
Newton (IEEE JSSC 25(2), 1990), f ~ (V - Vth)^alpha / V, gives the voltage a clock needs. Dynamic
energy per event scales as C V^2 (V/Vnom)^2, leakage power as V/Vnom (the drain current at fixed
gate bias times the supply); below the node's Vmin the clock is slowed at Vmin, above f(Vmax) it is
refused.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from workloads.errors import ConfigError

HOROWITZ_VDD_V = 0.9  # Horowitz ISSCC 2014 figures are at 45 nm, 0.9 V
ALPHA = 1.3  # alpha-power-law exponent: Sakurai & Newton 1990 fit alpha ~ 1.2-1.3 for short channels

# Stillmaker & Baas 2017, their per-node fits: energy-per-operation fits E(V) = a V^2 + b V + c
# (relative units, one polynomial per node) and area scaling relative to 45 nm; nominal Vdd of the
# PTM/ITRS device models each node's fit is centred on.
#   node_nm: (a, b, c, area_vs_45nm, vnom_v)
_STILLMAKER = {
    45: (1.103, -0.362, 0.2767, 1.0, 1.0),
    32: (0.9559, -0.7823, 0.471, 0.46, 0.9),
    20: (0.373, -0.1582, 0.04104, 0.21, 0.9),
    16: (0.2958, -0.1241, 0.03024, 0.19, 0.85),
    14: (0.2363, -0.09675, 0.02239, 0.17, 0.8),
    10: (0.2068, -0.09311, 0.02375, 0.1, 0.75),
    7: (0.1776, -0.09097, 0.02447, 0.059, 0.7),
}


def _stillmaker_energy(node: int, vdd_v: float) -> float:
    a, b, c, _, _ = _STILLMAKER[node]
    return a * vdd_v * vdd_v + b * vdd_v + c


def _stillmaker_energy_vs_horowitz(node: int) -> float:
    """Energy per op at the node's nominal supply relative to 45 nm at Horowitz's 0.9 V."""
    return _stillmaker_energy(node, _STILLMAKER[node][4]) / _stillmaker_energy(45, HOROWITZ_VDD_V)


@dataclass(frozen=True)
class Node:
    """One tabulated node. ``energy`` and ``area`` are factors on Horowitz's 45 nm / 0.9 V figures."""

    node_nm: float
    energy: float  # dynamic energy per event at vnom_v, relative to 45 nm at 0.9 V
    area: float  # logic cell area relative to 45 nm
    vnom_v: float
    vmin_v: float
    vmax_v: float
    vth_v: float
    fnom_hz: float  # NPU clock at vnom_v (a datapath with ~20-25 FO4 per stage)
    sram_bitcell_um2: float  # high-density 6T bitcell
    leakage_mw_per_mm2: float  # logic leakage power density at vnom_v


_E7 = _stillmaker_energy_vs_horowitz(7)
_A7 = _STILLMAKER[7][3]
# TSMC N5 vs N7: 1.84x logic density, -30 % power at iso speed, +15 % speed at iso power
#   (Yeap et al., "5nm CMOS production technology platform", IEDM 2019).
_E5, _A5 = _E7 * 0.70, _A7 / 1.84
# TSMC N4 vs N5: 6 % smaller area (TSMC N4 announcement, 2020), an N5-family shrink with no
#   quantified power or speed gain: energy and clock kept at N5's (assumption). (N4P's later -22 %
#   power claim is a different process; Samsung's 4LPE, the 4 nm NPU's process, is likewise N5-class.)
_E4, _A4 = _E5, _A5 / 1.06
# TSMC N3 vs N5: 1.7x logic density, -25 to -30 % power (midpoint -27.5 %), +10 to 15 % speed
#   (TSMC Technology Symposium 2020, N3 announcement).
_E3, _A3 = _E5 * 0.725, _A5 / 1.7

# NPU clock at nominal voltage: 1,196 MHz for Samsung's 5 nm NPU (Park et al., ISSCC 2021, 9.5);
# other nodes by the foundry speed ratios above (7 nm = 5 nm / 1.15, 4 nm = 5 nm,
# 3 nm = 5 nm x 1.125); 10 nm and above: assumption, delay ~ node^0.5 from 7 nm (Stillmaker & Baas's
# FO4 delay falls more slowly than the feature size below 32 nm).
_F5 = 1.196e9
_F7 = _F5 / 1.15


def _f_big(node: float) -> float:
    return _F7 * math.sqrt(7.0 / node)  # assumption (see above)


def _row(nm, energy, area, vnom, fnom, bitcell):
    # vmin 0.55 V and vmax vnom + 0.15 V: assumption (a mobile DVFS range around nominal; overdrive
    # bounded by reliability); vth 0.30 V: assumption (regular-Vt FinFET/planar logic, ~0.3 V).
    # Leakage 20 mW/mm2 at vnom: assumption (low-power logic, order of magnitude at nominal voltage).
    return Node(
        node_nm=nm,
        energy=energy,
        area=area,
        vnom_v=vnom,
        vmin_v=min(0.55, vnom - 0.1),
        vmax_v=vnom + 0.15,
        vth_v=0.30,
        fnom_hz=fnom,
        sram_bitcell_um2=bitcell,
        leakage_mw_per_mm2=20.0,
    )


# SRAM bitcells (high-density 6T): Intel 45 nm 0.346 um2 (Mistry et al., IEDM 2007), Intel 32 nm
# 0.171 (Natarajan et al., IEDM 2008), Intel 22 nm 0.092 (Auth et al., VLSI 2012), Intel 14 nm 0.0588
# (Natarajan et al., IEDM 2014), Intel 10 nm 0.0312 (Auth et al., IEDM 2017), TSMC N7 0.027 (Wu et al.,
# IEDM 2016), TSMC N5 0.021 (Yeap et al., IEDM 2019), N4 shares N5's cell, TSMC N3 0.0199 (TSMC N3
# announcement, 2022 VLSI Symposium). 20/16 nm: TSMC 16FF 0.07 um2 (Wu et al., IEDM 2013), 20 nm interpolated.
NODES = tuple(
    sorted(
        (
            _row(45, _stillmaker_energy_vs_horowitz(45), 1.0, 1.0, _f_big(45), 0.346),
            _row(32, _stillmaker_energy_vs_horowitz(32), _STILLMAKER[32][3], 0.9, _f_big(32), 0.171),
            _row(20, _stillmaker_energy_vs_horowitz(20), _STILLMAKER[20][3], 0.9, _f_big(20), 0.084),
            _row(16, _stillmaker_energy_vs_horowitz(16), _STILLMAKER[16][3], 0.85, _f_big(16), 0.07),
            _row(14, _stillmaker_energy_vs_horowitz(14), _STILLMAKER[14][3], 0.8, _f_big(14), 0.0588),
            _row(10, _stillmaker_energy_vs_horowitz(10), _STILLMAKER[10][3], 0.75, _f_big(10), 0.0312),
            _row(7, _E7, _A7, 0.7, _F7, 0.027),
            # 5/4/3 nm nominal supply 0.75 V: TSMC N5's reported operating voltage for its logic/SRAM
            # characterisation (Yeap et al., IEDM 2019); N4 and N3 kept at it (assumption).
            _row(5, _E5, _A5, 0.75, _F5, 0.021),
            _row(4, _E4, _A4, 0.75, _F5, 0.021),
            _row(3, _E3, _A3, 0.75, _F5 * 1.125, 0.0199),
        ),
        key=lambda n: n.node_nm,
    )
)
NODE_RANGE_NM = (NODES[0].node_nm, NODES[-1].node_nm)
_NMS = [n.node_nm for n in NODES]


def _interp_log(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    if x0 == x1 or y0 == y1:
        return y0
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


def node(node_nm: float, field: str = "tech.node_nm") -> Node:
    """The node's parameters, interpolated (power law between neighbours) where it is not tabulated."""
    lo_nm, hi_nm = NODE_RANGE_NM
    if not (isinstance(node_nm, (int, float)) and lo_nm <= node_nm <= hi_nm):
        raise ConfigError(
            field,
            node_nm,
            f"a node between {lo_nm:g} and {hi_nm:g} nm (the technology "
            "model's range: Horowitz 45 nm scaled by Stillmaker & Baas to 7 nm, foundry "
            "data for 5/4/3 nm)",
        )
    i = bisect.bisect_left(_NMS, node_nm)
    if _NMS[i] == node_nm:
        return NODES[i]
    a, b = NODES[i - 1], NODES[i]
    vals = {}
    for f in (
        "energy",
        "area",
        "vnom_v",
        "vmin_v",
        "vmax_v",
        "vth_v",
        "fnom_hz",
        "sram_bitcell_um2",
        "leakage_mw_per_mm2",
    ):
        vals[f] = _interp_log(node_nm, a.node_nm, b.node_nm, getattr(a, f), getattr(b, f))
    return Node(node_nm=float(node_nm), **vals)


def _speed(n: Node, vdd_v: float) -> float:
    """Alpha-power-law drive (Sakurai & Newton 1990): f ~ (V - Vth)^alpha / V."""
    return (vdd_v - n.vth_v) ** ALPHA / vdd_v


def freq_at(n: Node, vdd_v: float) -> float:
    """Highest clock the node's NPU datapath closes at ``vdd_v``."""
    return n.fnom_hz * _speed(n, vdd_v) / _speed(n, n.vnom_v)


def max_freq_hz(n: Node) -> float:
    return freq_at(n, n.vmax_v)


def vdd_for(n: Node, freq_hz: float, field: str = "clock.freq_hz") -> float:
    """The lowest supply at which the node runs ``freq_hz`` (bisection on the alpha-power law);
    Vmin below the frequency Vmin reaches; a clock above f(Vmax) is refused."""
    fmax = max_freq_hz(n)
    if freq_hz > fmax * (1 + 1e-9):
        raise ConfigError(
            field,
            freq_hz,
            f"at most {fmax:.4g} Hz at {n.node_nm:g} nm (f at Vmax "
            f"{n.vmax_v:.2f} V on the node's voltage-frequency curve)",
        )
    if freq_hz <= freq_at(n, n.vmin_v):
        return n.vmin_v
    lo, hi = n.vmin_v, n.vmax_v
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if freq_at(n, mid) < freq_hz:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class OperatingPoint:
    """A node at a clock: the supply it needs and what that does to energy and leakage."""

    node: Node
    freq_hz: float
    vdd_v: float

    @property
    def dynamic_scale(self) -> float:
        """Dynamic energy per event relative to Horowitz's 45 nm 0.9 V: node factor x (V/Vnom)^2."""
        return self.node.energy * (self.vdd_v / self.node.vnom_v) ** 2

    @property
    def leakage_scale(self) -> float:
        """Leakage power relative to the node's nominal supply: ~ V (fixed leakage current)."""
        return self.vdd_v / self.node.vnom_v

    @property
    def area_scale(self) -> float:
        return self.node.area


def operating_point(node_nm: float, freq_hz: float) -> OperatingPoint:
    n = node(node_nm)
    return OperatingPoint(node=n, freq_hz=freq_hz, vdd_v=vdd_for(n, freq_hz))


# Wires: a mid-level on-chip wire has ~0.2 fF/um whatever the node (ITRS interconnect tables: wire
# capacitance per length stays near 0.2 pF/mm across nodes as width and spacing scale together).
WIRE_FF_PER_UM = 0.2
WIRE_ACTIVITY = 0.5  # assumption: random data toggles half the bits


def wire_pj_per_bit_mm(vdd_v: float) -> float:
    """Energy to move one bit one millimetre: C_wire x V^2 x activity."""
    return WIRE_FF_PER_UM * 1e3 * 1e-3 * vdd_v * vdd_v * WIRE_ACTIVITY  # fF/um x 1000 um -> pF -> pJ
