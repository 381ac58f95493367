"""Plots of a results table (matplotlib, Agg backend, PNG). Each function draws one figure from the
DataFrame that ``codesign.store.load_results`` returns and writes it to ``path``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from codesign.pareto import pareto_mask

SCHEME_ORDER = ("static", "asq", "tsq", "groups", "tsq+tsw", "dynamic", "fp16")
SCHEME_COLORS = {
    "static": "tab:gray",
    "asq": "tab:blue",
    "tsq": "tab:orange",
    "groups": "tab:green",
    "tsq+tsw": "tab:purple",
    "dynamic": "tab:red",
    "fp16": "black",
}
BITS_MARKERS = {(8, 8): "o", (6, 6): "s", (4, 8): "^", (16, 16): "D"}
LABELS = {
    "latency_s": "latency per video (s)",
    "energy_j": "energy per video (J)",
    "area_mm2": "chip area (mm²)",
    "storage_bytes": "weight storage (bytes)",
    "swap_stall_s": "weight-swap stall (s)",
    "swap_bytes": "weight-swap traffic (bytes)",
    "q.sqnr_db": "quality: final-sample SQNR vs float (dB)",
    "q.psnr_db": "quality: PSNR vs float (dB)",
    "q.semantic_accuracy": "quality: semantic accuracy",
    "q.frechet_distance": "Frechet distance",
}
DPI = 110


def label(col: str) -> str:
    return LABELS.get(col, col)


def _save(fig, path: str | Path, extra: tuple = ()) -> Path:
    path = Path(path)
    fig.tight_layout()
    # legends placed beside the axes stay whole (``extra``: ones added as plain artists)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", bbox_extra_artists=list(extra) or None)
    plt.close(fig)
    return path


def _schemes(df: pd.DataFrame) -> list[str]:
    present = set(df["scheme"])
    return [s for s in SCHEME_ORDER if s in present] + sorted(present - set(SCHEME_ORDER))


def pareto_plot(
    df: pd.DataFrame,
    x: str,
    y: str,
    senses: dict[str, str],
    path: str | Path,
    title: str,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """All points (colour = recipe family and, for step groups, K; marker = bit-widths), the Pareto
    front of (x, y) drawn on top; one legend for the colours, one for the markers."""
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.6, 4.8))
    d = df.dropna(subset=[x, y])
    families = _families(d)
    for fam, color in families.items():
        sub = d[_family_labels(d) == fam]
        for bits, grp in sub.groupby(["w_bits", "a_bits"]):
            ax.scatter(
                grp[x],
                grp[y],
                s=10,
                alpha=0.35,
                color=color,
                marker=BITS_MARKERS.get(tuple(bits), "x"),
                linewidths=0,
            )
    front = d[pareto_mask(d, {x: senses[x], y: senses[y]})].sort_values(x)
    ax.step(front[x], front[y], where="post", color="k", lw=1.2)
    ax.scatter(front[x], front[y], s=28, facecolors="none", edgecolors="k", linewidths=1.0)
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    colour_handles = [Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in families.items()]
    colour_handles.append(Line2D([], [], color="k", marker="o", mfc="none", label="Pareto front"))
    first = ax.legend(handles=colour_handles, title="recipe", fontsize=6.5, title_fontsize=7, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    ax.add_artist(first)
    bits = sorted({(int(w), int(a)) for w, a in zip(d["w_bits"], d["a_bits"])}, reverse=True)
    marker_handles = [
        Line2D([], [], ls="", marker=BITS_MARKERS.get(b, "x"), color="0.35", label=f"W{b[0]}A{b[1]}") for b in bits
    ]
    ax.legend(handles=marker_handles, title="bits", fontsize=6.5, title_fontsize=7, loc="lower left",
              bbox_to_anchor=(1.01, 0.0))  # fmt: skip
    return _save(fig, path, extra=(first,))


def _family_labels(df: pd.DataFrame) -> pd.Series:
    """Each row's recipe family, step groups split by K (``groups K=5``)."""
    k = df["num_weight_sets"].astype(int).astype(str) if "num_weight_sets" in df else ""
    return df["scheme"].where(df["scheme"] != "groups", "groups K=" + k)


def _families(df: pd.DataFrame) -> dict[str, object]:
    """Legend order and colour of the families present: scheme colours; step groups in shades of
    green, darker with more groups."""
    labels = set(_family_labels(df))
    out = {}
    for scheme in _schemes(df):
        if scheme != "groups":
            out[scheme] = SCHEME_COLORS.get(scheme, "tab:olive")
            continue
        ks = sorted(int(lab.split("=")[1]) for lab in labels if lab.startswith("groups K="))
        greens = plt.get_cmap("Greens")
        for i, k in enumerate(ks):
            out[f"groups K={k}"] = greens(0.45 + 0.5 * i / max(1, len(ks) - 1))
    return out


def ratio_boxes(ratios: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Box plots of ``ratio`` per (metric, static scheme): one box per group of paired points."""
    metrics = list(dict.fromkeys(ratios["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = ratios[ratios["metric"] == metric]
        groups = list(dict.fromkeys(sub["versus"]))
        data = [sub[sub["versus"] == g]["ratio"].to_numpy() for g in groups]
        ax.boxplot(data, showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(groups) + 1), groups, rotation=30, ha="right", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_ylabel(f"dynamic / static {metric} at equal hardware")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def stacked_bars(df: pd.DataFrame, prefix: str, labels: list[str], path: str | Path, title: str, ylabel: str) -> Path:
    """Stacked bars of the ``prefix*`` breakdown columns, one bar per row of ``df``."""
    cols = [c for c in df.columns if c.startswith(prefix) and df[c].fillna(0).abs().sum() > 0]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(df) + 2.5), 4.6))
    bottom = np.zeros(len(df))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(cols):
        vals = df[c].fillna(0).to_numpy(dtype=float)
        ax.bar(range(len(df)), vals, bottom=bottom, color=cmap(i % 20), label=c[len(prefix) :])
        bottom += vals
    ax.set_xticks(range(len(df)), labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def swap_vs_k(curves: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Against the number of weight sets K, one line per curve label: swap stall, weight storage,
    and (where the curves carry it) energy relative to K=1 on the same chips."""
    cols = [
        c for c in ("swap_stall_s", "storage_bytes", "energy_vs_k1") if c in curves.columns and curves[c].notna().any()
    ]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 4.2), squeeze=False)
    axes = axes[0]
    for lab, grp in curves.groupby("curve", sort=False):
        grp = grp.sort_values("num_weight_sets")
        for ax, col in zip(axes, cols):
            ax.plot(grp["num_weight_sets"], grp[col], marker="o", ms=3, label=lab)
    for ax, col in zip(axes, cols):
        ax.set_xscale("log")
        ax.set_xlabel("weight sets K (1 = ASQ, steps = TSQ+TSW)")
        ax.set_ylabel({"energy_vs_k1": "energy / energy at K=1, same chip"}.get(col, label(col)))
        if col == "storage_bytes":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
