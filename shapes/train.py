"""Train the shapes STDiT (and its caption encoder) with OpenSora v1.0's IDDPM objective.

Why: quantization quality is only meaningful on a model that has learned something. This trains the
project's own STDiT (``quantmodel.model.stdit``) on the procedural clips of ``shapes.dataset``, with the
IDDPM hybrid loss of ``quantmodel.model.samplers`` (MSE on eps + VB on the learned variance, 1000 linear-beta
steps) and caption dropout to the model's null caption ``y_embedding`` for classifier-free guidance,
as OpenSora does. Data are drawn on the fly on the training device from a seeded generator.

Offset noise (a per-clip, per-channel constant added to the training noise, std 0.1): the linear
schedule ends at alpha_bar = 4e-5, so x_T still carries the clip's mean colour with an SNR near 1
once averaged over 16k pixels, while the sampler's z does not; a model trained without it reads the
background colour from the noise instead of the caption (we saw exactly that: random backgrounds
even at guidance 1). Offset noise hides that leak during training (Guttenberg 2023, "Diffusion with
offset noise"; Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed").

Loss weighting: plain eps-MSE leaves the high-noise x0 prediction (where sampling decides where the
shape goes and how it moves) almost untrained; from ``snr_weight_start_step`` on, the MSE is weighted
by ``snr_weights`` (truncated SNR). That switch is what made direction and speed follow the caption
(docs/shapes_model.md has the before / after numbers).

The shipped weights come from two stages (one H100, 22 minutes of training in all; the defaults are
stage 1's settings):

    python -m shapes.train --device cuda --compile --fast-attention --state out/state.pt \
        --out /tmp/stage1
    python -m shapes.train --device cuda --compile --fast-attention --init-from /tmp/stage1 \
        --steps 9000 --lr 2e-4 --warmup-steps 200 --snr-weight-start-step 0 --time-budget-s 370 \
        --out shapes/assets

Stage 1 ran cut into three jobs by ``--time-budget-s`` (450 s, 400 s, rest), each resuming from
``--state``; the resumes round Adam's moments to bfloat16, so a run in one piece is equivalent but
not bit-identical. Stage 2 stopped on its time budget at step 8,331.

It also runs, slowly, on a CPU (``--device cpu`` and small ``--steps`` / ``--batch``).
Outputs (float16 safetensors, written via temp file + rename): ``stdit-shapes.safetensors`` (the EMA
weights in OpenSora's key layout, without the recomputed pos-embed buffers),
``stdit-shapes-captions.safetensors`` (the EMA caption encoder) and ``train_log.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.samplers import IDDPM
from shapes import dataset
from shapes.captions import CaptionEncoder, ids_from_labels
from shapes.model import RECOMPUTED, WORKLOAD, init_zero
from workloads.errors import ConfigError
from workloads.io import atomic_path, write_text
from workloads.presets import get_workload


@dataclass(frozen=True)
class TrainConfig:
    workload: str = WORKLOAD
    steps: int = 22000
    batch: int = 128
    lr: float = 6e-4
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05  # cosine decay floor
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # OpenSora's class_dropout_prob
    offset_noise: float = 0.1  # std of a per-clip, per-channel constant added to the noise
    ema_decay: float = 0.9995
    seed: int = 0
    time_budget_s: float = 0.0  # stop (and save) once training has run this long; 0 = no limit
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False
    log_every: int = 200
    init_from: str = ""  # a folder with stdit-shapes*.safetensors to start from (fine-tuning)
    # a training-state file (``save_state``): resumed from when it exists, (re)written at the end, so
    # one schedule can run as several time-limited jobs (the GPU machines here allow 10 min a call)
    state: str = ""
    # eps-MSE weight per sample: 0 = plain (OpenSora); > 0 = clamp(1/SNR(t), 1, cap), i.e. the x0
    # error at high noise ("truncated SNR", Salimans & Ho 2022), the x0 part capped at the cap
    snr_weight_cap: float = 1000.0
    snr_weight_start_step: int = 10085  # plain eps-MSE before this step (as the shipped run did)
    fast_attention: bool = False  # train with F.scaled_dot_product_attention (same weights)
    # init of the caption projection y_proj: "opensora" (normal std 0.02, as stdit.py) or "xavier"
    caption_proj_init: str = "opensora"

    def __post_init__(self) -> None:
        for f in ("steps", "batch", "log_every"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"train.{f}", v, "a positive integer")
        if (
            isinstance(self.snr_weight_start_step, bool)
            or not isinstance(self.snr_weight_start_step, int)
            or self.snr_weight_start_step < 0
        ):
            raise ConfigError("train.snr_weight_start_step", self.snr_weight_start_step, "an integer >= 0")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError("train.caption_dropout", self.caption_dropout, "a number in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("train.ema_decay", self.ema_decay, "a number in [0, 1)")
        if not self.lr > 0:
            raise ConfigError("train.lr", self.lr, "a positive number")
        if self.caption_proj_init not in ("opensora", "xavier"):
            raise ConfigError("train.caption_proj_init", self.caption_proj_init, "opensora, xavier")
        if not (self.snr_weight_cap == 0.0 or self.snr_weight_cap >= 1.0):
            raise ConfigError("train.snr_weight_cap", self.snr_weight_cap, "0 (off) or a number >= 1")


def snr_weights(alphas_cumprod, cap: float) -> torch.Tensor:
    """Per-timestep eps-MSE weights ``clamp(1/SNR(t), 1, cap)``: the "truncated SNR" weighting of
    Salimans & Ho 2022, i.e. max(x0-MSE, eps-MSE), with the x0 part capped at ``cap``.

    Why: eps-MSE is the x0 error times SNR(t), and SNR falls to 4e-5 at t = 999 on the linear
    schedule, so plain eps-MSE leaves the high-noise x0 prediction, E[clip | caption], untrained:
    the shipped model predicted the same static centred blob there for every direction and speed
    (docs/shapes_model.md), and sampling starts from exactly those predictions. A cap of 1000
    gives t >= ~830 the full x0 error at the scale of the low-noise eps error (the weight is 1
    where SNR >= 1, so the VB term keeps its balance with the MSE)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - ac) / ac).clamp(1.0, cap).float()  # [T]


def xavier_caption_proj(model: torch.nn.Module) -> None:
    """Re-initialise the caption projection ``y_embedder.y_proj`` with xavier-uniform weights.

    Why (a hypothesis, since refuted): with OpenSora's std-0.02 init both layers of y_proj start
    near zero, and a near-zero two-layer map learns its input directions one at a time, strongest
    gradient first (deep linear network dynamics, Saxe et al. 2014). On the first shipped model the
    shape, direction and speed words were almost collapsed after y_proj (pairwise cosine 0.72 /
    0.94 / 0.93) while colour and background were distinct. A xavier init did not help; the real
    cause was the loss weighting (``snr_weights``, docs/shapes_model.md). Kept as an option."""
    with torch.no_grad():
        for lin in (model.y_embedder.y_proj.fc1, model.y_embedder.y_proj.fc2):
            torch.nn.init.xavier_uniform_(lin.weight)
            lin.bias.zero_()


def use_fast_attention(model: torch.nn.Module) -> None:
    """Swap each attention's forward for PyTorch's fused SDPA (training speed only: the weights
    and the math are the same; the leaf-module forward stays what quantizers and tracers see)."""
    import types

    import torch.nn.functional as F

    from quantmodel.model.layers import Attention, MultiHeadCrossAttention

    def self_fwd(self, x):  # [B', L, C]
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # [B', H, L, D]
        return self.proj(o.transpose(1, 2).reshape(b, n, c))

    def cross_fwd(self, x, y, mask=None):  # x [B, N, C], y [B, L, C], mask [B, L] bool or None
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_linear(y).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        keep = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, H, N, D]
        return self.proj(o.transpose(1, 2).reshape(b, n, c))

    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(self_fwd, m)
        elif isinstance(m, MultiHeadCrossAttention):
            m.forward = types.MethodType(cross_fwd, m)


def save_state(
    path: Path,
    step: int,
    model: torch.nn.Module,
    enc: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: list[torch.Tensor],
    gen: torch.Generator,
    curve: list[dict],
) -> None:
    """Everything needed to continue the run bit-for-bit in schedule (step, weights, EMA, data
    generator) and nearly so in Adam: its moment estimates are stored as bfloat16 (half the bytes:
    the state must travel back from the GPU machine in files of at most 16 MiB each)."""
    osd = opt.state_dict()
    for st in osd["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].to(torch.bfloat16)
    state = {
        "step": step,
        "model": model.state_dict(),
        "enc": enc.state_dict(),
        "opt": osd,
        "ema": [e.cpu() for e in ema],
        "gen": gen.get_state(),
        "curve": curve,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(
    path: Path,
    model: torch.nn.Module,
    enc: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: list[torch.Tensor],
    gen: torch.Generator,
) -> tuple[int, list[dict]]:
    """Restore what ``save_state`` wrote; returns (next step, loss curve so far)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    enc.load_state_dict(state["enc"])
    opt.load_state_dict(state["opt"])  # casts the moments back to the parameters' dtype
    for e, saved in zip(ema, state["ema"]):
        e.copy_(saved)
    gen.set_state(state["gen"])
    return int(state["step"]), list(state["curve"])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _save(sd: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in sd.items()}, str(tmp))


def train(cfg: TrainConfig, device: str = "cpu", out_dir: Path | None = None, progress: bool = True) -> dict:
    """Run training; returns the log (losses, steps, wall time). Saves weights when ``out_dir``.

    One piece on purpose: every random draw (batch, caption dropout, timesteps, noise) comes from one
    generator in a fixed order, and the resumable state (model, encoder, optimizer, EMA, generator)
    is built, stepped and saved together; a resumed run repeats an uninterrupted one only while that
    order stays in one place."""
    dev = torch.device(device)
    w = get_workload(cfg.workload)
    mcfg = STDiTConfig.from_workload(w)
    clip = dataset.ShapesConfig(num_frames=w.num_frames, height=w.height, width=w.width)
    if w.vae_spatial_factor != 1 or w.model.in_channels != 3:
        raise ConfigError("workload", cfg.workload, "a pixel-space workload (vae_spatial_factor 1, in_channels 3)")
    torch.manual_seed(cfg.seed)
    model = build_stdit(mcfg, device=dev, seed=cfg.seed).train()
    init_zero(model)
    if cfg.caption_proj_init == "xavier":
        xavier_caption_proj(model)
    enc = CaptionEncoder(w.model.caption_channels, w.model.model_max_length).to(dev).train()
    if cfg.init_from:
        from shapes.model import _load

        _load(model, Path(cfg.init_from) / "stdit-shapes.safetensors", skip=RECOMPUTED)
        _load(enc, Path(cfg.init_from) / "stdit-shapes-captions.safetensors")
    params = [p for p in list(model.parameters()) + list(enc.parameters()) if p.requires_grad]
    ema = [p.detach().clone().float() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    diffusion = IDDPM(num_steps=w.num_steps, cfg_scale=w.cfg_scale).base  # 1000 training steps
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    start, curve = 0, []
    if cfg.state and Path(cfg.state).is_file():
        start, curve = load_state(Path(cfg.state), model, enc, opt, ema, gen)
    use_amp = cfg.amp and dev.type == "cuda"
    if cfg.fast_attention:
        use_fast_attention(model)
    fwd = torch.compile(model) if cfg.compile else model
    w_t = snr_weights(diffusion.alphas_cumprod, cfg.snr_weight_cap).to(dev) if cfg.snr_weight_cap else None

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            return fwd(x, t, y).float()

    log = {
        "config": asdict(cfg),
        "device": str(dev),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "params": sum(p.numel() for p in model.parameters()),
        "caption_params": sum(p.numel() for p in enc.parameters()),
        "curve": curve,
        "resumed_at_step": start,
    }
    it = range(start, cfg.steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train", unit="step", file=sys.stderr, mininterval=5.0)
    t_start = time.time()
    acc = torch.zeros(3, device=dev)
    steps_done = last_logged = start
    for step in it:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.no_grad():
            x0, labels = dataset.sample_batch(cfg.batch, gen, clip, device=dev)  # [B, 3, T, H, W]
        y = enc(ids_from_labels(labels))  # [B, 1, L, Ct]
        drop = torch.rand(cfg.batch, generator=gen, device=dev) < cfg.caption_dropout
        y = torch.where(drop.view(-1, 1, 1, 1), model.null_caption(cfg.batch).to(y.dtype), y)
        t = torch.randint(0, diffusion.num_timesteps, (cfg.batch,), generator=gen, device=dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        if cfg.offset_noise:
            noise = noise + cfg.offset_noise * torch.randn(cfg.batch, x0.shape[1], 1, 1, 1, generator=gen, device=dev)
        losses = diffusion.training_losses(model_fn, x0, t, y, noise)
        if w_t is None or step < cfg.snr_weight_start_step:
            loss = losses["loss"].mean()
        else:
            loss = (w_t[t] * losses["mse"]).mean() + losses["vb"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - decay)
            acc += torch.stack([loss.detach(), losses["mse"].mean().detach(), losses["vb"].mean().detach()])
        steps_done = step + 1
        if steps_done % cfg.log_every == 0 or steps_done == cfg.steps:
            n, last_logged = steps_done - last_logged, steps_done
            vals = (acc / n).tolist()
            acc.zero_()
            entry = {
                "step": steps_done,
                "loss": vals[0],
                "mse": vals[1],
                "vb": vals[2],
                "lr": lr_at(step, cfg),
                "wall_s": time.time() - t_start,
            }
            log["curve"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
        if cfg.time_budget_s and time.time() - t_start > cfg.time_budget_s:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    log["steps_done"] = steps_done
    log["train_wall_s"] = time.time() - t_start
    if cfg.state:
        save_state(Path(cfg.state), steps_done, model, enc, opt, ema, gen, log["curve"])
    # copy the EMA weights into the modules, then save
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e.to(p.dtype))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _save(
            {k: v for k, v in model.state_dict().items() if k not in RECOMPUTED}, out_dir / "stdit-shapes.safetensors"
        )
        _save(enc.state_dict(), out_dir / "stdit-shapes-captions.safetensors")
        write_text(out_dir / "train_log.json", json.dumps(log, indent=1))
    log["model"], log["encoder"] = model.eval(), enc.eval()
    return log


def main(argv: list[str] | None = None) -> int:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("shapes/assets"))
    p.add_argument("--workload", default=d.workload)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout)
    p.add_argument("--offset-noise", type=float, default=d.offset_noise)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--time-budget-s", type=float, default=d.time_budget_s)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--init-from", default="")
    p.add_argument(
        "--state", default="", help="training-state file: resume from it if it exists, save to it at the end"
    )
    p.add_argument("--snr-weight-cap", type=float, default=d.snr_weight_cap, help="0 = plain eps-MSE (OpenSora)")
    p.add_argument("--snr-weight-start-step", type=int, default=d.snr_weight_start_step)
    p.add_argument("--fast-attention", action="store_true")
    p.add_argument("--caption-proj-init", default=d.caption_proj_init, choices=("opensora", "xavier"))
    p.add_argument("--log-every", type=int, default=d.log_every)
    a = p.parse_args(argv)
    try:
        cfg = TrainConfig(
            workload=a.workload,
            steps=a.steps,
            batch=a.batch,
            lr=a.lr,
            warmup_steps=a.warmup_steps,
            caption_dropout=a.caption_dropout,
            offset_noise=a.offset_noise,
            ema_decay=a.ema_decay,
            seed=a.seed,
            time_budget_s=a.time_budget_s,
            amp=not a.no_amp,
            compile=a.compile,
            log_every=a.log_every,
            init_from=a.init_from,
            state=a.state,
            snr_weight_cap=a.snr_weight_cap,
            snr_weight_start_step=a.snr_weight_start_step,
            fast_attention=a.fast_attention,
            caption_proj_init=a.caption_proj_init,
        )
        log = train(cfg, device=a.device, out_dir=a.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: log[k] for k in ("steps_done", "train_wall_s", "gpu", "params")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
