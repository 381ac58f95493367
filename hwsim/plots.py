"""Pictures of one simulation: engine timeline (Gantt) over a step and across a swap, energy and area
breakdown, roofline of the layers. matplotlib is imported only here."""

from __future__ import annotations

import os
from pathlib import Path

from hwsim.config import HWConfig
from hwsim.result import SimResult
from workloads.io import atomic_path

_COLORS = {"mac": "tab:blue", "vector": "tab:orange", "dram": "tab:green", "flash": "tab:red"}


def _plt():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (``workloads.io``); the format from the target's suffix."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def gantt(res: SimResult, step: int, path: Path, window_s: tuple | None = None) -> Path:
    """Busy intervals per engine over one recorded step (optionally a time window of it)."""
    plt = _plt()
    events = res.timeline[step]
    engines = sorted({e for e, *_ in events}, key=lambda e: (e[:3] != "mac", e[:3] == "dma", e))
    fig, ax = plt.subplots(figsize=(12, 0.5 + 0.45 * len(engines)))
    for row, eng in enumerate(engines):
        for is_swap in (False, True):
            spans = [
                (a, b - a)
                for e, a, b, lab in events
                if e == eng
                and b > a
                and (lab == "swap") == is_swap
                and (window_s is None or (b >= window_s[0] and a <= window_s[1]))
            ]
            color = "tab:red" if is_swap else _COLORS.get(eng.rstrip("0123456789"), "tab:purple")
            if spans:
                ax.broken_barh(spans, (row - 0.4, 0.8), facecolors=color, linewidth=0)
    swap = [(a, b) for e, a, b, lab in events if lab == "swap"]
    if swap:
        ax.axvspan(
            min(a for a, _ in swap),
            max(b for _, b in swap),
            color="tab:red",
            alpha=0.06,
            label="weight-set swap in flight (red bars: its transfers)",
        )
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yticks(range(len(engines)), engines)
    ax.invert_yaxis()
    ax.set_xlabel("time in step (s)")
    if window_s is not None:
        ax.set_xlim(*window_s)
    ax.set_title(f"{res.hw}: engines over step {step} ({res.recipe}, {res.workload})")
    out = _save(fig, path)
    plt.close(fig)
    return out


def breakdown(res: SimResult, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), layout="constrained")
    for ax, (title, d, unit) in zip(
        axes,
        (
            ("energy per video", res.energy_breakdown_j, "J"),
            ("area", res.area_breakdown_mm2, "mm$^2$"),
            ("latency by cause", res.stall_breakdown_s, "s"),
        ),
    ):
        items = [(k, v) for k, v in d.items() if v > 0]
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set_xlabel(unit)
        ax.set_title(f"{title}: {sum(v for _, v in items):.4g} {unit}")
    fig.suptitle(f"{res.hw} / {res.recipe} / {res.workload}")
    out = _save(fig, path)
    plt.close(fig)
    return out


def roofline(res: SimResult, hw: HWConfig, path: Path) -> Path:
    """Achieved MAC/s of each GEMM unit of step 0 against its operational intensity (MAC per DRAM byte)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    bw = hw.dram.bandwidth_bytes_per_s
    for prec, ls in (("int8", "-"), ("fp16", "--")):
        peak = hw.peak_macs_per_cycle[prec] * hw.clock.freq_hz
        xs = [1e-2, peak / bw, 1e4]  # the knee: where DRAM bandwidth stops limiting
        ax.plot(xs, [min(peak, bw * x) for x in xs], ls, color="k", lw=1)
        ax.axhline(peak, ls=ls, color="grey", lw=0.5)
        ax.text(xs[1], peak, f" {prec} peak", va="bottom", ha="right", fontsize=8)
    seen = set()
    for row in res.per_op:
        if not row["macs"] or not row["dram_bytes"] or row["latency_s"] <= 0:
            continue
        key = (row["kind"], row["macs"], row["dram_bytes"])
        if key in seen:
            continue
        seen.add(key)
        oi = row["macs"] / row["dram_bytes"]
        perf = row["macs"] / row["latency_s"]
        ax.scatter(oi, perf, s=18, color="tab:blue" if row["precision"] != "fp16" else "tab:orange")
        ax.annotate(row["name"].split(".", 2)[-1], (oi, perf), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (MAC / DRAM byte)")
    ax.set_ylabel("MAC / s")
    ax.set_title(f"roofline, {res.hw} (blue: integer GEMMs, orange: FP16)")
    out = _save(fig, path)
    plt.close(fig)
    return out


def write_plots(res: SimResult, hw: HWConfig, out_dir: str | Path) -> list[Path]:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = [breakdown(res, d / "breakdown.png"), roofline(res, hw, d / "roofline.png")]
    steps = sorted(res.timeline)
    if steps:
        paths.append(gantt(res, steps[0], d / f"timeline_step{steps[0]}.png"))
        first_block = next((r["latency_s"] for r in res.per_op if ".attn.qkv" in r["name"]), None)
        if first_block is not None:  # zoom: the first transformer block's tiles are visible
            t = sum(
                r["latency_s"]
                for r in res.per_op[: next(i for i, r in enumerate(res.per_op) if ".attn.qkv" in r["name"]) + 6]
            )
            paths.append(gantt(res, steps[0], d / f"timeline_step{steps[0]}_zoom.png", (0.0, t)))
        for s in steps[1:]:
            evs = res.timeline[s]
            swap_end = max((b for e, a, b, lab in evs if lab == "swap"), default=None)
            win = (0.0, swap_end * 1.2) if swap_end else None
            paths.append(gantt(res, s, d / f"timeline_step{s}_swap.png", win))
    return paths
