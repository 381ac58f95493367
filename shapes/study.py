"""The paper's comparison on the trained shapes model: float vs dynamic vs naive static vs ASQ vs
TSQ+TSW vs K step groups (and any recipe named), at W8A8, W6A6 and W4A8, with intervals.

Why on this model: on random weights every recipe only changes numbers; here the video metrics
(``shapes.videometrics``) say whether the clips still follow their prompts.

Design (what makes the numbers trustworthy):

* one fixed, balanced set of evaluation prompts (``--prompts``, default 64) and several seeds
  (``--seeds``, default 0 1 2); each seed draws its own evaluation noise AND its own calibration
  prompts and calibration noise, so the seed-to-seed spread includes calibration luck;
* calibration captions are drawn from the captions NOT in the evaluation set (asserted);
* calibration samples the same trajectory as evaluation: x0 clipped to [-1, 1]
  (``shapes.model.clip_denoised``, passed to ``calibrate`` as ``wrap_model_fn``);
* every recipe samples the same prompts from the same noise as the float model of that seed, so
  SQNR / PSNR and every difference between recipes are paired per clip;
* per-clip metrics (signal and error energy, PSNR, per-attribute correctness) go to a second CSV
  beside the per-(recipe, seed) CSV, so ``shapes.intervals`` can recompute every interval;
* semantic accuracy and Frechet distance get a noise floor: the float model against itself across
  seeds.

    python -m shapes.study --out results/quant_comparison.csv --figure docs/quant_comparison.png

Rows are appended as they finish (resumable: (recipe, seed) pairs already in both files are skipped).
``--tables`` prints the markdown tables (intervals, paired differences, noise floors) of the files.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from shapes import dataset, intervals, videometrics
from shapes.model import caption_features, clip_denoised, generate, load_shapes_model, shapes_workload
from workloads.io import atomic_path
from workloads.recipes import get_recipe

BITS = ("w8a8", "w6a6", "w4a8")
SCHEMES = ("dynamic", "vidit-q", "static", "asq", "tsq", "tsq-tsw", "groups4", "groups4-cal", "groups4-tsq")
SEEDS = (0, 1, 2)
EVAL_PROMPT_SEED = 0  # the evaluation prompt set is fixed; seeds vary the noise and the calibration
EVAL_POOL = 64  # the evaluation set's size (--prompts); shapes.trained draws the sweep's prompts from it


def default_recipes() -> list[str]:
    """fp16 and every scheme at every bit width, as far as this version's recipe presets know them
    (``tsq``, ``groups4-tsq`` and ``vidit-q`` are recent)."""
    from workloads.errors import ConfigError

    def known(name: str) -> bool:
        try:
            get_recipe(name)
        except ConfigError:
            return False
        return True

    return ["fp16"] + [r for b in BITS for s in SCHEMES if known(r := f"{s}-{b}")]


def clips_path(out_csv: Path) -> Path:
    """The per-clip file beside the per-(recipe, seed) CSV."""
    return out_csv.with_name(out_csv.stem + "_clips.csv")


def evaluation_labels(num_prompts: int) -> dict[str, torch.Tensor]:
    return dataset.prompt_set(num_prompts, seed=EVAL_PROMPT_SEED)


def calibration_labels(num_prompts: int, seed: int, exclude: list[str]) -> dict[str, torch.Tensor]:
    """``num_prompts`` distinct captions drawn with ``seed`` from every caption the vocabularies
    allow except ``exclude`` (the evaluation captions): held out by construction."""
    banned = set(exclude)
    combos = [
        c
        for c in itertools.product(*(range(len(v)) for v in dataset.ATTRIBUTES.values()))
        if dataset.caption({k: dataset.ATTRIBUTES[k][i] for k, i in zip(dataset.ATTRIBUTES, c)}) not in banned
    ]
    if num_prompts > len(combos):
        raise ValueError(f"calibration prompts: {num_prompts} > {len(combos)} captions outside the evaluation set")
    order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(seed))[:num_prompts]
    picked = torch.tensor([combos[i] for i in order.tolist()], dtype=torch.long)  # [n, 5]
    labels = {k: picked[:, j] for j, k in enumerate(dataset.ATTRIBUTES)}
    assert not banned & set(dataset.captions(labels)), "calibration captions overlap the evaluation set"
    return labels


def clip_rows(video: torch.Tensor, ref: torch.Tensor, labels: dict, clf) -> list[dict]:
    """Per-clip metrics of ``video`` [B, 3, T, H, W] against the float clips ``ref`` of the same
    noise: signal and error energy (SQNR of any subset = 10 log10 of their sums' ratio), PSNR of the
    clip clamped to [-1, 1] (range 2), and whether the classifier reads each attribute right."""
    r, v = ref.double(), video.double()
    ref_e = r.pow(2).flatten(1).sum(1)  # [B]
    err_e = (v - r).pow(2).flatten(1).sum(1)
    mse = (v.clamp(-1, 1) - r.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    psnr = 20 * torch.log10(torch.tensor(2.0, dtype=torch.float64)) - 10 * torch.log10(mse)
    pred = videometrics.classify(clf, video)
    return [
        {
            "clip": i,
            "prompt": dataset.caption(dataset.label_names(labels, i)),
            "ref_energy": float(ref_e[i]),
            "err_energy": float(err_e[i]),
            "psnr_db": float(psnr[i]),
            **{f"acc_{k}": int(pred[k][i].cpu() == labels[k][i]) for k in dataset.ATTRIBUTES},
        }
        for i in range(len(video))
    ]


def _params_on(runner, dev: torch.device) -> None:
    """FakeQuantModel keeps its dequantized weights on the CPU; move each layer's cached entry to
    ``dev`` on first use, so the fake-quant study also runs on a GPU."""
    get = runner.params

    def params(name: str) -> dict:
        p = get(name)
        for k, v in p.items():
            if isinstance(v, torch.Tensor) and v.device != dev:
                p[k] = v.to(dev)
        return p

    runner.params = params


class _Files:
    """The two result files, resumable: a (recipe, seed) counts as done only when both hold it
    (per-clip rows of an unfinished pair are dropped at load)."""

    def __init__(self, out_csv: Path):
        self.out, self.clips_out = out_csv, clips_path(out_csv)
        self.rows = pd.read_csv(out_csv) if out_csv.is_file() else pd.DataFrame()
        self.clips = pd.read_csv(self.clips_out) if self.clips_out.is_file() else pd.DataFrame()
        if len(self.rows) and "seed" not in self.rows:
            self.rows = pd.DataFrame()  # a file of the old one-seed format: start over
        # a pair counts only when both files hold it; drop the other file's rows of any other pair
        both = self._pairs(self.rows) & self._pairs(self.clips)
        self.rows = self.rows[self._has(self.rows, both)] if len(self.rows) else self.rows
        self.clips = self.clips[self._has(self.clips, both)] if len(self.clips) else self.clips

    @staticmethod
    def _pairs(df: pd.DataFrame) -> set[tuple[str, int]]:
        return set(zip(df["recipe"], df["seed"].astype(int))) if len(df) else set()

    @staticmethod
    def _has(df: pd.DataFrame, pairs: set) -> list[bool]:
        return [(r, int(s)) in pairs for r, s in zip(df["recipe"], df["seed"])]

    def done(self) -> set[tuple[str, int]]:
        return self._pairs(self.rows)

    def add(self, row: dict, clip_rows: list[dict]) -> None:
        self.clips = pd.concat([self.clips, pd.DataFrame(clip_rows)], ignore_index=True)
        self.rows = pd.concat([self.rows, pd.DataFrame([row])], ignore_index=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.clips_out) as tmp:
            self.clips.to_csv(tmp, index=False)
        with atomic_path(self.out) as tmp:
            self.rows.to_csv(tmp, index=False)


def _calibration_file(enc, tmp: str, num_prompts: int, seed: int, eval_captions: list[str]) -> str:
    from safetensors.torch import save_file

    cal = dataset.captions(calibration_labels(num_prompts, seed + 101, eval_captions))
    path = str(Path(tmp) / f"calib_y_{seed}.safetensors")
    save_file({"y": caption_features(enc, cal).cpu().contiguous()}, path)
    return path


def _calibrate(model_cpu, w, feat_file, calib_prompts: int, seed: int):
    """A seed's calibration statistics, as both the comparison and the sensitivity run take them: the
    seed's held-out captions, its own noise, on the same x0-clipped trajectory as evaluation."""
    from quantmodel.eval import quality

    return quality.get_stats(
        model_cpu,
        w,
        None,
        num_prompts=calib_prompts,
        seed=seed + 7,
        text_features=feat_file,
        wrap_model_fn=clip_denoised,
    )


def run_study(
    recipes: list[str],
    out_csv: Path,
    num_prompts: int = EVAL_POOL,
    seeds: tuple[int, ...] = SEEDS,
    calib_prompts: int = 8,
    backend: str = "fakequant",
    device: str = "cpu",
    num_steps: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate each recipe at each seed on the shapes model into ``out_csv`` (one row per recipe
    and seed) and its per-clip file, resuming from the pairs already there. One piece: the float
    reference and the calibration of a seed, and the classifier, are shared by every recipe."""
    from quantmodel.eval import quality

    w = shapes_workload()
    if num_steps:
        import dataclasses

        w = dataclasses.replace(w, num_steps=num_steps)
    model, enc = load_shapes_model(device)
    # calibration and artifact building run on the CPU (the quantizer keeps its tensors there)
    model_cpu = model if device == "cpu" else load_shapes_model("cpu")[0]
    clf = videometrics.load_classifier()
    labels = evaluation_labels(num_prompts)
    prompts = dataset.captions(labels)
    files = _Files(out_csv)
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            todo = [r for r in recipes if (r, seed) not in files.done()]
            if not todo:
                continue
            feat_file = _calibration_file(enc, tmp, calib_prompts, seed, prompts)
            stats = None
            t0 = time.time()
            ref = generate(model, enc, prompts, seed=seed, num_steps=w.num_steps).cpu()
            float_s = time.time() - t0
            for name in tqdm(todo, desc=f"seed {seed}", file=sys.stderr):
                recipe = get_recipe(name)
                t0 = time.time()
                if recipe.quantized:
                    if stats is None and (recipe.scheme != "dynamic" or recipe.smoothing):  # channel balancing
                        stats = _calibrate(model_cpu, w, feat_file, calib_prompts, seed)
                    art = quality.quantize_model(model_cpu, w, recipe, stats)
                    fn, runner = quality.recipe_model_fn(model, w, recipe, backend=backend, artifact=art, device=device)
                    if backend == "fakequant" and device != "cpu":
                        _params_on(runner, torch.device(device))
                    video = generate(model, enc, prompts, seed=seed, num_steps=w.num_steps, model_fn=fn).cpu()
                    storage, sets = art.weight_storage_bytes(), art.num_weight_sets
                else:
                    video, storage, sets = ref, quality.float_weight_bytes(model), 0
                res = videometrics.evaluate(video, labels, clf, reference=ref)
                row = {
                    "recipe": name,
                    "seed": seed,
                    "scheme": recipe.scheme,
                    "w_bits": recipe.w_bits,
                    "a_bits": recipe.a_bits,
                    "num_groups": getattr(recipe, "num_groups", 0),
                    "group_split": getattr(recipe, "group_split", ""),
                    "backend": backend if recipe.quantized else "float",
                    **res,
                    "weight_storage_bytes": storage,
                    "num_weight_sets": sets,
                    "num_steps": w.num_steps,
                    "cfg_scale": w.cfg_scale,
                    "calib_prompts": calib_prompts,
                    "eval_s": (time.time() - t0) if recipe.quantized else float_s,
                }
                per_clip = [{"recipe": name, "seed": seed, **c} for c in clip_rows(video, ref, labels, clf)]
                files.add(row, per_clip)
    return files.rows, files.clips


def sensitivity(
    recipes: list[str], num_prompts: int = 16, seed: int = 0, calib_prompts: int = 8, device: str = "cpu"
) -> pd.DataFrame:
    """Per-layer sensitivity: for each recipe, the final-sample SQNR (dB, vs the float model, same
    noise) with ONE linear layer quantized as the recipe says and every other layer left in float.
    Why this way round: a layer's own damage is read directly (the lower, the worse), and
    quantizing one layer is as cheap as leaving one out. Fake-quant, ``num_prompts`` evaluation
    prompts of the study's set, one seed (calibration as in the study)."""
    import dataclasses

    from quantmodel.eval import quality
    from quantmodel.quant.artifact import quantized_linears

    w = shapes_workload()
    model, enc = load_shapes_model(device)
    model_cpu = model if device == "cpu" else load_shapes_model("cpu")[0]
    prompts = dataset.captions(evaluation_labels(num_prompts))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        feat = _calibration_file(enc, tmp, calib_prompts, seed, dataset.captions(evaluation_labels(EVAL_POOL)))
        stats = _calibrate(model_cpu, w, feat, calib_prompts, seed)
        ref = generate(model, enc, prompts, seed=seed).cpu()
        from tqdm import tqdm

        for name in recipes:
            recipe = get_recipe(name)
            for layer in tqdm(quantized_linears(model_cpu, recipe), desc=name, file=sys.stderr):
                one = dataclasses.replace(recipe, layers=(layer,))
                art = quality.quantize_model(model_cpu, w, one, stats)
                fn, runner = quality.recipe_model_fn(model, w, one, backend="fakequant", artifact=art, device=device)
                if device != "cpu":
                    _params_on(runner, torch.device(device))
                video = generate(model, enc, prompts, seed=seed, model_fn=fn).cpu()
                rows.append(
                    {"recipe": name, "layer": layer, "sqnr_db": videometrics.sqnr_db(ref, video), "clips": num_prompts}
                )
    return pd.DataFrame(rows)


def _split(recipe: str) -> tuple[str, str]:
    """``asq-w8a8`` -> (``asq``, ``w8a8``); option suffixes stay with the scheme."""
    head, _, tail = recipe.rpartition("-")
    for b in BITS:
        if f"-{b}" in recipe:
            return recipe.replace(f"-{b}", ""), b
    return head, tail


def plot(rows: pd.DataFrame, clips: pd.DataFrame, path: Path) -> None:
    """Bars: SQNR and semantic accuracy with their 95 % bootstrap intervals, Frechet distance as the
    mean over seeds with the seeds' min-max; the float model's value and noise floor as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ci = intervals.recipe_intervals(clips)
    q = [r for r in dict.fromkeys(rows["recipe"]) if r != "fp16"]
    schemes = list(dict.fromkeys(_split(r)[0] for r in q))
    bits = [b for b in BITS if any(_split(r)[1] == b for r in q)]
    fp = rows[rows["recipe"] == "fp16"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    width = 0.8 / max(1, len(schemes))
    for ax, col, title in (
        (axes[0], "sqnr_db", "SQNR vs float sample (dB)"),
        (axes[1], "acc_mean", "semantic accuracy (mean of 5)"),
        (axes[2], "fd", "Frechet distance to real (lower better)"),
    ):
        for i, s in enumerate(schemes):
            xs, vals, err = [], [], [[], []]
            for j, b in enumerate(bits):
                r = f"{s}-{b}" if f"{s}-{b}" in q else None
                if r is None:
                    continue
                if col == "fd":
                    v = rows.loc[rows["recipe"] == r, "fd"]
                    est, lo, hi = v.mean(), v.min(), v.max()
                else:
                    c = ci[(ci["recipe"] == r) & (ci["metric"] == col)].iloc[0]
                    est, lo, hi = c["estimate"], c["lo"], c["hi"]
                xs.append(j + (i - (len(schemes) - 1) / 2) * width)
                vals.append(est)
                err[0].append(est - lo)
                err[1].append(hi - est)
            ax.bar(xs, vals, width, yerr=err, capsize=2, label=s, error_kw={"lw": 0.8})
        if col != "sqnr_db" and len(fp):
            v = fp[col]
            ax.axhline(float(v.mean()), color="k", ls="--", lw=1, label="float (mean of seeds)")
            ax.axhspan(float(v.min()), float(v.max()), color="k", alpha=0.12, label="float across seeds")
        if col == "fd" and len(fp):
            ax.axhline(float(fp["fd_real_floor"].mean()), color="gray", ls=":", lw=1, label="real-vs-real")
        if col == "acc_mean":
            ax.set_ylim(0.5, 1.0)
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels([b.upper() for b in bits])
        ax.set_title(title, fontsize=10)
    axes[1].legend(fontsize=6, ncol=2, loc="lower left")
    n, seeds = int(clips["clip"].max()) + 1, clips["seed"].nunique()
    fig.suptitle(
        f"stdit-shapes: quantization recipes (fake-quant; {n} prompts x {seeds} seeds; 95 % hierarchical bootstrap"
        " intervals; FD: min-max over seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


PAIRS = (  # (a, b, the question a - b answers)
    ("dynamic", "tsq-tsw", "dynamic over TSQ+TSW"),
    ("tsq-tsw", "asq", "TSQ+TSW over ASQ"),
    ("asq", "static", "ASQ over naive static"),
    ("tsq-tsw", "tsq", "per-step weights on top of per-step scales"),
    ("tsq", "asq", "per-step scales over ASQ"),
    ("groups4", "asq", "4 step groups over ASQ"),
    ("tsq-tsw", "groups4", "TSQ+TSW over 4 step groups"),
    ("groups4-tsq", "groups4", "4 scale groups on one weight set over 4 weight sets"),
    ("groups4-cal", "groups4", "calibrated over uniform group split"),
    ("dynamic", "vidit-q", "our dynamic over the ViDiT-Q baseline"),
    ("vidit-q", "tsq-tsw", "the ViDiT-Q baseline over TSQ+TSW"),
)


def tables(rows: pd.DataFrame, clips: pd.DataFrame) -> str:
    """Markdown: per-recipe estimates with 95 % intervals, paired differences, and the float
    model's noise floors for semantic accuracy and Frechet distance."""
    ci = intervals.recipe_intervals(clips)
    n, seeds = int(clips["clip"].max()) + 1, sorted(clips["seed"].unique())
    recipes = list(dict.fromkeys(rows["recipe"]))
    fp = rows[rows["recipe"] == "fp16"]
    fd_floor = intervals.seed_floor(rows, "fp16", "fd")
    acc_floor = intervals.seed_floor(rows, "fp16", "acc_mean")

    def cell(r: str, m: str, fmt: str) -> str:
        c = ci[(ci["recipe"] == r) & (ci["metric"] == m)]
        if not len(c):
            return "inf" if m in ("sqnr_db", "psnr_db") else "-"
        c = c.iloc[0]
        return f"{c['estimate']:{fmt}} [{c['lo']:{fmt}}, {c['hi']:{fmt}}]"

    out = [
        f"{n} evaluation prompts x {len(seeds)} seeds ({', '.join(map(str, seeds))}); 95 % intervals: two-level"
        f" percentile bootstrap (seeds, then clips within seed), {intervals.NUM_BOOT} replicates, bootstrap"
        f" seed {intervals.BOOT_SEED}. FD: mean over seeds [min, max over seeds].",
        "",
        "| recipe | SQNR dB | PSNR dB | sem. acc. (mean of 5) | all 5 right | FD | weight sets |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in recipes:
        v = rows.loc[rows["recipe"] == r]
        fd = f"{v['fd'].mean():.0f} [{v['fd'].min():.0f}, {v['fd'].max():.0f}]"
        out.append(
            f"| {r} | {cell(r, 'sqnr_db', '.1f')} | {cell(r, 'psnr_db', '.1f')} | {cell(r, 'acc_mean', '.3f')} |"
            f" {cell(r, 'acc_all', '.3f')} | {fd} | {int(v['num_weight_sets'].iloc[0])} |"
        )
    out += [
        "",
        f"Noise floor (float model against itself across seeds, largest difference): semantic accuracy"
        f" {acc_floor:.3f}, FD {fd_floor:.0f} (float FD {fp['fd'].min():.0f}-{fp['fd'].max():.0f}; real-vs-real"
        f" FD at {n} clips {fp['fd_real_floor'].mean():.0f}).",
        "",
        "Paired differences (a - b on the same clips and noise; 95 % interval; * = interval excludes 0):",
        "",
        "| a - b | bits | SQNR dB | sem. acc. | FD (mean over seeds) | question |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a, b, question in PAIRS:
        for bits in BITS:
            ra, rb = f"{a}-{bits}", f"{b}-{bits}"
            if ra not in recipes or rb not in recipes:
                continue
            d = {m: intervals.paired_difference(clips, ra, rb, m) for m in ("sqnr_db", "acc_mean")}
            fa = rows.loc[rows["recipe"] == ra].set_index("seed")["fd"]
            fb = rows.loc[rows["recipe"] == rb].set_index("seed")["fd"]
            dfd = float((fa - fb).mean())
            inside = " (inside floor)" if abs(dfd) <= fd_floor else ""
            cells = [
                f"{x['estimate']:+.{p}f} [{x['lo']:+.{p}f}, {x['hi']:+.{p}f}]{'*' if x['excludes_zero'] else ''}"
                for x, p in ((d["sqnr_db"], 2), (d["acc_mean"], 3))
            ]
            out.append(f"| {a} - {b} | {bits.upper()} | {cells[0]} | {cells[1]} | {dfd:+.0f}{inside} | {question} |")
    return "\n".join(out)


LABELS = {  # scheme -> how the summary tables name it, in the order they list them
    "static": "naive static",
    "asq": "ASQ",
    "groups4": "4 step groups, uniform split",
    "groups4-cal": "4 step groups, calibrated split",
    "groups4-tsq": "4 scale groups, one weight set (`groups4-tsq`)",
    "tsq": "TSQ (per-step scales, one weight set)",
    "tsq-tsw": "TSQ+TSW (per-step scales and weights)",
    "dynamic": "dynamic (symmetric per-token)",
    "vidit-q": "ViDiT-Q (asymmetric per-token, channel balancing, its mixed precision)",
}


def summary_tables(rows: pd.DataFrame, clips: pd.DataFrame) -> str:
    """Markdown for a reader who wants the comparison at a glance (the README, a closing note): one row
    per scheme, one column per bit width, for SQNR and semantic accuracy with their 95 % intervals and
    Frechet distance with the float model's noise floor; then the paired SQNR differences of
    :data:`PAIRS`. Every figure comes from the two files, as :func:`tables` computes them."""
    ci = intervals.recipe_intervals(clips)
    recipes = set(rows["recipe"])
    n, seeds = int(clips["clip"].max()) + 1, sorted(clips["seed"].unique())
    schemes = [s for s in LABELS if any(f"{s}-{b}" in recipes for b in BITS)]
    bits = [b for b in BITS if any(f"{s}-{b}" in recipes for s in schemes)]

    def cell(r: str, m: str, fmt: str) -> str:
        c = ci[(ci["recipe"] == r) & (ci["metric"] == m)]
        if not len(c):
            return "-"
        c = c.iloc[0]
        return f"{c['estimate']:{fmt}} [{c['lo']:{fmt}}, {c['hi']:{fmt}}]"

    def fd(r: str) -> str:
        v = rows.loc[rows["recipe"] == r, "fd"]
        return f"{v.mean():.0f} [{v.min():.0f}, {v.max():.0f}]" if len(v) else "-"

    head = " | ".join(b.upper() for b in bits)
    rule = "| --- " * (len(bits) + 1) + "|"

    def block(title: str, body) -> list[str]:
        out = [f"| {title} | {head} |", rule]
        for s in schemes:
            out.append(
                f"| {LABELS[s]} | "
                + " | ".join(body(f"{s}-{b}") if f"{s}-{b}" in recipes else "-" for b in bits)
                + " |"
            )
        return out

    sets = {
        s: sorted(
            {
                int(rows.loc[rows["recipe"] == f"{s}-{b}", "num_weight_sets"].iloc[0])
                for b in bits
                if f"{s}-{b}" in recipes
            }
        )
        for s in schemes
    }
    acc_fp = cell("fp16", "acc_mean", ".3f") if "fp16" in recipes else "-"
    fd_floor = intervals.seed_floor(rows, "fp16", "fd")
    acc_floor = intervals.seed_floor(rows, "fp16", "acc_mean")
    out = [
        f"{n} evaluation prompts x {len(seeds)} seeds (each seed its own noise and calibration); 95 % intervals:"
        f" two-level percentile bootstrap (seeds, then clips), {intervals.NUM_BOOT} replicates.",
        "",
        "SQNR of the final sample against the float model's (dB) and weight sets stored:",
        "",
    ]
    sq = block("SQNR dB", lambda r: cell(r, "sqnr_db", ".1f"))
    sq[0] += " weight sets |"
    sq[1] += " --- |"
    sq[2:] = [ln + f" {'/'.join(map(str, sets[s]))} |" for ln, s in zip(sq[2:], schemes)]
    out += sq
    out += [
        "",
        f"Semantic accuracy (mean of the 5 attributes the classifier reads; float model {acc_fp}, its"
        f" seed-to-seed noise floor {acc_floor:.3f}):",
        "",
        *block("semantic accuracy", lambda r: cell(r, "acc_mean", ".3f")),
        "",
        f"Frechet distance to real clips (mean over seeds [min, max]; float model {fd('fp16')}, its seed-to-seed"
        f" noise floor {fd_floor:.0f}; lower is closer to real clips):",
        "",
        *block("FD", fd),
        "",
        "Paired SQNR differences a - b (same clips, same noise; dB, 95 %; * = the interval excludes 0):",
        "",
        f"| a - b | {head} |",
        rule,
    ]
    for a, b, question in PAIRS:
        cells = []
        for bb in bits:
            ra, rb = f"{a}-{bb}", f"{b}-{bb}"
            if ra not in recipes or rb not in recipes:
                cells.append("-")
                continue
            d = intervals.paired_difference(clips, ra, rb, "sqnr_db")
            cells.append(f"{d['estimate']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]{'*' if d['excludes_zero'] else ''}")
        if any(c != "-" for c in cells):
            out.append(f"| {a} - {b} ({question}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def sensitivity_table(sens: pd.DataFrame, worst: int = 5) -> str:
    """Markdown: the ``worst`` layers of each recipe (lowest SQNR when quantized alone)."""
    out = ["| recipe | worst layers, quantized alone (final-sample SQNR dB) |", "| --- | --- |"]
    for r, g in sens.groupby("recipe", sort=False):
        g = g.nsmallest(worst, "sqnr_db")
        out.append(f"| {r} | " + ", ".join(f"{row.layer} {row.sqnr_db:.1f}" for row in g.itertuples()) + " |")
    return "\n".join(out)


def sample_grid(
    path: Path, num_prompts: int = 8, seed: int = 0, device: str = "cpu", frames: tuple[int, ...] = (0, 3, 6, 9, 12, 15)
) -> None:
    """A PNG grid of float-model samples (rows: prompts of the study's prompt set; columns: frames)
    with their captions and the classifier's reading of each clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, enc = load_shapes_model(device)
    labels = dataset.prompt_set(16, seed=seed)
    labels = {k: v[:num_prompts] for k, v in labels.items()}
    prompts = dataset.captions(labels)
    video = generate(model, enc, prompts, seed=seed).cpu()
    pred = videometrics.classify(videometrics.load_classifier(), video)
    fig, axes = plt.subplots(num_prompts, len(frames), figsize=(1.3 * len(frames), 1.55 * num_prompts))
    for i in range(num_prompts):
        read = dataset.caption(dataset.label_names(pred, i))
        for j, f in enumerate(frames):
            ax = axes[i, j]
            ax.imshow(dataset.to_uint8(video[i, :, f]).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_xlabel(f"frame {f}", fontsize=7)
                ax.xaxis.set_label_position("top")
        axes[i, 0].set_title(f"prompt: {prompts[i]}\nclassifier: {read}", fontsize=7, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shapes.study", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/quant_comparison.csv"))
    p.add_argument("--figure", type=Path, default=Path("docs/quant_comparison.png"))
    p.add_argument("--recipes", nargs="+", default=None)
    p.add_argument("--prompts", type=int, default=EVAL_POOL)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--calib-prompts", type=int, default=8)
    p.add_argument("--backend", default="fakequant", choices=("fakequant", "emulator"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--grid", type=Path, default=None, help="also write a PNG grid of float samples")
    p.add_argument("--tables", action="store_true", help="only print the markdown tables of --out")
    p.add_argument(
        "--summary", action="store_true", help="only print the at-a-glance tables of --out (scheme x bit width)"
    )
    p.add_argument(
        "--resolution",
        action="store_true",
        help="only print what k clips of one seed resolve against the whole study of --out (the sweep's quality axis)",
    )
    p.add_argument("--sensitivity", type=Path, default=None, help="write the per-layer sensitivity CSV here")
    p.add_argument("--sensitivity-prompts", type=int, default=16)
    a = p.parse_args(argv)
    if a.sensitivity:
        sens = sensitivity(a.recipes or default_recipes()[1:], a.sensitivity_prompts, a.seeds[0], device=a.device)
        with atomic_path(a.sensitivity) as tmp:
            sens.to_csv(tmp, index=False)
        print(sensitivity_table(sens))
        return 0
    if a.resolution:
        clips = pd.read_csv(clips_path(a.out))
        recipes = a.recipes or [r for r in dict.fromkeys(clips["recipe"]) if r != "fp16"]
        print(intervals.subset_resolution(clips, recipes).to_string(index=False))
        return 0
    if a.summary:
        print(summary_tables(pd.read_csv(a.out), pd.read_csv(clips_path(a.out))))
        return 0
    if a.tables:
        rows, clips = pd.read_csv(a.out), pd.read_csv(clips_path(a.out))
    else:
        if a.grid:
            sample_grid(a.grid, device=a.device)
        rows, clips = run_study(
            a.recipes or default_recipes(),
            a.out,
            a.prompts,
            tuple(a.seeds),
            a.calib_prompts,
            backend=a.backend,
            device=a.device,
            num_steps=a.steps,
        )
        plot(rows, clips, a.figure)
    print(tables(rows, clips))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
