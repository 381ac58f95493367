"""`codesign report`: a results folder -> PNG plots + a Markdown summary (report.md).

What it shows (the paper's open questions, answered from the sweep):
- Pareto fronts: quality vs latency, quality vs energy, energy vs area, storage vs quality;
- static vs dynamic at equal hardware: the dynamic recipe's latency and energy over each static
  recipe's on the very same hardware point (same ``hw_key``) and bit-widths;
- stacked latency (stall causes) and energy breakdowns of each recipe's best point;
- the weight-swap stall as the number of weight sets K grows (ASQ = 1 ... TSQ+TSW = steps);
- a table of the Pareto-optimal design points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from codesign import plots
from codesign.pareto import pareto_mask
from codesign.store import load_results, read_manifest
from workloads.io import write_text

# quality metrics quantmodel.eval.quality may report, in order of preference, with their direction.
# SQNR first: on the few clips a sweep samples, the trained model's semantic accuracy and Frechet
# distance sit inside the float model's own seed-to-seed spread (docs/quant_results.md, noise floors)
QUALITY_METRICS = (
    ("q.sqnr_db", "max"),
    ("q.psnr_db", "max"),
    ("q.semantic_accuracy", "max"),
    ("q.frechet_distance", "min"),
)
STATIC_SCHEMES = ("static", "asq", "tsq", "groups", "tsq+tsw")
MAX_TABLE_ROWS = 25


def quality_metric(df: pd.DataFrame) -> tuple[str, str] | None:
    """The quality column the report uses, and whether higher (max) or lower (min) is better."""
    for col, sense in QUALITY_METRICS:
        if col in df.columns and df[col].notna().any():
            return col, sense
    return None


def static_vs_dynamic(ok: pd.DataFrame) -> pd.DataFrame:
    """Pairs (dynamic, static recipe) on the same hardware point and bit-widths: their cost ratios,
    ordered by bit-widths, then scheme (static, ASQ, groups by K, TSQ+TSW)."""
    rows = []
    order = {s: i for i, s in enumerate(plots.SCHEME_ORDER)}
    dyn = ok[ok["scheme"] == "dynamic"]
    for (w, a), dgrp in dyn.groupby(["w_bits", "a_bits"]):
        d = dgrp.set_index("hw_key")
        stat = ok[(ok["scheme"].isin(STATIC_SCHEMES)) & (ok["w_bits"] == w) & (ok["a_bits"] == a)]
        for recipe, sgrp in stat.groupby("recipe"):
            s = sgrp.set_index("hw_key")
            common = d.index.intersection(s.index)
            rank = (-w, -a, order.get(sgrp["scheme"].iloc[0], 99), int(sgrp["num_weight_sets"].iloc[0]))
            for metric, col in (("latency", "latency_s"), ("energy", "energy_j")):
                r = (d.loc[common, col] / s.loc[common, col]).to_numpy(dtype=float)
                rows += [
                    {"metric": metric, "versus": recipe, "w_bits": w, "a_bits": a, "ratio": x, "_rank": rank} for x in r
                ]
    cols = ["metric", "versus", "w_bits", "a_bits", "ratio"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    df = df.iloc[sorted(range(len(df)), key=lambda i: (df["metric"].iat[i] != "latency", df["_rank"].iat[i]))]
    return df[cols].reset_index(drop=True)


def swap_curves(ok: pd.DataFrame) -> pd.DataFrame:
    """Per K (weight sets), over the hardware points every recipe of a curve shares: median swap
    stall, storage, swap traffic, and the median energy and latency over K=1 (ASQ) on the same chip."""
    sm = ok[ok["scheme"].isin(("asq", "groups", "tsq+tsw"))]
    sm = sm[~sm["recipe"].str.contains("-tsq-w", regex=False)]  # groupsK-tsq: K scale sets, one weight set
    rows = []
    for (w, a, pf), grp in sm.groupby(["w_bits", "a_bits", "prefetch"]):
        shared = set.intersection(*(set(g["hw_key"]) for _, g in grp.groupby("recipe")))
        g = grp[grp["hw_key"].isin(shared)]
        base = g[g["num_weight_sets"] == 1].set_index("hw_key")
        for k, kg in g.groupby("num_weight_sets"):
            kk = kg.set_index("hw_key")
            has_base = len(base) and kk.index.isin(base.index).all()
            rows.append(
                {
                    "curve": f"W{w}A{a} {pf}",
                    "num_weight_sets": int(k),
                    "swap_stall_s": kk["swap_stall_s"].median(),
                    "latency_s": kk["latency_s"].median(),
                    "swap_bytes": kk["swap_bytes"].median(),
                    "storage_bytes": kk["storage_bytes"].median(),
                    "energy_vs_k1": (kk["energy_j"] / base.loc[kk.index, "energy_j"]).median()
                    if has_base
                    else float("nan"),
                    "latency_vs_k1": (kk["latency_s"] / base.loc[kk.index, "latency_s"]).median()
                    if has_base
                    else float("nan"),
                    "points": len(kk),
                }
            )
    return pd.DataFrame(rows)


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


# readable titles of the columns the report's tables show (others: the column name, units below)
TITLES = {
    "recipe": "recipe",
    "num_weight_sets": "weight sets K",
    "q.sqnr_db": "SQNR (dB)",
    "q.psnr_db": "PSNR (dB)",
    "sqnr_interval": "SQNR 95 % over clips (dB)",
    "mac.arrays": "MAC arrays",
    "mac.rows": "array rows",
    "mac.cols": "array cols",
    "vector.online_reduction": "dynamic-quant unit",
    "tech.node_nm": "node (nm)",
    "flash.part": "flash",
    "dram.part": "DRAM",
    "dram.channels": "DRAM channels",
    "sram.weight_buffer_bytes": "weight buffer (MiB)",
    "sram.activation_buffer_bytes": "activation buffer (MiB)",
    "clock.freq_hz": "clock (GHz)",
    "dram_bytes": "DRAM traffic (GB)",
    "energy_vs_k1": "energy vs K=1",
    "latency_vs_k1": "latency vs K=1",
}
# unit suffix -> (title unit, scale): values are divided by the scale; on-chip buffers in binary units
UNITS = (
    ("buffer_bytes", "MiB", 2**20),
    ("_bytes", "GB", 1e9),
    ("freq_hz", "GHz", 1e9),
    ("_mm2", "mm²", 1.0),
    ("_j", "J", 1.0),
    ("_s", "s", 1.0),
)


def column_format(col: str) -> tuple[str, float]:
    """A table column's human title (unit in parentheses) and the scale its values are divided by."""
    name = col.removeprefix("hw.")
    for suffix, unit, scale in UNITS:
        if name.endswith(suffix):
            title = f"{name.removesuffix(suffix).replace('_', ' ').replace('.', ' ')} ({unit})"
            return TITLES.get(name, title), scale
    return TITLES.get(name, name.replace("_", " ")), 1.0


def _cell(v: object, scale: float) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, float, np.integer, np.floating)) and scale != 1.0:
        v = float(v) / scale
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return _fmt(v)


def _md_table(df: pd.DataFrame) -> str:
    """A Markdown table with readable titles and values in human units (GB, MiB, GHz, s, J, mm²)."""
    cols = list(df.columns)
    fmts = [column_format(c) for c in cols]
    lines = ["| " + " | ".join(t for t, _ in fmts) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_cell(r[c], sc) for c, (_, sc) in zip(cols, fmts)) + " |")
    return "\n".join(lines)


def _axes(manifest: dict | None, df: pd.DataFrame) -> list[str]:
    """The swept axes: from the manifest, or (when it was quarantined) the hardware columns that vary.
    An axis of whole parts (``dram: [{part, channels}, ...]``) is named by the fields its values set."""
    if manifest is None:
        return [c[3:] for c in df.columns if c.startswith("hw.") and df[c].astype(str).nunique() > 1]
    names = []
    for s in manifest["specs"]:
        for axis, values in ((s["spec"].get("hardware") or {}).get("axes") or {}).items():
            parts = [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []
            names += [f"{axis}.{k}" for p in parts for k in p] if parts else [axis]
    return list(dict.fromkeys(names))


def write_report(results_dir: str | Path, out_dir: str | Path, timing: bool = False) -> Path:
    """Write report.md and its PNG figures into ``out_dir``; return report.md's path.

    ``timing``: keep the wall-clock column ``sim_wall_s`` in pareto_points.csv (left out by default
    so two reports of the same results are identical). Results where no point succeeded give a
    report that says so and lists why the points failed."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    df = load_results(results_dir)
    manifest = read_manifest(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not len(df) or "recipe" not in df.columns or not (df["status"] == "ok").any():
        return write_text(out_dir / "report.md", "\n".join(_empty_report(results_dir, manifest, df)) + "\n")
    axes = _axes(manifest, df)
    axis_cols = [f"hw.{a}" for a in axes if f"hw.{a}" in df.columns]
    if "prefetch" in axes:
        axis_cols.append("prefetch")
    # rows in content-hash order, whatever order the sweep's parts finished in, so that ties (equal
    # latency on different chips) come out the same way on every run
    ok = df[df["status"] == "ok"].sort_values("key", kind="stable").reset_index(drop=True)
    failed = df[df["status"] != "ok"]
    q = quality_metric(ok)
    senses = {"latency_s": "min", "energy_j": "min", "area_mm2": "min", "storage_bytes": "min"}
    if q:
        senses[q[0]] = q[1]
    md = (
        _header(results_dir, _spec_names(manifest, df), df, ok, failed, q)
        + _quality_section(ok, q)
        + _pareto_section(ok, q, senses, out_dir)
        + _static_vs_dynamic_section(ok, out_dir)
        + _breakdown_section(ok, axis_cols, out_dir)
        + _swap_section(ok, out_dir)
        + _front_section(ok, q, senses, axis_cols, out_dir, timing)
        + _failed_section(failed)
    )
    return write_text(out_dir / "report.md", "\n".join(md) + "\n")


def _spec_names(manifest: dict | None, df: pd.DataFrame) -> str:
    if manifest is not None and manifest["specs"]:
        return ", ".join(s["name"] for s in manifest["specs"])
    if "spec_name" in df.columns and len(df):
        return ", ".join(map(str, df["spec_name"].dropna().unique()))
    return "(unknown spec)"


def _empty_report(results_dir: Path, manifest: dict | None, df: pd.DataFrame) -> list[str]:
    """The report of results with no successful design point: what is there, and why it failed."""
    failed = df[df["status"] != "ok"] if len(df) and "status" in df.columns else df.iloc[0:0]
    md = [
        f"# Design-space report: {_spec_names(manifest, df)}",
        "",
        f"Results: `{results_dir}` — {len(df)} design points, none simulated successfully, so there "
        "is nothing to plot or compare.",
        "",
    ]
    if not len(df):
        md += ["The folder holds no design point yet (run `codesign sweep` into it).", ""]
    if len(failed) and "error" in failed.columns:
        md += _failed_section(failed)
    return md


def _header(
    results_dir: Path, names: str, df: pd.DataFrame, ok: pd.DataFrame, failed: pd.DataFrame, q: tuple | None
) -> list[str]:
    md = [f"# Design-space report: {names}", ""]
    md.append(
        f"Results: `{results_dir}` — {len(df)} design points ({len(ok)} simulated, {len(failed)} "
        f"failed validation), {df['recipe'].nunique()} recipes x {df['hw_key'].nunique()} hardware "
        f"points; cost workload {', '.join(map(str, df['cost_workload'].unique()))}; "
        f"simulator version {', '.join(map(str, df['sim_version'].unique()))}."
    )
    if q:
        md.append(
            f"Quality: `{q[0]}` ({'higher' if q[1] == 'max' else 'lower'} is better) measured on "
            f"{', '.join(map(str, ok['quality_workload'].dropna().unique()))}, once per recipe."
        )
    else:
        md.append(
            "Quality: not in these results (the spec has no quality workload); the plots that need it are left out."
        )
    md.append("")
    return md


def _quality_section(ok: pd.DataFrame, q: tuple | None) -> list[str]:
    if not q:
        return []
    # one row per recipe: quality does not depend on the chip
    # SQNR (with its interval over the clips) and the worst layer; PSNR is SQNR plus a constant for the
    # shared float reference, and semantic accuracy / Frechet distance on a sweep's few clips have no
    # interval and sit inside the float model's own seed-to-seed spread: they stay in the store
    qcols = [c for c in ("q.sqnr_db", "q.worst_layer_sqnr_db") if c in ok.columns and ok[c].notna().any()]
    unshown = [
        c for c in ("q.psnr_db", "q.semantic_accuracy", "q.frechet_distance") if c in ok.columns and ok[c].notna().any()
    ]
    per = ok.groupby("recipe", sort=False).first().reset_index()
    per = per.sort_values(["w_bits", "a_bits", "num_weight_sets"], ascending=[False, False, True])
    ci = clip_intervals(per)
    if ci is not None:
        per = per.merge(ci, on="recipe", how="left")
        qcols.insert(qcols.index("q.sqnr_db") + 1, "sqnr_interval")
        qcols.insert(qcols.index("sqnr_interval") + 1, "clips")
    md = [
        "## Quality per recipe",
        "",
        f"Measured on {', '.join(map(str, ok['quality_workload'].dropna().unique()))} "
        f"({int(per['q.num_weight_sets'].max()) if 'q.num_weight_sets' in per else '?'} weight sets at most "
        "there); storage and weight sets K are the cost workload's.",
        "",
        _md_table(per[["recipe", "num_weight_sets", "storage_bytes"] + qcols]),
        "",
    ]
    md += _resolution_note(per, ci) if ci is not None else [_NO_CLIPS, ""]
    if unshown:
        md += [
            f"Also stored per recipe, not shown: {', '.join(f'`{c}`' for c in unshown)} (PSNR is SQNR plus a "
            "constant for the shared float reference; semantic accuracy and Frechet distance on so few clips "
            "have no interval and sit inside the float model's own seed-to-seed spread: docs/quant_results.md "
            "gives them over 64 clips x 3 seeds with their noise floors).",
            "",
        ]
    return md


_NO_CLIPS = (
    "These quality rows carry no per-clip values (written before they were stored), so the SQNR has no "
    "interval here: rerun the sweep into a fresh folder to get one."
)


def _clip_energies(row: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """A quality row's per-clip (signal, error) energies, or None where the row has none."""
    sig, err = row.get("q.clip_signal_energy"), row.get("q.clip_error_energy")
    if not isinstance(sig, str) or not isinstance(err, str) or not sig or not err:
        return None
    return np.array(sig.split(","), dtype=np.float64), np.array(err.split(","), dtype=np.float64)


def clip_intervals(per: pd.DataFrame) -> pd.DataFrame | None:
    """Per quantized recipe (one row each in ``per``): the SQNR recomputed from its per-clip energies,
    its 95 % bootstrap interval over those clips (``shapes.intervals.clip_sqnr_intervals``: the same
    replicates for every recipe, which sampled the same clips) and the number of clips. None when no
    row has per-clip values (results stored before they were); a recipe without them gets no row."""
    from shapes.intervals import clip_sqnr_intervals

    energies = {r: e for r, e in ((r, _clip_energies(row)) for r, row in per.set_index("recipe").iterrows()) if e}
    energies = {r: e for r, e in energies.items() if (e[1] > 0).any()}  # the float model: no error, no SQNR
    if not energies:
        return None
    rows = []
    for n in sorted({len(e[0]) for e in energies.values()}):
        names = [r for r, e in energies.items() if len(e[0]) == n]
        est, lo, hi = clip_sqnr_intervals(
            np.stack([energies[r][0] for r in names]), np.stack([energies[r][1] for r in names])
        )
        rows += [
            {"recipe": r, "sqnr_clips_db": e, "sqnr_interval": f"[{a:.1f}, {b:.1f}]", "clips": n}
            for r, e, a, b in zip(names, est, lo, hi)
        ]
    return pd.DataFrame(rows)


def adjacent_differences(per: pd.DataFrame) -> pd.DataFrame:
    """Within each bit width, the recipes in SQNR order and each one's paired difference with the next
    (same clips, same bootstrap replicates): which neighbours these clips tell apart."""
    from shapes.intervals import clip_sqnr_difference

    rows = []
    for (w, a), g in per.dropna(subset=["sqnr_clips_db"]).groupby(["w_bits", "a_bits"], sort=False):
        g = g.sort_values("sqnr_clips_db", ascending=False, kind="stable")
        recs = list(g["recipe"])
        for hi_r, lo_r in zip(recs, recs[1:]):
            e = [_clip_energies(g.set_index("recipe").loc[r]) for r in (hi_r, lo_r)]
            if len(e[0][0]) != len(e[1][0]):
                continue
            d = clip_sqnr_difference(np.stack([e[0][0], e[1][0]]), np.stack([e[0][1], e[1][1]]))
            rows.append({"bits": f"W{w}A{a}", "pair": f"{hi_r} - {lo_r}", **d})
    return pd.DataFrame(rows)


def _resolution_note(per: pd.DataFrame, ci: pd.DataFrame) -> list[str]:
    """What the quality column can and cannot tell apart, said plainly from its own clips."""
    n = sorted(ci["clips"].unique())
    clips = " or ".join(map(str, n))
    md = [
        f"SQNR intervals: 95 % percentile bootstrap over the {clips} clips each recipe sampled (the same "
        "prompts and noise for every recipe, one calibration). They show the clip-to-clip spread only: the "
        "calibration's own luck is not in them, and a bootstrap over so few clips is itself narrow, so a "
        f"figure on {clips} clips can lie further from a large study's than its interval says "
        "(docs/quality_axis.md measures how far, against 64 clips x 3 seeds; docs/quant_results.md has the "
        "study's intervals).",
        "",
    ]
    diffs = adjacent_differences(per)
    if not len(diffs):
        return md
    told = int(diffs["excludes_zero"].sum())
    cells = [
        f"{d.bits} {d.pair}: {d.estimate:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}]{'*' if d.excludes_zero else ''}"
        for d in diffs.itertuples()
    ]
    return md + [
        f"Neighbours in SQNR order within each bit width, paired over the same clips (dB, 95 %; * = the "
        f"interval excludes 0): {told} of {len(diffs)} neighbouring pairs are told apart on these clips.",
        "",
        *[f"- {c}" for c in cells],
        "",
    ]


def _pareto_section(ok: pd.DataFrame, q: tuple | None, senses: dict, out_dir: Path) -> list[str]:
    md = ["## Pareto fronts", ""]
    pairs = [("area_mm2", "energy_j", "energy vs area")]
    if q:
        pairs = [
            ("latency_s", q[0], "quality vs latency"),
            ("energy_j", q[0], "quality vs energy"),
            ("area_mm2", "energy_j", "energy vs area"),
            ("storage_bytes", q[0], "storage vs quality"),
        ]
    for x, y, title in pairs:
        if ok[[x, y]].dropna().empty:
            continue
        name = f"pareto_{title.replace(' vs ', '_vs_').replace(' ', '_')}.png"
        plots.pareto_plot(
            ok, x, y, senses, out_dir / name, f"{title} (black: Pareto front)", logx=x in ("storage_bytes",)
        )
        md += [f"### {title}", "", f"![{title}]({name})", ""]
    return md


def _static_vs_dynamic_section(ok: pd.DataFrame, out_dir: Path) -> list[str]:
    md = ["## Static vs dynamic at equal hardware", ""]
    ratios = static_vs_dynamic(ok)
    if not len(ratios):
        return md + ["No dynamic and static recipes at the same bit-widths in these results.", ""]
    plots.ratio_boxes(
        ratios, out_dir / "static_vs_dynamic.png", "dynamic (per-token) over static recipes, same chip and bit-widths"
    )
    g = ratios.groupby(["versus", "metric"], sort=False)["ratio"]
    summ = g.median().unstack("metric")
    summ = pd.DataFrame(
        {
            "static recipe": summ.index,
            "pairs": g.count().unstack("metric")["latency"].values,
            **{
                f"{m} median (min–max)": [
                    f"{summ.loc[v, m]:.3f} ({g.min()[v, m]:.3f}–{g.max()[v, m]:.3f})" for v in summ.index
                ]
                for m in ("latency", "energy")
            },
        }
    )
    return md + [
        "Each pair: the dynamic recipe and a static recipe of the same bit-widths on the very same "
        "hardware point (only chips with the dynamic-quant unit run dynamic recipes). Ratio > 1: "
        "dynamic costs more.",
        "",
        "![static vs dynamic](static_vs_dynamic.png)",
        "",
        _md_table(summ),
        "",
    ]


def _breakdown_section(ok: pd.DataFrame, axis_cols: list[str], out_dir: Path) -> list[str]:
    """Where the time and energy go, at each recipe's lowest-latency point."""
    md = ["## Where the time and energy go (each recipe's lowest-latency point)", ""]
    best = ok.loc[ok.groupby("recipe")["latency_s"].idxmin()].sort_values("latency_s", kind="stable")
    # which chip each bar is: chips numbered by their swept values, the table below names them
    hw = best[[c for c in best.columns if c.startswith("hw.") or c == "prefetch"]].astype(str).agg("|".join, axis=1)
    chip_no = {h: i + 1 for i, h in enumerate(dict.fromkeys(hw))}
    best = best.assign(chip=[f"chip {chip_no[h]}" for h in hw])
    labels = [f"{r}\n{c}" for r, c in zip(best["recipe"], best["chip"])]
    for prefix, fname, ylabel, title in (
        ("stall_s.", "breakdown_latency.png", "seconds per video", "latency breakdown (stall causes)"),
        ("energy_j.", "breakdown_energy.png", "joules per video", "energy breakdown"),
    ):
        if any(c.startswith(prefix) for c in best.columns):
            plots.stacked_bars(best, prefix, labels, out_dir / fname, title, ylabel)
            md += [f"![{title}]({fname})", ""]
    md += ["Bars are labelled with their chip; the table gives each chip's hardware values.", ""]
    cols = ["recipe", "chip"] + axis_cols + ["latency_s", "energy_j", "area_mm2", "storage_bytes", "swap_stall_s"]
    return md + [_md_table(best[[c for c in cols if c in best.columns]]), ""]


def _swap_section(ok: pd.DataFrame, out_dir: Path) -> list[str]:
    md = ["## Weight-swap stall across step groups K", ""]
    curves = swap_curves(ok)
    if not (len(curves) and curves["num_weight_sets"].nunique() > 1):
        return md + ["Fewer than two values of K among the smoothing recipes in these results.", ""]
    plots.swap_vs_k(
        curves,
        out_dir / "swap_vs_k.png",
        "swap stall, weight storage and energy vs K (medians over the hardware points a curve shares)",
    )
    return md + ["![swap stall vs K](swap_vs_k.png)", "", _md_table(curves), ""]


def _front_section(
    ok: pd.DataFrame, q: tuple | None, senses: dict, axis_cols: list[str], out_dir: Path, timing: bool = False
) -> list[str]:
    """The Pareto-optimal design points as a table (and pareto_points.csv)."""
    objectives = {c: s for c, s in senses.items() if c in ("latency_s", "energy_j", "area_mm2")}
    if q:
        objectives[q[0]] = q[1]
    front = ok[pareto_mask(ok, objectives)].sort_values("latency_s", kind="stable")
    md = [
        f"## Pareto-optimal design points ({', '.join(objectives)})",
        "",
        f"{len(front)} of {len(ok)} points are on the front"
        + (f"; the {MAX_TABLE_ROWS} fastest are listed" if len(front) > MAX_TABLE_ROWS else "")
        + ".",
        "",
    ]
    cols = ["recipe"] + axis_cols + ["latency_s", "energy_j", "area_mm2", "storage_bytes"] + ([q[0]] if q else [])
    md += [_md_table(front[cols].head(MAX_TABLE_ROWS)), ""]
    csv = front if timing else front.drop(columns=["sim_wall_s"], errors="ignore")
    write_text(out_dir / "pareto_points.csv", csv.to_csv(index=False))
    return md


def _failed_section(failed: pd.DataFrame) -> list[str]:
    if not len(failed):
        return []
    reasons = failed.groupby("error").size().reset_index(name="rows").sort_values("rows", ascending=False)
    return ["## Hardware points that failed validation", "", _md_table(reasons.head(10)), ""]
