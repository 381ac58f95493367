"""Video-quality metrics for the shapes model, and the small video classifier they rely on.

Three questions are asked of a (quantized) model's clips, each with its own metric:

* **Fidelity** (paired): how far does a quantized model's clip drift from the float model's clip
  generated from the same noise and prompt? ``sqnr_db`` / ``psnr_db``. Why: it isolates the error
  that quantization adds, with no judge in between; it is what the quantization papers report as
  output error, and it is cheap and exact. It does not say whether the drift matters to a viewer.
* **Semantic adherence** (the CLIP-score analogue): does the clip show what the prompt asked for?
  ``semantic_accuracy``: a small 3D-conv classifier, trained on the generator's real clips, predicts
  each attribute (shape, colour, direction, speed, background); the score is its accuracy against
  the prompt's labels. Why: CLIP similarity is the usual text-video score; here the attributes are
  discrete and known, so accuracy per attribute is sharper and reads directly (chance: 1/4, 1/4,
  1/4, 1/2, 1/3). A drifted clip can keep high SQNR loss yet still follow its prompt, or not.
* **Distribution quality** (the FVD analogue): ``frechet_distance`` between the classifier's
  penultimate features of generated clips and of real clips of the same prompts. Why: FVD is the
  Frechet distance in an I3D feature space; the classifier is our in-domain I3D. With few clips the
  estimate is biased upwards, so ``evaluate`` also reports the real-vs-real distance at the same
  sample size as the floor. Plus ``temporal_consistency``: jitter of the shape's centroid path
  (second difference, px) and the frame-to-frame change of its area; real clips move on straight
  lines at constant speed and size, so both are ~0 for them. Why: FVD mixes appearance and motion;
  flicker and wobble are the typical failure of quantized video models and deserve a figure of
  their own.

The classifier (~60k parameters) ships as ``assets/shapes-classifier.safetensors`` (float16); train
it again with ``python -m shapes.videometrics train``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shapes import dataset
from workloads.io import atomic_path

ASSETS = Path(__file__).with_name("assets")
CLASSIFIER_FILE = ASSETS / "shapes-classifier.safetensors"
FEATURE_DIM = 32
CHANCE = {k: 1.0 / len(v) for k, v in dataset.ATTRIBUTES.items()}


# ---- the classifier --------------------------------------------------------------------------
class ShapesClassifier(nn.Module):
    """Tiny 3D CNN: clip ``[B, 3, T, H, W]`` in [-1, 1] -> features ``[B, 32]`` and one logit head
    per attribute. Temporal kernels see motion (direction, speed); pooling is global."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv3d(3, w, 3, padding=1),
            nn.GELU(),  # [B, w, 16, 32, 32]
            nn.Conv3d(w, 2 * w, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),  # [B, 2w, 16, 16, 16]
            nn.Conv3d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.GELU(),  # [B, 2w, 8, 8, 8]
            nn.Conv3d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.GELU(),  # [B, 4w, 4, 4, 4]
        )
        self.feature = nn.Linear(4 * w, FEATURE_DIM)
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, len(v)) for k, v in dataset.ATTRIBUTES.items()})

    def features(self, video: torch.Tensor) -> torch.Tensor:  # -> [B, 32]
        h = self.net(video).mean(dim=(2, 3, 4))  # [B, 4w]
        return torch.nn.functional.gelu(self.feature(h))

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(video)
        return {k: head(f) for k, head in self.heads.items()}


def _augment(video: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise and contrast jitter, so the judge also reads imperfect generated clips."""
    b = video.shape[0]
    dev = video.device
    sigma = torch.rand(b, 1, 1, 1, 1, generator=g, device=dev) * 0.15
    gain = 1 + (torch.rand(b, 1, 1, 1, 1, generator=g, device=dev) - 0.5) * 0.3
    return (video * gain + sigma * torch.randn(video.shape, generator=g, device=dev)).clamp(-1.2, 1.2)


def train_classifier(
    steps: int = 600, batch: int = 48, lr: float = 2e-3, seed: int = 0, device: str = "cpu", progress: bool = True
) -> tuple[ShapesClassifier, dict]:
    dev = torch.device(device)
    torch.manual_seed(seed)
    clf = ShapesClassifier().to(dev).train()
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator(device=dev).manual_seed(seed)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="classifier", unit="step", file=sys.stderr, mininterval=5.0)
    t0 = time.time()
    for _ in it:
        with torch.no_grad():
            video, labels = dataset.sample_batch(batch, g, device=dev)
            video = _augment(video, g)
        logits = clf(video)
        loss = sum(nn.functional.cross_entropy(logits[k], labels[k]) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return clf.eval(), {"steps": steps, "batch": batch, "wall_s": time.time() - t0, "final_loss": float(loss.detach())}


def save_classifier(clf: ShapesClassifier, path: Path = CLASSIFIER_FILE) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.to(torch.float16).contiguous().cpu() for k, v in clf.state_dict().items()}, str(tmp))


def load_classifier(device: str | torch.device = "cpu", path: Path = CLASSIFIER_FILE) -> ShapesClassifier:
    from safetensors.torch import load_file

    from workloads.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError("classifier", str(path), "an existing safetensors file")
    clf = ShapesClassifier()
    clf.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return clf.to(device).eval()


@torch.no_grad()
def classify(clf: ShapesClassifier, video: torch.Tensor, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Predicted label index per attribute, ``{attr: long [B]}``."""
    outs = [clf(video[i : i + chunk].clamp(-1, 1)) for i in range(0, len(video), chunk)]
    return {k: torch.cat([o[k] for o in outs]).argmax(dim=1) for k in dataset.ATTRIBUTES}


@torch.no_grad()
def features(clf: ShapesClassifier, video: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Penultimate features ``[B, 32]`` (float64) for the Frechet distance."""
    return torch.cat([clf.features(video[i : i + chunk].clamp(-1, 1)) for i in range(0, len(video), chunk)]).double()


# ---- metrics ---------------------------------------------------------------------------------
def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio over the whole set: 10 log10(sum ref^2 / sum err^2)."""
    ref = reference.double()
    err = (test.double() - ref).pow(2).sum()
    if err == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / err))


def psnr_db(reference: torch.Tensor, test: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean over clips of 20 log10(range / RMSE), on clips clamped to [-1, 1] (what is shown)."""
    ref, tst = reference.clamp(-1, 1).double(), test.clamp(-1, 1).double()
    mse = (tst - ref).pow(2).flatten(1).mean(dim=1)  # [B]
    if bool((mse == 0).any()):
        return float("inf")
    psnr = 20 * np.log10(data_range) - 10 * torch.log10(mse)
    return float(psnr.mean())


def semantic_accuracy(clf: ShapesClassifier, video: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy per attribute, their mean (``mean``) and the share of clips with all five right
    (``all``)."""
    pred = classify(clf, video)
    hits = {k: (pred[k].cpu() == labels[k].cpu()) for k in dataset.ATTRIBUTES}
    out = {k: float(v.float().mean()) for k, v in hits.items()}
    out["mean"] = float(np.mean([out[k] for k in dataset.ATTRIBUTES]))
    out["all"] = float(torch.stack(list(hits.values())).all(dim=0).float().mean())
    return out


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2), covariance via eigh (float64)."""
    a, b = feat_a.double(), feat_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    ea, va = torch.linalg.eigh(ca)
    sqrt_a = va @ torch.diag(ea.clamp(min=0).sqrt()) @ va.T
    mid = torch.linalg.eigvalsh(sqrt_a @ cb @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + ca.trace() + cb.trace() - 2 * mid)


def temporal_consistency(video: torch.Tensor, threshold: float = 0.3) -> dict[str, float]:
    """Wobble of the shape's path and size across frames (real clips: ~0 for both).

    The background colour of each clip is the median of its border pixels over all frames. Each
    pixel's foreground mass is its largest channel difference from that colour, less ``threshold``
    (in [-1, 1] units, so faint noise weighs nothing), clipped at 0; soft mass keeps the sub-pixel
    motion of anti-aliased edges. ``jerk_px``: mean |second difference| of the mass centroid,
    pixels per frame^2. ``area_change``: mean |relative change| of the total mass between frames.
    ``empty_frames``: share of frames with no mass at all (counted, excluded from the two).
    """
    v = video.clamp(-1, 1).double()  # [B, 3, T, H, W]
    b, _, t, h, w = v.shape
    border = torch.cat([v[..., 0, :], v[..., -1, :], v[..., :, 0], v[..., :, -1]], dim=-1)
    bg = border.reshape(b, 3, -1).median(dim=2).values  # [B, 3]
    fg = ((v - bg.view(b, 3, 1, 1, 1)).abs().amax(dim=1) - threshold).clamp(min=0)  # [B, T, H, W]
    area = fg.sum(dim=(2, 3))  # [B, T]
    ys = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
    ok = area > 1e-6
    safe = torch.where(ok, area, torch.ones_like(area))
    cy, cx = (fg * ys).sum(dim=(2, 3)) / safe, (fg * xs).sum(dim=(2, 3)) / safe  # [B, T]
    ok2 = ok[:, 2:] & ok[:, 1:-1] & ok[:, :-2]
    jerk = torch.sqrt((cx[:, 2:] - 2 * cx[:, 1:-1] + cx[:, :-2]) ** 2 + (cy[:, 2:] - 2 * cy[:, 1:-1] + cy[:, :-2]) ** 2)
    ok1 = ok[:, 1:] & ok[:, :-1]
    darea = (area[:, 1:] - area[:, :-1]).abs() / safe[:, :-1]
    nan = float("nan")
    return {
        "jerk_px": float(jerk[ok2].mean()) if ok2.any() else nan,
        "area_change": float(darea[ok1].mean()) if ok1.any() else nan,
        "empty_frames": float((~ok).double().mean()),
    }


def real_clips(labels: dict[str, torch.Tensor], seed: int = 1) -> torch.Tensor:
    """Real clips of the given labels (positions drawn from ``seed``): the FD reference set."""
    return dataset.render(labels, torch.Generator().manual_seed(seed))


def evaluate(
    video: torch.Tensor,
    labels: dict[str, torch.Tensor],
    clf: ShapesClassifier,
    reference: torch.Tensor | None = None,
    real_repeats: int = 4,
    seed: int = 1,
) -> dict[str, float]:
    """Every metric for one set of generated clips.

    ``reference``: the float model's clips from the same noise (for SQNR/PSNR). FD compares with
    ``real_repeats`` real clips per prompt; ``fd_real_floor`` is the FD of another real set of the
    generated set's size against the same reference (the value a perfect generator would get).
    """
    n = len(video)
    rep = {k: v.repeat(real_repeats) for k, v in labels.items()}
    real_feat = features(clf, real_clips(rep, seed))
    gen_feat = features(clf, video)
    floor_feat = features(clf, real_clips(labels, seed + 1000))
    out = {f"acc_{k}": v for k, v in semantic_accuracy(clf, video, labels).items()}
    out["fd"] = frechet_distance(gen_feat, real_feat)
    out["fd_real_floor"] = frechet_distance(floor_feat, real_feat)
    out.update({f"tc_{k}": v for k, v in temporal_consistency(video).items()})
    if reference is not None:
        out["sqnr_db"] = sqnr_db(reference, video)
        out["psnr_db"] = psnr_db(reference, video)
    out["clips"] = float(n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shapes.videometrics")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the attribute classifier and save it to assets/")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=48)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", type=Path, default=CLASSIFIER_FILE)
    e = sub.add_parser("check", help="accuracy of the shipped classifier on fresh real clips")
    e.add_argument("--clips", type=int, default=512)
    e.add_argument("--seed", type=int, default=12345)
    c = sub.add_parser("sample-check", help="semantic accuracy of the float model's samples")
    c.add_argument("--model-dir", type=Path, default=ASSETS)
    c.add_argument("--classifier", type=Path, default=CLASSIFIER_FILE)
    c.add_argument("--prompts", type=int, default=32)
    c.add_argument("--steps", type=int, nargs="+", default=[25])
    c.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    c.add_argument("--clip", choices=("both", "on", "off"), default="both")
    c.add_argument("--device", default="cpu")
    c.add_argument("--save", type=Path, default=None, help="save the clips (safetensors)")
    a = p.parse_args(argv)
    if a.cmd == "sample-check":
        return _sample_check(a)
    if a.cmd == "train":
        clf, info = train_classifier(a.steps, a.batch, seed=a.seed, device=a.device)
        save_classifier(clf, a.out)
        clf = clf.cpu()
    else:
        clf, info = load_classifier(), {}
    g = torch.Generator().manual_seed(getattr(a, "clips", 0) and a.seed or 12345)
    video, labels = dataset.sample_batch(getattr(a, "clips", 512), g)
    info["real_accuracy"] = semantic_accuracy(clf, video, labels)
    info["real_tc"] = temporal_consistency(video)
    print(json.dumps(info))
    return 0


def _sample_check(a: argparse.Namespace) -> int:
    from shapes.model import generate, load_shapes_model

    model, enc = load_shapes_model(
        a.device, a.model_dir / "stdit-shapes.safetensors", a.model_dir / "stdit-shapes-captions.safetensors"
    )
    clf = load_classifier(a.device, a.classifier)
    labels = dataset.prompt_set(a.prompts, seed=0)
    prompts = dataset.captions(labels)
    saved = {}
    for steps in a.steps:
        for cfg in a.cfg:
            for clip in {"both": (True, False), "on": (True,), "off": (False,)}[a.clip]:
                t0 = time.time()
                video = generate(model, enc, prompts, seed=0, num_steps=steps, cfg_scale=cfg, clip=clip)
                dt = time.time() - t0
                res = evaluate(video.cpu(), labels, clf.cpu())
                clf.to(a.device)
                print(
                    json.dumps(
                        {
                            "steps": steps,
                            "cfg": cfg,
                            "clip": clip,
                            "gen_s": round(dt, 2),
                            **{k: round(v, 4) for k, v in res.items()},
                        }
                    ),
                    flush=True,
                )
                saved[f"s{steps}_cfg{cfg}_clip{int(clip)}"] = dataset.to_uint8(video.cpu())
    if a.save:
        from safetensors.torch import save_file

        save_file(saved, str(a.save))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
