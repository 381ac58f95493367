"""Samplers as OpenSora runs them: IDDPM (v1.0) and rectified flow (v1.2), plus their training losses.

The samplers drive any ``model_fn(x, t, y, step) -> out`` (float model, fake-quant model or the
integer emulator); ``step`` is the index of the denoising step being run (0 = first), which is how
time-step-wise quantization picks its scales and weight set. Classifier-free guidance doubles the
batch (conditional first, then unconditional) exactly as OpenSora does. All noise comes from a seeded
``torch.Generator``, so a seed gives the same video bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

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
    ) -> torch.Tensor: ...


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
    """arr[t] broadcast to ``like``'s shape (float32 on like's device)."""
    out = torch.from_numpy(arr).to(like.device)[t.cpu()].float().to(like.device)
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
    variance, CFG on eps only (the variance half of the output is taken from each branch)."""

    num_steps: int = 100
    cfg_scale: float = 7.0
    num_timesteps: int = 1000
    clip_denoised: bool = False  # OpenSora's latent models don't clip; pixel-space models do

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
    ) -> torch.Tensor:
        """z [B, C, T, H, W] initial noise; y, y_null [B, 1, L, Ct]. Returns the clean latent."""
        b = z.shape[0]
        guided = self.cfg_scale != 1.0
        x = torch.cat([z, z]) if guided else z  # [2B, C, T, H, W]
        y_in = torch.cat([y, y_null]) if guided else y
        steps = list(range(self.num_steps))[::-1]
        it = steps
        if progress:
            from tqdm import tqdm

            it = tqdm(steps, desc="sampling", unit="step", leave=False)
        for step, i in enumerate(it):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            t_model = torch.full_like(t, self.timestep_map[i])
            if guided:
                half = x[:b]
                out = model_fn(torch.cat([half, half]), t_model, y_in, step)
                c = out.shape[1] // 2
                eps, rest = out[:, :c], out[:, c:]
                cond, uncond = eps[:b], eps[b:]
                half_eps = uncond + self.cfg_scale * (cond - uncond)
                out = torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)
            else:
                out = model_fn(x, t_model, y_in, step)
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
    ) -> torch.Tensor:
        b, c = z.shape[0], z.shape[1]
        guided = self.cfg_scale != 1.0
        y_in = torch.cat([y, y_null]) if guided else y
        ts = self.model_timesteps()
        for step, t_val in enumerate(ts):
            x_in = torch.cat([z, z]) if guided else z
            t = torch.full((x_in.shape[0],), t_val, dtype=torch.float32, device=z.device)
            v = model_fn(x_in, t, y_in, step)[:, :c]
            if guided:
                v = v[b:] + self.cfg_scale * (v[:b] - v[b:])
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
    name: str, num_steps: int, cfg_scale: float, shift: float = 1.0, clip_denoised: bool = False
) -> IDDPM | RFlow:
    if name == "iddpm":
        return IDDPM(num_steps=num_steps, cfg_scale=cfg_scale, clip_denoised=clip_denoised)
    if name == "rflow":
        return RFlow(num_steps=num_steps, cfg_scale=cfg_scale, shift=shift)
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
    )
