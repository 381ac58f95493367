"""Samplers as OpenSora runs them: IDDPM (v1.0) and rectified flow (v1.2), plus their training losses.

The samplers drive any ``model_fn(x, t, y, step) -> out`` (float model, fake-quant model or the
integer emulator); ``step`` is the index of the denoising step being run (0 = first), which is how
time-step-wise quantization picks its scales and weight set. Given a caption mask ``[B, L]``, they call
``model_fn(x, t, y, step, mask=...)`` with the mask of the model batch (a model_fn that cannot take
masks fails loudly rather than ignoring them). Classifier-free guidance doubles the batch (conditional
first, then unconditional, which reuses the prompt's mask) exactly as OpenSora does, and guides the
channels ``cfg_channels`` names: ``first3`` is OpenSora v1.0.0's ``forward_with_cfg`` (only the first
three eps channels are guided; the fourth and the variance come unguided from each branch), ``all``
guides every predicted channel (v1.1's IDDPM, v1.2's rectified flow). All noise comes from a seeded
``torch.Generator``, so a seed gives the same video bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from quantmodel.model.captions import cfg_mask
from workloads.errors import ConfigError
from workloads.presets import CFG_CHANNELS

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class Sampler(Protocol):
    num_steps: int

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        y: torch.Tensor,
        y_null: torch.Tensor,
        generator: torch.Generator,
        progress: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def _call(model_fn: ModelFn, x, t, y, step: int, mask: torch.Tensor | None) -> torch.Tensor:
    return model_fn(x, t, y, step) if mask is None else model_fn(x, t, y, step, mask=mask)


def guided_channels(cfg_channels: str, channels: int) -> int:
    """How many leading predicted channels classifier-free guidance mixes (see the module docstring)."""
    if cfg_channels not in CFG_CHANNELS:
        raise ConfigError("cfg_channels", cfg_channels, " or ".join(CFG_CHANNELS))
    return min(3, channels) if cfg_channels == "first3" else channels


def guide(out: torch.Tensor, b: int, channels: int, cfg_scale: float) -> torch.Tensor:
    """``out [2B, C', ...]`` (conditional rows first) -> ``[B, C', ...]``: the first ``channels``
    channels ``uncond + s * (cond - uncond)``, the others the conditional branch's, unguided."""
    cond, uncond = out[:b], out[b:]
    mixed = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([mixed, cond[:, channels:]], dim=1)


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """Linear schedule scaled to the step count (guided-diffusion / OpenSora ``get_named_beta_schedule``)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def respaced_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """Evenly strided subset of training steps (``space_timesteps(T, "N")``, rounded strides)."""
    if num_steps > num_timesteps:
        raise ValueError(f"num_steps {num_steps} > training steps {num_timesteps}")
    stride = (num_timesteps - 1) / (num_steps - 1) if num_steps > 1 else 1
    return sorted({round(i * stride) for i in range(num_steps)})


def _extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] broadcast to ``like``'s shape on like's device: float32 as OpenSora takes it, float64 for a
    float64 run (so a float64 sampler is exact to float64 against a reference)."""
    out = torch.from_numpy(arr)[t.cpu()].to(like.device, torch.promote_types(like.dtype, torch.float32))
    return out.view(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion:
    """Discrete diffusion with learned-range variance (IDDPM), over the given betas."""

    def __init__(self, betas: np.ndarray):
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0) * x0 + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0, x_t, t):
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x0 + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t)

    def p_mean_variance(self, model_out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False):
        """Mean and log-variance of p(x_{t-1} | x_t) from [eps, variance values] (learned range);
        ``clip_denoised`` clamps the predicted x0 to the data range [-1, 1] first."""
        c = x.shape[1]
        eps, var_values = model_out[:, :c], model_out[:, c:]
        min_log = _extract(self.posterior_log_variance_clipped, t, x)
        max_log = _extract(np.log(self.betas), t, x)
        frac = (var_values + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = _extract(self.sqrt_recip_alphas_cumprod, t, x) * x - _extract(self.sqrt_recipm1_alphas_cumprod, t, x) * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x, t)
        return mean, log_var, x0

    def training_losses(
        self, model_fn: Callable, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """IDDPM hybrid loss: MSE on eps + variational bound on the learned variance (eps detached)."""
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, t, y)
        c = x0.shape[1]
        mse = ((noise - out[:, :c]) ** 2).mean(dim=tuple(range(1, x0.dim())))
        frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var, _ = self.p_mean_variance(frozen, x_t, t)
        kl = 0.5 * (
            -1.0
            + log_var
            - true_log_var
            + torch.exp(true_log_var - log_var)
            + (true_mean - mean) ** 2 * torch.exp(-log_var)
        )
        kl = kl.mean(dim=tuple(range(1, x0.dim()))) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        nll = nll.mean(dim=tuple(range(1, x0.dim()))) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantized to 8 bits under a Gaussian (DDPM decoder term)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12)))
    )


@dataclass
class IDDPM:
    """OpenSora v1.0's sampler: 1000 linear-beta steps respaced to ``num_steps``, learned-range
    variance, CFG on the eps channels ``cfg_channels`` names (v1.0.0: the first three; the rest of
    the output is taken from each branch)."""

    num_steps: int = 100
    cfg_scale: float = 7.0
    num_timesteps: int = 1000
    clip_denoised: bool = False  # OpenSora's latent models don't clip; pixel-space models do
    cfg_channels: str = "first3"  # workloads.presets.CFG_CHANNELS

    def __post_init__(self) -> None:
        self.base = GaussianDiffusion(linear_betas(self.num_timesteps))
        self.timestep_map = respaced_timesteps(self.num_timesteps, self.num_steps)
        last, betas = 1.0, []
        for i, ac in enumerate(self.base.alphas_cumprod):
            if i in set(self.timestep_map):
                betas.append(1 - ac / last)
                last = ac
        self.spaced = GaussianDiffusion(np.array(betas))

    def model_timesteps(self) -> list[int]:
        """The training timesteps the model sees, in sampling order (first step = noisiest)."""
        return self.timestep_map[::-1]

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        y: torch.Tensor,
        y_null: torch.Tensor,
        generator: torch.Generator,
        progress: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z [B, C, T, H, W] initial noise; y, y_null [B, 1, L, Ct]; mask [B, L] caption mask or None.
        Returns the clean latent."""
        b = z.shape[0]
        guided = self.cfg_scale != 1.0
        n_guided = guided_channels(self.cfg_channels, z.shape[1])
        x = torch.cat([z, z]) if guided else z  # [2B, C, T, H, W]
        y_in = torch.cat([y, y_null]) if guided else y
        mask_in = cfg_mask(mask, 2 if guided else 1)
        steps = list(range(self.num_steps))[::-1]
        it = steps
        if progress:
            from tqdm import tqdm

            it = tqdm(steps, desc="sampling", unit="step", leave=False)
        for step, i in enumerate(it):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            t_model = torch.full_like(t, self.timestep_map[i])
            if guided:  # both rows of the pair continue from the guided output of the first
                half = x[:b]
                out = _call(model_fn, torch.cat([half, half]), t_model, y_in, step, mask_in)
                mixed = guide(out[:, :n_guided], b, n_guided, self.cfg_scale)
                out = torch.cat([torch.cat([mixed, mixed]), out[:, n_guided:]], dim=1)
            else:
                out = _call(model_fn, x, t_model, y_in, step, mask_in)
            mean, log_var, _ = self.spaced.p_mean_variance(out, x, t, self.clip_denoised)
            # drawn on the generator's device: a CPU generator gives the same noise to a CUDA run
            noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
            nonzero = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
            x = mean + nonzero * torch.exp(0.5 * log_var) * noise
        return x[:b]


@dataclass
class RFlow:
    """OpenSora v1.2's rectified flow: ``num_steps`` Euler steps from t=1000 to 0 on the predicted
    velocity (x0 - noise), optional resolution-dependent timestep shift, CFG on the velocity."""

    num_steps: int = 30
    cfg_scale: float = 7.0
    num_timesteps: int = 1000
    shift: float = 1.0  # OpenSora's timestep_transform ratio (1.0 = no transform)
    cfg_channels: str = "all"  # workloads.presets.CFG_CHANNELS; v1.2 guides every velocity channel

    def model_timesteps(self) -> list[float]:
        ts = [(1.0 - i / self.num_steps) * self.num_timesteps for i in range(self.num_steps)]
        if self.shift != 1.0:
            ts = [
                self.num_timesteps
                * self.shift
                * (t / self.num_timesteps)
                / (1 + (self.shift - 1) * (t / self.num_timesteps))
                for t in ts
            ]
        return ts

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        y: torch.Tensor,
        y_null: torch.Tensor,
        generator: torch.Generator,
        progress: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c = z.shape[0], z.shape[1]
        guided = self.cfg_scale != 1.0
        n_guided = guided_channels(self.cfg_channels, c)
        y_in = torch.cat([y, y_null]) if guided else y
        mask_in = cfg_mask(mask, 2 if guided else 1)
        ts = self.model_timesteps()
        for step, t_val in enumerate(ts):
            x_in = torch.cat([z, z]) if guided else z
            t = torch.full((x_in.shape[0],), t_val, dtype=torch.float32, device=z.device)
            v = _call(model_fn, x_in, t, y_in, step, mask_in)[:, :c]
            if guided:
                v = guide(v, b, n_guided, self.cfg_scale)
            t_next = ts[step + 1] if step + 1 < len(ts) else 0.0
            z = z + v * ((t_val - t_next) / self.num_timesteps)
        return z

    def training_losses(
        self, model_fn: Callable, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """MSE between the predicted and true velocity at x_t = (1 - t/T) x0 + (t/T) noise."""
        tp = (1 - t.float() / self.num_timesteps).view(-1, *([1] * (x0.dim() - 1)))
        x_t = tp * x0 + (1 - tp) * noise
        v = model_fn(x_t, t.float(), y)[:, : x0.shape[1]]
        mse = ((v - (x0 - noise)) ** 2).mean(dim=tuple(range(1, x0.dim())))
        return {"loss": mse, "mse": mse}


def make_sampler(
    name: str,
    num_steps: int,
    cfg_scale: float,
    shift: float = 1.0,
    clip_denoised: bool = False,
    cfg_channels: str | None = None,
) -> IDDPM | RFlow:
    """A sampler by name; ``cfg_channels`` None keeps the sampler's OpenSora default (IDDPM: v1.0.0's
    ``first3``, rectified flow: ``all``)."""
    extra = {} if cfg_channels is None else {"cfg_channels": cfg_channels}
    if name == "iddpm":
        return IDDPM(num_steps=num_steps, cfg_scale=cfg_scale, clip_denoised=clip_denoised, **extra)
    if name == "rflow":
        return RFlow(num_steps=num_steps, cfg_scale=cfg_scale, shift=shift, **extra)
    raise ValueError(f"unknown sampler {name!r}")


def sampler_for(workload, num_steps: int | None = None) -> IDDPM | RFlow:
    """The sampler a workload runs. For rectified flow on a v1.2 model, OpenSora v1.2's timestep
    transform shifts the schedule by sqrt(H*W / 512^2) * sqrt(latent frames). A pixel-space model
    (no VAE: vae_spatial_factor 1) has data in [-1, 1], so IDDPM clips its predicted x0 there."""
    shift = 1.0
    if workload.sampler == "rflow" and workload.model.arch == "stdit3":
        shift = math.sqrt(workload.height * workload.width / 512**2) * math.sqrt(workload.latent_size[0])
    return make_sampler(
        workload.sampler,
        num_steps or workload.num_steps,
        workload.cfg_scale,
        shift,
        clip_denoised=workload.vae_spatial_factor == 1,
        cfg_channels=workload.cfg_channels,
    )
