"""Workload presets: which STDiT, at which video size, sampled how.

A workload is plain data (no torch): the model's dimensions, the video (frames x height x width in
pixels), the latent codec's compression factors, the sampler, its step count and the
classifier-free-guidance scale. Presets live as YAML files in ``workloads/presets/``; users write
their own in the same format. ``gemm:M,K,N`` names a single GEMM for checking one layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from workloads.errors import (
    ConfigError,
    check_known_fields,
    require_positive_float,
    require_positive_int,
)

PRESET_DIR = Path(__file__).with_name("presets")
ARCHS = ("stdit", "stdit3")  # OpenSora v1.0 STDiT; v1.2 STDiT3 (separate spatial/temporal blocks)
SAMPLERS = ("iddpm", "rflow")
# where STDiT's temporal position embedding enters: "attention" (OpenSora v1.0: added to the input of
# block 0's temporal attention only) or "residual" (added to every token at the input, beside the
# spatial one, as Latte does), so every layer knows each token's frame (see docs/shapes_model.md)
TEMPORAL_POS = ("attention", "residual")
# which predicted channels classifier-free guidance mixes: "first3" is OpenSora v1.0.0's
# forward_with_cfg (eps channels 0-2 guided, the 4th eps channel and the variance unguided), "all"
# guides every predicted channel (v1.1's IDDPM, v1.2's rectified flow)
CFG_CHANNELS = ("first3", "all")
DEFAULT_CFG_CHANNELS = {"iddpm": "first3", "rflow": "all"}  # what each sampler does in OpenSora

# Size budgets. A workload beyond them is refused when it loads, with the number, instead of hanging
# or exhausting memory half-way through tracing or simulation.
# assumption: 12x the largest preset's trace (OpenSora v1.0 at 100 steps: 80,000 ops, built in 2-4 s on
# this project's 2-core CI machine); a trace is built op by op in Python, ~1 KB of memory per op
MAX_TRACE_OPS = 1_000_000
# every MAC and byte count of the trace stays exact in int64 (Parquet columns, numpy sums)
MAX_MACS = 2**62
# upper bound of trace ops per step per block (STDiT: 28 ops per block; STDiT3: 50 per block pair) and
# outside the blocks (embedders, final layer), for the estimate checked against MAX_TRACE_OPS
_OPS_PER_BLOCK = {"stdit": 30, "stdit3": 52}
_OPS_OUTSIDE_BLOCKS = 32


@dataclass(frozen=True)
class ModelDims:
    """STDiT hyper-parameters (OpenSora names). Defaults are STDiT-XL/2 of OpenSora v1.0."""

    arch: str = "stdit"
    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    mlp_ratio: float = 4.0
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    caption_channels: int = 4096  # T5-XXL feature width
    model_max_length: int = 120  # text tokens
    pred_sigma: bool = True  # learned variance doubles the output channels
    temporal_pos: str = "attention"  # one of TEMPORAL_POS; STDiT (v1.0) only

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError("model.arch", self.arch, " or ".join(ARCHS))
        if self.temporal_pos not in TEMPORAL_POS:
            raise ConfigError("model.temporal_pos", self.temporal_pos, " or ".join(TEMPORAL_POS))
        if self.arch != "stdit" and self.temporal_pos != "attention":
            raise ConfigError(
                "model.temporal_pos", self.temporal_pos, "attention for arch stdit3 (its temporal attention uses RoPE)"
            )
        for f in ("depth", "hidden_size", "num_heads", "in_channels", "caption_channels", "model_max_length"):
            require_positive_int(f"model.{f}", getattr(self, f))
        require_positive_float("model.mlp_ratio", self.mlp_ratio)
        if not isinstance(self.patch_size, (tuple, list)) or len(self.patch_size) != 3:
            raise ConfigError("model.patch_size", self.patch_size, "three positive integers [t, h, w]")
        for p in self.patch_size:
            require_positive_int("model.patch_size", p)
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if self.hidden_size % self.num_heads:
            raise ConfigError("model.num_heads", self.num_heads, f"a divisor of hidden_size={self.hidden_size}")
        if int(self.hidden_size * self.mlp_ratio) != self.hidden_size * self.mlp_ratio:
            raise ConfigError("model.mlp_ratio", self.mlp_ratio, "a ratio giving an integer MLP width")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels


@dataclass(frozen=True)
class Workload:
    """One video-generation job: model, video size, latent codec and sampler."""

    name: str
    model: ModelDims
    num_frames: int
    height: int  # pixels
    width: int  # pixels
    vae_spatial_factor: int = 8  # SD VAE: 8x spatial (1 = pixel-space model)
    vae_temporal_factor: int = 1  # v1.0 uses a 2D VAE; v1.2's 3D VAE compresses time 4x
    sampler: str = "iddpm"
    num_steps: int = 100
    cfg_scale: float = 7.0
    cfg_channels: str = ""  # one of CFG_CHANNELS; "" = the sampler's OpenSora default (DEFAULT_CFG_CHANNELS)
    batch: int = 1  # videos per sampling run (CFG doubles the model batch)
    space_scale: float = 1.0  # OpenSora's positional-embedding scale (0.5 at 256px, 1.0 at 512px)
    time_scale: float = 1.0
    latent_frames: int = 0  # latent frames when the VAE is not a plain stride (v1.2: 17 frames -> 5)
    fps: int = 24  # frame-rate conditioning (v1.2 only)
    description: str = ""
    # module that ships this workload's trained model, prompts and video metrics (quantmodel.eval loads
    # it by name: stdit-shapes -> shapes.trained); "" = a seeded random model and random prompts
    trained: str = ""

    def __post_init__(self) -> None:
        for f in ("num_frames", "height", "width", "vae_spatial_factor", "vae_temporal_factor", "num_steps", "batch"):
            require_positive_int(f, getattr(self, f))
        if self.sampler not in SAMPLERS:
            raise ConfigError("sampler", self.sampler, " or ".join(SAMPLERS))
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or self.cfg_scale < 1.0:
            raise ConfigError("cfg_scale", self.cfg_scale, "a number >= 1.0 (1.0 turns guidance off)")
        if self.cfg_channels == "":
            object.__setattr__(self, "cfg_channels", DEFAULT_CFG_CHANNELS[self.sampler])
        if self.cfg_channels not in CFG_CHANNELS:
            raise ConfigError("cfg_channels", self.cfg_channels, " or ".join(CFG_CHANNELS))
        require_positive_float("space_scale", self.space_scale)
        require_positive_float("time_scale", self.time_scale)
        pt, ph, pw = self.model.patch_size
        for field, size, vae, patch in (
            ("height", self.height, self.vae_spatial_factor, ph),
            ("width", self.width, self.vae_spatial_factor, pw),
        ):
            if size % (vae * patch):
                raise ConfigError(field, size, f"a multiple of {vae * patch} (VAE factor {vae} x patch {patch})")
        require_positive_int("fps", self.fps)
        if not isinstance(self.trained, str) or (
            self.trained and not all(part.isidentifier() for part in self.trained.split("."))
        ):
            raise ConfigError("trained", self.trained, 'a dotted module name (e.g. shapes.trained) or ""')
        if isinstance(self.latent_frames, bool) or not isinstance(self.latent_frames, int) or self.latent_frames < 0:
            raise ConfigError(
                "latent_frames", self.latent_frames, "0 (num_frames / vae_temporal_factor) or a positive integer"
            )
        if self.vae_temporal_factor > 1 and not self.latent_frames:
            # a causal 3D VAE keeps the first frame: 1 + 4k frames, or a multiple of 4 (OpenSora v1.2)
            if self.num_frames % self.vae_temporal_factor:
                raise ConfigError(
                    "num_frames", self.num_frames, f"a multiple of the VAE's temporal factor {self.vae_temporal_factor}"
                )
        if self.latent_size[0] % pt:
            raise ConfigError(
                "num_frames", self.num_frames, f"a number whose latent frames divide by the temporal patch {pt}"
            )
        self._check_budget()

    def estimated_ops(self) -> int:
        """An upper bound of the trace's op count (every op of every step)."""
        per_step = _OPS_PER_BLOCK[self.model.arch] * self.model.depth + _OPS_OUTSIDE_BLOCKS
        return self.num_steps * per_step

    def estimated_macs(self) -> int:
        """An upper bound of the trace's MACs, twice the sum per step and block of: the linear layers
        (attention 2 x 4 h^2 and cross-attention 2 h^2 per token, the MLP 2 h x mlp_hidden), the text
        projections, and spatial, temporal and cross attention as if each attended over every token."""
        m, s, h, L = self.model, self.num_tokens, self.model.hidden_size, self.model.model_max_length
        linear = s * h * (10 * h + 2 * m.mlp_hidden)
        text = L * h * (2 * h + m.caption_channels)
        attention = 4 * s * s * h + 2 * s * L * h
        return 2 * self.num_steps * self.model_batch * m.depth * (linear + text + attention)

    def _check_budget(self) -> None:
        ops = self.estimated_ops()
        if ops > MAX_TRACE_OPS:
            raise ConfigError(
                "num_steps x model.depth",
                f"{self.num_steps} x {self.model.depth}",
                f"a trace of at most {MAX_TRACE_OPS:,} ops (this workload needs about {ops:,})",
            )
        macs = self.estimated_macs()
        if macs > MAX_MACS:
            raise ConfigError(
                "workload size",
                f"{self.num_frames}x{self.height}x{self.width}, hidden {self.model.hidden_size}",
                f"at most 2^62 MACs so every count stays exact (this workload needs about {macs:.3g})",
            )

    @property
    def latent_size(self) -> tuple[int, int, int]:
        """Latent video (T, H, W) that the transformer sees."""
        frames = self.latent_frames or self.num_frames // self.vae_temporal_factor
        return (frames, self.height // self.vae_spatial_factor, self.width // self.vae_spatial_factor)

    @property
    def num_temporal(self) -> int:
        return self.latent_size[0] // self.model.patch_size[0]

    @property
    def num_spatial(self) -> int:
        _, h, w = self.latent_size
        return (h // self.model.patch_size[1]) * (w // self.model.patch_size[2])

    @property
    def num_tokens(self) -> int:
        return self.num_temporal * self.num_spatial

    @property
    def model_batch(self) -> int:
        """Batch the transformer runs per step: CFG runs conditional and unconditional together."""
        return self.batch * (2 if self.cfg_scale != 1.0 else 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"]["patch_size"] = list(self.model.patch_size)
        return d


@dataclass(frozen=True)
class Gemm:
    """A single GEMM ``[M,K] x [K,N]`` (``gemm:M,K,N``), for checking one layer."""

    m: int
    k: int
    n: int

    def __post_init__(self) -> None:
        for f in ("m", "k", "n"):
            require_positive_int(f"gemm.{f}", getattr(self, f))
        if self.m * self.k * self.n > MAX_MACS:
            raise ConfigError(
                "workload",
                self.name,
                f"a GEMM of at most 2^62 MACs so every count stays exact (this one has {self.m * self.k * self.n:.3g})",
            )

    @property
    def name(self) -> str:
        return f"gemm:{self.m},{self.k},{self.n}"


_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelDims)}
_WORKLOAD_FIELDS = {f.name for f in dataclasses.fields(Workload)}


def workload_from_dict(data: object, default_name: str = "custom") -> Workload:
    """Build and validate a Workload from a YAML mapping; unknown fields are refused."""
    if not isinstance(data, dict):
        raise ConfigError("workload", type(data).__name__, "a YAML mapping of workload fields")
    check_known_fields("workload", data, _WORKLOAD_FIELDS)
    model = data.get("model", {})
    check_known_fields("model", model, _MODEL_FIELDS)
    if "patch_size" in model and isinstance(model["patch_size"], list):
        model = {**model, "patch_size": tuple(model["patch_size"])}
    fields = {k: v for k, v in data.items() if k != "model"}
    fields.setdefault("name", default_name)
    try:
        return Workload(model=ModelDims(**model), **fields)
    except TypeError as e:  # a required field is missing
        missing = str(e).split("argument")[-1].strip(": '")
        raise ConfigError(f"workload.{missing}", None, "a value (the field is required)") from None


def load_workload_file(path: str | Path) -> Workload:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("workload", str(path), "a preset name (codesign workloads) or an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError("workload", str(path), f"valid YAML{where}") from None
    return workload_from_dict(data, default_name=path.stem)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_gemm(spec: str) -> Gemm:
    body = spec[len("gemm:") :]
    parts = body.split(",")
    if len(parts) != 3:
        raise ConfigError("workload", spec, "gemm:M,K,N with three positive integers")
    try:
        m, k, n = (int(p) for p in parts)
    except ValueError:
        raise ConfigError("workload", spec, "gemm:M,K,N with three positive integers") from None
    return Gemm(m, k, n)


def get_workload(name_or_path: str) -> Workload | Gemm:
    """A preset name, a YAML file path, or ``gemm:M,K,N``."""
    if name_or_path.startswith("gemm:"):
        return parse_gemm(name_or_path)
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return load_workload_file(preset)
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).exists():
        return load_workload_file(name_or_path)
    raise ConfigError("workload", name_or_path, "one of " + ", ".join(preset_names()) + ", a YAML file, or gemm:M,K,N")
