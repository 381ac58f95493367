"""The paper's comparison on the trained shapes model: float vs dynamic vs naive static vs ASQ vs
TSQ+TSW vs K step groups, at W8A8, W6A6 and W4A8, on a fixed prompt set and fixed seeds.

Why on this model: on random weights every recipe only changes numbers; here the video metrics
(``shapes.videometrics``) say whether the clips still follow their prompts. Every recipe
samples the same prompts from the same noise as the float model (paired SQNR / PSNR); calibration
uses other prompts (held out) with real caption features.

    python -m shapes.study --out results/quant_comparison.csv --figure docs/quant_comparison.png

Rows are appended as they finish (resumable: recipes already in the CSV are skipped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from shapes import dataset, videometrics
from shapes.model import caption_features, generate, load_shapes_model, shapes_workload
from workloads.io import atomic_path
from workloads.recipes import get_recipe

BITS = ("w8a8", "w6a6", "w4a8")
SCHEMES = ("dynamic", "static", "asq", "tsq-tsw", "groups4", "groups4-cal")


def default_recipes() -> list[str]:
    return ["fp16"] + [f"{s}-{b}" for b in BITS for s in SCHEMES]


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


def run_study(
    recipes: list[str],
    out_csv: Path,
    num_prompts: int = 16,
    seed: int = 0,
    calib_prompts: int = 8,
    backend: str = "fakequant",
    device: str = "cpu",
    num_steps: int | None = None,
) -> pd.DataFrame:
    """Evaluate each recipe on the shapes model (same prompts and noise for all) into ``out_csv``, one
    row per recipe, resuming from the rows already there. One piece: the float reference, the
    calibration and the classifier are built once and shared by every recipe's evaluation."""
    from quantmodel.eval import quality

    w = shapes_workload()
    if num_steps:
        import dataclasses

        w = dataclasses.replace(w, num_steps=num_steps)
    model, enc = load_shapes_model(device)
    # calibration and artifact building run on the CPU (the quantizer keeps its tensors there)
    model_cpu = model if device == "cpu" else load_shapes_model("cpu")[0]
    clf = videometrics.load_classifier()
    labels = dataset.prompt_set(num_prompts, seed=seed)
    prompts = dataset.captions(labels)
    done = pd.read_csv(out_csv) if out_csv.is_file() else pd.DataFrame()
    done_names = set(done["recipe"]) if len(done) else set()
    with tempfile.TemporaryDirectory() as tmp:
        # calibration prompts: another seed's prompt set, as real caption features
        cal_labels = dataset.prompt_set(calib_prompts, seed=seed + 101)
        feat_file = Path(tmp) / "calib_y.safetensors"
        from safetensors.torch import save_file

        save_file({"y": caption_features(enc, dataset.captions(cal_labels)).cpu().contiguous()}, str(feat_file))
        stats = None
        t0 = time.time()
        ref = generate(model, enc, prompts, seed=seed, num_steps=w.num_steps).cpu()
        float_s = time.time() - t0
        from tqdm import tqdm

        for name in tqdm(recipes, desc="recipes", file=sys.stderr):
            recipe = get_recipe(name)
            if name in done_names:
                continue
            t0 = time.time()
            if recipe.quantized:
                if stats is None and recipe.scheme != "dynamic":
                    stats = quality.get_stats(
                        model_cpu, w, None, num_prompts=calib_prompts, seed=seed + 7, text_features=str(feat_file)
                    )
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
                "seed": seed,
                "eval_s": (time.time() - t0) if recipe.quantized else float_s,
            }
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            out_csv.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out_csv) as tmp_csv:
                done.to_csv(tmp_csv, index=False)
    return done


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    fp = df[df["recipe"] == "fp16"]
    q = df[df["recipe"] != "fp16"]
    schemes = list(dict.fromkeys(q["recipe"].str.rsplit("-", n=1).str[0]))
    bits = list(dict.fromkeys(q["recipe"].str.rsplit("-", n=1).str[1]))
    width = 0.8 / max(1, len(schemes))
    for ax, col, title in (
        (axes[0], "sqnr_db", "SQNR vs float sample (dB)"),
        (axes[1], "acc_mean", "semantic accuracy (mean of 5)"),
        (axes[2], "fd", "Frechet distance to real (lower better)"),
    ):
        for i, s in enumerate(schemes):
            vals = [q[(q["recipe"] == f"{s}-{b}")][col].mean() for b in bits]
            ax.bar([j + (i - (len(schemes) - 1) / 2) * width for j in range(len(bits))], vals, width, label=s)
        if col != "sqnr_db" and len(fp):
            ax.axhline(float(fp[col].iloc[0]), color="k", ls="--", lw=1, label="float")
        if col == "fd" and len(fp):
            ax.axhline(float(fp["fd_real_floor"].iloc[0]), color="gray", ls=":", lw=1, label="real-vs-real")
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels([b.upper() for b in bits])
        ax.set_title(title, fontsize=10)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("stdit-shapes: quantization recipes (fake-quant, same prompts and noise)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


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
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="fakequant", choices=("fakequant", "emulator"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--grid", type=Path, default=None, help="also write a PNG grid of float samples")
    a = p.parse_args(argv)
    if a.grid:
        sample_grid(a.grid, device=a.device)
    df = run_study(
        a.recipes or default_recipes(), a.out, a.prompts, a.seed, backend=a.backend, device=a.device, num_steps=a.steps
    )
    plot(df, a.figure)
    cols = ["recipe", "sqnr_db", "psnr_db", "acc_mean", "acc_all", "fd", "tc_jerk_px"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
