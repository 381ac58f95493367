"""The integer emulator: the quantized STDiT (OpenSora v1.0 blocks) run as the chip would, bit for bit.

Inside the transformer blocks every quantized linear (and, with ``recipe.quantize_attention``, QK^T
and AV) is ``int8 x int8 -> int32`` (:func:`quantmodel.intarith.intgemm.int_linear` / ``int_matmul``: torch's
``_int_mm`` where legal, exact fallback elsewhere, int32 overflow raised), plus the int32 bias, then
one requantization (:func:`quantmodel.intarith.fixedpoint.requantize`: int32 multiplier, one rounding right
shift, half to even, saturation) to an int16 output at the artifact's static scale. Dynamic recipes
quantize each token row on line and rescale the int32 sums in float32 (the ``dyn_rescale`` op).

Between GEMMs the vector unit runs in one of two modes (:mod:`quantmodel.intarith.intops`):

- ``fp16``: activations are float16; LayerNorm, modulate, softmax, GELU, gated and plain residual adds
  are the fp16 kernels of ``intops`` (fp32 arithmetic, one fp16 rounding per step); a GEMM's int16 output is
  converted to fp16 where a vector op reads it; SmoothQuant's explicit multiply is an fp16 multiply
  by fp16 factors; float->int activation quantization is :class:`~quantmodel.intarith.fixedpoint.ActQuantizer`
  (a float32 multiply by the scale's float32 reciprocal, prepared once per layer and weight set, then
  round half to even and saturation: the chip's vector unit has no divider).
- ``int`` (integer only, I-BERT / I-ViT): the residual stream is int32 (``RES_BITS`` = 24-bit codes at
  a static scale from calibration, 2x headroom); LayerNorm, softmax, GELU, modulate and the gated
  residual adds are the integer kernels of ``intops``; the explicit smoothing multiply becomes a per-channel
  requantization of the integer input (multiplier ``s_in / (s_j * x_scale)``), the folded one a
  modulation with folded shift/scale; the per-step modulation parameters (from the float timestep
  path) are quantized to 16 bits per step. Attention matmuls that the recipe leaves unquantized run
  in float32 on dequantized operands (their scores are requantized for the integer softmax).

Outside the blocks (patch/timestep/caption embedders, final layer) the model stays float32: those
layers are not quantized by any recipe, and they run on ``host_device`` (the CPU by default, as a
chip's host would). CPU and CUDA give the same integers for the same integer inputs (exact GEMMs and
integer requantization), so an integer-only recipe should give the same sample on both (asserted by
the GPU test, not yet run on a GPU with the host parts on the CPU); float parts inside
the blocks (float attention products, fp16 transcendentals) may differ by float rounding.

Speed (CPU): the elementwise pipelines (activation quantization, bias add + requantization straight
from ``_int_mm``, dequantization, the fp16 vector-unit kernels and the integer kernels) run as single
compiled C loops (:mod:`quantmodel.intarith.ckernels`) that perform the same IEEE / integer operations in the
same order as the torch ops they replace, so the integers and fp16 values are the same (tests compare
both paths bit for bit; ``QUANTMODEL_CKERNELS=0`` runs the torch ops only). Each static linear layer is
prepared once (:class:`~quantmodel.intarith.intgemm.PreparedLinear`): its int32 accumulator overflow is decided
at load time by the bound ``K * 128 * 128 + max|bias| < 2**31`` (any int8 input; then no per-call check
is needed), and only layers where that proof fails are checked at run time (scan, then exact sum).
When the attention products are float (not verifying), the qkv / q / kv GEMM codes go in one C pass to
contiguous head-major float32 operands (K already transposed), the layout the float products would copy
them into anyway, so the products and their values are unchanged; fp16 LayerNorm+modulate and the
attention output's head merge emit the next static layer's int8 codes directly (the same values as
quantizing the fp16 / float32 tensor). Large C loops run on torch's OpenMP threads (rows split, values
unchanged).

The blocks' data flow is written once (:mod:`quantmodel.emulator.block`); this class is its eager
backend: each op runs at once. Outside verification, on CPU with the C kernels, the blocks run instead
as a compiled program (:mod:`quantmodel.emulator.program`, the recording backend of the same block):
per weight set and input shape the ops are resolved once into a flat list of the same kernel calls
over buffers that share one arena by live range, so a forward pays neither Python dispatch nor
allocation per op. That covers every recipe in both modes (a dynamic recipe's per-call scales and
zero points become steps of the program). Its output equals this eager path bit for bit (tests);
``use_program = False`` turns it off.

With ``verify=True`` each integer GEMM + requantization, each requantization of an integer input and
(in ``int`` mode) each integer kernel call is recomputed by the float64 reference
(:mod:`quantmodel.intarith.reference`) on the same integer inputs and compared exactly; per-layer SQNR of
each quantized layer's output against the float layer on the same input is accumulated.
"""

from __future__ import annotations

import copy
import ctypes
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from quantmodel.emulator import cudagraph, datapath
from quantmodel.emulator import program as emuprogram
from quantmodel.emulator.block import IntVal, head_layout, head_views, run_blocks, shape_of
from quantmodel.emulator.block import vmap as _vmap
from quantmodel.emulator.datapath import PARAM_BITS, RES_BITS, RES_HEADROOM
from quantmodel.intarith import ckernels, fixedpoint, fp16ref, gemmpaths, intgemm, intops, reference
from quantmodel.model.stdit import STDiT
from quantmodel.quant.artifact import OUT_BITS, QK_OUT_BITS, QuantArtifact
from quantmodel.quant.smoothing import FOLD_VROWS, vrow_producer
from workloads.errors import ConfigError

NONLINEAR_MODES = intops.MODES  # ("fp16", "int")
QO = fixedpoint.qrange(OUT_BITS)[1]
FP16_MAX = 65504.0
QR = 2 ** (RES_BITS - 1) - 1  # fixedpoint.qrange stops at 16 bits; the residual needs 24


_scale = datapath.range_scale


def _h(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16)


def _dequant_fp16(q: torch.Tensor, scale: float) -> torch.Tensor:
    """Saturating fp16 of ``fixedpoint.dequantize(q, scale)`` for int8/int16 codes and a float32 scale
    (where that dequantize is the float32 product): the same steps, in cache-sized blocks."""
    out = fixedpoint.dequantize_c(q, scale, torch.float16)  # one C loop, the same steps
    if out is not None:
        return out
    n = q.numel()
    flat = q.reshape(-1)
    out = torch.empty(n, dtype=torch.float16, device=q.device)
    blk = intops.CHUNK_ELEMS
    for i in range(0, n, blk):
        out[i : i + blk] = flat[i : i + blk].to(torch.float32).mul_(scale).clamp_(-FP16_MAX, FP16_MAX)
    return out.reshape(q.shape)


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power == 0:
        return float("inf")
    if signal_power == 0:
        return float("-inf")
    return 10 * math.log10(signal_power / noise_power)


@dataclass
class Verifier:
    """Exact comparisons with the float64 reference and per-layer SQNR accumulators."""

    exact: bool = True
    checks: int = 0
    mismatches: int = 0
    max_abs_diff_lsb: int = 0
    checked_names: set = field(default_factory=set)
    per_op: dict = field(default_factory=dict)  # name -> [checks, mismatches]
    power: dict = field(default_factory=dict)  # name -> [signal, noise]
    saturated: dict = field(default_factory=dict)  # name -> count of codes at the clamp bound
    fp16_saturated: int = 0  # values clamped to +-65504 on conversion to fp16
    vector: dict = field(default_factory=dict)  # fp16 kernel -> calls, elements, mismatches, max_ulp (fp16ref)

    def compare(self, name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
        diff = (got.detach().cpu().to(torch.float64) - ref.detach().cpu().to(torch.float64)).abs()
        bad = int((diff > 0).sum())
        self.checks += 1
        self.mismatches += bad
        self.max_abs_diff_lsb = max(self.max_abs_diff_lsb, int(diff.max()) if diff.numel() else 0)
        self.checked_names.add(name)
        c = self.per_op.setdefault(name, [0, 0])
        c[0] += 1
        c[1] += bad

    def add_power(self, name: str, ref: torch.Tensor, got: torch.Tensor) -> None:
        ref = ref.detach().double()
        p = self.power.setdefault(name, [0.0, 0.0])
        p[0] += float((ref * ref).sum())
        p[1] += float(((got.detach().double() - ref) ** 2).sum())

    def count_saturation(self, name: str, q: torch.Tensor, bound: int) -> None:
        self.saturated[name] = self.saturated.get(name, 0) + int((q.abs() >= bound).sum())

    def compare_fp16(self, kernel: str, got: torch.Tensor, want, tolerant: bool = False) -> None:
        """An fp16 vector-unit kernel's output against :mod:`quantmodel.intarith.fp16ref` on the same input:
        per kernel, elements, mismatching elements and the largest distance in fp16 ULPs (``tolerant``:
        the kernel has a transcendental, see fp16ref)."""
        g = got.detach().cpu()
        g = g.numpy() if g.dtype == torch.float16 else g.to(torch.float16).numpy()
        d = fp16ref.ulp_diff(g, want) if g.size else np.zeros(0, dtype=np.int64)
        c = self.vector.setdefault(kernel, {"calls": 0, "elements": 0, "mismatches": 0, "max_ulp": 0})
        c["calls"] += 1
        c["elements"] += int(d.size)
        c["mismatches"] += int((d > 0).sum())
        c["max_ulp"] = max(c["max_ulp"], int(d.max()) if d.size else 0)
        c["tolerant"] = tolerant

    def vector_ok(self) -> bool:
        tol = fp16ref.TRANSCENDENTAL_TOLERANCE
        for c in self.vector.values():
            if not c["tolerant"] and c["mismatches"]:
                return False
            if c["max_ulp"] > tol["max_ulp"] or c["mismatches"] > tol["max_fraction"] * c["elements"]:
                return False
        return True

    def layer_sqnr_db(self) -> dict[str, float]:
        return {n: sqnr_db(s, e) for n, (s, e) in self.power.items()}


@dataclass
class _LinearParams:
    w_t: torch.Tensor  # int8 [k, n]
    w_scale: torch.Tensor  # f32 [n]
    static: bool
    bias_q: torch.Tensor | None = None  # int32 [n]
    mult: torch.Tensor | None = None  # int64 [n]
    shift: torch.Tensor | None = None  # int64 [n]
    x_scale: float = 1.0
    y_scale: float = 1.0
    bias: torch.Tensor | None = None  # f32 [n] (dynamic)
    smooth: torch.Tensor | None = None  # f32 [k] factors s (None: no smoothing)
    fold: str = ""  # modulate | vrows | text | mul | ""
    row_scale: torch.Tensor | None = None  # f32 [n]: 1/s of a consumer folded into V rows
    rq: object = None  # fixedpoint.Requantizer prepared for (mult, shift, -QO, QO), int16 out
    xq: object = None  # fixedpoint.ActQuantizer prepared for x_scale (reciprocal computed once)
    gemm: object = None  # intgemm.PreparedLinear (static recipes)
    inv_s: torch.Tensor | None = None  # f32 [k]: 1 / smooth (folded into the modulation)
    inv_h: torch.Tensor | None = None  # f32 [k] holding fp16(1 / smooth) (fp16 mode's smoothing multiply)
    ws_c: tuple | None = None  # (w_scale, bias) contiguous, for the dynamic rescale's C loop
    x_zero: int = 0  # asymmetric static input's zero point (its correction is in bias_q)
    zq: object = None  # fixedpoint.ZeroPointActQuantizer (asymmetric static recipes; xq is then None)
    colsum: torch.Tensor | None = None  # int32 [n]: sum_k weight_q (dynamic asymmetric correction)


class StepChunk:
    """One of a block's six modulation chunks (``table[None] + t0`` [B, 1, C], chunk ``i``) where the
    int mode stages its per-step operands on the host (:mod:`~quantmodel.emulator.cudagraph`): ``dev``
    is the device tensor the eager path uses, ``at(t0_host)`` the same values computed on the host
    (float32 adds: identical on both)."""

    __slots__ = ("table", "t0", "b", "i", "host_table")

    def __init__(self, table: torch.Tensor, t0: torch.Tensor, b: int, i: int, host_table: torch.Tensor):
        self.table, self.t0, self.b, self.i, self.host_table = table, t0, b, i, host_table

    @property
    def dev(self) -> torch.Tensor:
        return (self.table[None] + self.t0.reshape(self.b, 6, -1))[:, self.i : self.i + 1]

    def at(self, t0_host: torch.Tensor) -> torch.Tensor:
        return (self.host_table[None] + t0_host.reshape(self.b, 6, -1))[:, self.i : self.i + 1]


def _indices(field_name: str, values, n: int) -> frozenset | None:
    """A set of indices in 0..n-1 (None: all), refused with one line otherwise."""
    if values is None:
        return None
    out = frozenset(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n for v in out):
        raise ConfigError(field_name, sorted(out, key=str), f"a non-empty list of indices in 0..{n - 1}")
    return out


class IntegerEmulator:
    """Runs a :class:`QuantArtifact` on its float model. ``model_fn(x, t, y, step)`` is what the
    samplers call; the step picks the weight set and activation scales (``step_to_set``)."""

    def __init__(
        self,
        model: STDiT,
        artifact: QuantArtifact,
        nonlinear: str = "fp16",
        device: str | torch.device | None = None,
        verify: bool = False,
        layer_sqnr: bool | None = None,
        host_device: str | torch.device | None = "cpu",
        verify_blocks=None,
        verify_steps=None,
    ):
        """``host_device``: where the float parts around the blocks run (patch, timestep and caption
        embedders, the final layer). A chip's host runs them in float; running them on the CPU makes a
        CUDA emulator's integer-only recipes give the CPU emulator's sample bit for bit (cuBLAS and MKL
        round float32 GEMMs differently). None: on ``device``. ``verify_blocks`` / ``verify_steps``
        (indices; None: all): with ``verify``, check only those blocks in those steps (the others run
        the unchecked path, which gives the same values), so a full-size check takes minutes."""
        if nonlinear not in NONLINEAR_MODES:
            raise ConfigError("nonlinear", nonlinear, " or ".join(NONLINEAR_MODES))
        if not isinstance(model, STDiT) or not hasattr(model, "blocks"):
            raise ConfigError("model", type(model).__name__, "an OpenSora v1.0 STDiT (arch stdit)")
        artifact.check_model(model)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.host_device = self.device if host_device is None else torch.device(host_device)
        if self.host_device == self.device:
            self.host = model.to(self.device)
        elif next(model.parameters()).device == self.host_device:
            self.host = copy.deepcopy(model)
        else:
            self.host = copy.deepcopy(model).to(self.host_device)
        self.model = model.to(self.device)
        self.art = artifact
        self.recipe = artifact.recipe
        self.mode = nonlinear
        self.static = self.recipe.scheme != "dynamic"
        self.a_bits = self.recipe.a_bits
        self.asym = self.recipe.asymmetric  # zero points: full signed code range, int8 codes
        self.qa = fixedpoint.qrange(self.a_bits)[1]
        self.linears = set(artifact.linears)
        self.matmuls = set(artifact.matmuls)
        self.folds = dict(artifact.meta.get("folds", {}))
        self.mods = dict(model.named_modules())
        layer_sqnr = verify if layer_sqnr is None else layer_sqnr
        self.verifier = Verifier(exact=verify) if (verify or layer_sqnr) else None
        self.exact = verify
        self.verify_blocks = _indices("verify_blocks", verify_blocks, len(model.blocks))
        self.verify_steps = _indices("verify_steps", verify_steps, len(artifact.step_to_set))
        self._checking = (self.verifier, self.exact)  # the full setting; begin_block narrows it
        self._step_on = True
        self.wset = 0
        self._cache: dict = {}
        self._mult_cache: dict = {}
        self._aq_cache: dict = {}  # (wset, name, field, bits) -> ActQuantizer of a static scale
        self._scale_cache: dict = {}  # (wset, name, field, bits, headroom) -> static scale
        self.use_program = True  # run the blocks as a compiled emuprogram.BlockProgram where it applies
        self._programs: dict = {}  # (wset, x shape, y shape) -> BlockProgram or None (out of its scope)
        self._program_pools: dict = {}  # (x shape, y shape) -> the arena shared by those programs
        self.graphs = cudagraph.StepGraphs(self.device)  # CUDA: the blocks as a replayed graph
        # stage the int mode's per-step operands from the host (None: on CUDA, where it saves the syncs;
        # True elsewhere too, which tests use to check the staged path on the CPU)
        self.stage_operands: bool | None = None
        self._host_copies: dict = {}  # id(device tensor) -> (tensor, its copy on the host)
        self._caption_memo: tuple | None = None  # (captions y on the host, their projection on the device)

    # ---- per-set parameters ---------------------------------------------------------------------
    def linear_params(self, name: str) -> _LinearParams | None:
        if name not in self.linears:
            return None
        key = (self.wset, name)
        p = self._cache.get(key)
        if p is not None:
            return p
        g, a, dev = self.wset, self.art, self.device
        wkey = a._key(g, name, "weight_q")  # scale sets sharing one weight set (tsq) share its copy
        w_t = self._cache.get(wkey)
        if w_t is None:
            w_t = self._cache[wkey] = intgemm.device_layout(a.get(g, name, "weight_q").to(dev).t())
        p = _LinearParams(
            w_t=w_t,
            w_scale=a.get(g, name, "w_scale").to(dev),
            static=self.static,
        )
        if self.static:
            p.bias_q = a.get(g, name, "bias_q").to(dev)
            p.mult = a.get(g, name, "multiplier").to(dev, torch.int64)
            p.shift = a.get(g, name, "shift").to(dev, torch.int64)
            p.rq = fixedpoint.Requantizer(p.mult, p.shift, -QO, QO, torch.int16, device=dev)  # QO fits int16
            p.gemm = intgemm.PreparedLinear(p.w_t, p.bias_q, p.rq, name)  # overflow proof at load time
            p.x_scale = float(a.get(g, name, "x_scale"))
            if self.asym:
                p.x_zero = int(a.get(g, name, "x_zero"))
                p.zq = fixedpoint.ZeroPointActQuantizer(p.x_scale, p.x_zero, self.a_bits)
            else:
                p.xq = fixedpoint.ActQuantizer(p.x_scale, self.a_bits)
            p.y_scale = float(a.get(g, name, "y_scale"))
        else:
            p.bias = a.get(g, name, "bias").to(dev)
            if self.asym:
                p.colsum = p.w_t.to(torch.int32).sum(dim=0, dtype=torch.int32)  # [n], |.| <= k * 127
        if a.has(g, name, "smooth"):
            p.smooth = a.get(g, name, "smooth").to(dev)
            p.fold = self.folds.get(name, "mul")
        n = p.w_t.shape[1]
        rs = torch.ones(n, device=dev)
        for sfx, prod_sfx in FOLD_VROWS.items():  # am I the V producer of a folded consumer?
            if name.endswith(prod_sfx):
                cons = name[: -len(prod_sfx)] + sfx
                if self.folds.get(cons) == "vrows":
                    _, part = vrow_producer(cons)
                    s = a.get(g, cons, "smooth").to(dev)
                    c = s.numel()
                    rs[part * c : (part + 1) * c] = 1.0 / s
        p.row_scale = rs
        self._cache[key] = p
        return p

    def _absmax(self, name: str, fld: str) -> float | None:
        key = f"{self.wset}/{name}/{fld}_absmax"
        t = self.art.tensors.get(key)
        return float(t) if t is not None else None

    def _static_scale(self, name: str, fld: str, bits: int, headroom: float, dynamic_of=None) -> float:
        """Static scale from the artifact's calibrated range, or (dynamic recipes, which have the
        reduction hardware) the tensor's own abs-max."""
        key = (self.wset, name, fld, bits, headroom)
        sc = self._scale_cache.get(key)
        if sc is not None:
            return sc
        r = self._absmax(name, fld)
        if r is not None:  # calibrated: a per-(weight set, op) constant, computed once
            sc = self._scale_cache[key] = _scale(r * headroom, bits)
            return sc
        d = dynamic_of() if callable(dynamic_of) else dynamic_of  # the tensor, or a function computing it
        r = float(d.abs().max()) if d is not None else 1.0
        return _scale(r * headroom, bits)

    # ---- value conversions -------------------------------------------------------------------------
    def _hs(self, x: torch.Tensor) -> torch.Tensor:
        """Saturating conversion to fp16 (values beyond +-65504 clamp instead of becoming inf; the
        random-init models reach such attention scores); saturations are counted when verifying."""
        if x.dtype == torch.float16:
            return x
        if self.verifier is not None:
            self.verifier.fp16_saturated += int((x.abs() > FP16_MAX).sum())
        return _h(x.clamp(-FP16_MAX, FP16_MAX))

    def _float(self, v) -> torch.Tensor:
        """The value as the vector unit holds it: fp16 (fp16 mode) or float32."""
        if (
            isinstance(v, IntVal)
            and self.mode == "fp16"
            and self.verifier is None
            and v.q.dtype in (torch.int8, torch.int16)
            and fixedpoint._is_f32(v.scale)
        ):
            return _dequant_fp16(v.q, v.scale)
        if isinstance(v, IntVal):
            f = fixedpoint.dequantize(v.q, v.scale)
            if self.mode == "fp16":
                return self._vcheck("dequant", self._hs(f), fp16ref.dequant, v.q, v.scale)
        else:
            f = v
        return self._hs(f) if self.mode == "fp16" else f.float()

    def _f32(self, v) -> torch.Tensor:
        return fixedpoint.dequantize(v.q, v.scale) if isinstance(v, IntVal) else v.float()

    def _vcheck(self, kernel: str, got: torch.Tensor, ref_fn, *args, tolerant: bool = False) -> torch.Tensor:
        """Verifying in fp16 mode: ``got`` against the independent fp16 reference (``fp16ref``) on the same
        inputs; returns ``got``."""
        if self.exact and self.mode == "fp16":
            a = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t for t in args]
            self.verifier.compare_fp16(kernel, got, ref_fn(*a), tolerant)
        return got

    def _requant(self, name: str, v: IntVal, real, qmin: int, qmax: int, out_scale: float) -> IntVal:
        """Integer rescale of an integer tensor (per tensor, or per channel = last dim), verified."""
        if isinstance(real, torch.Tensor):  # per channel: prepared once per (set, op, input scale, range)
            key = (self.wset, name, v.scale, qmin, qmax)
            hit = self._mult_cache.get(key)
            if hit is None:  # (a Requantizer held here: requantize() would read its constants back per call)
                m, s = fixedpoint.quantize_multipliers(real)
                hit = self._mult_cache[key] = (m, s, fixedpoint.Requantizer(m, s, qmin, qmax, torch.int32, self.device))
            m, s, rq = hit
            out = rq(v.q)
        else:
            m, s = fixedpoint.quantize_multiplier(float(real))
            out = fixedpoint.requantize(v.q, m, s, qmin, qmax)
        if self.exact:
            ref = reference.requantize(
                v.q.cpu(),
                m.cpu() if isinstance(m, torch.Tensor) else m,
                s.cpu() if isinstance(s, torch.Tensor) else s,
                qmin,
                qmax,
            )
            self.verifier.compare(name + ".requant_in", out, ref)
        return IntVal(out, out_scale)

    def _input_int8(self, name: str, v, p: _LinearParams) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A static quantized layer's int8 input at its x_scale, smoothing multiply included, and the
        float tensor that was quantized (None when the input was already integer)."""
        mul = p.smooth is not None and p.fold in ("mul", "text")
        if p.zq is not None:
            return self._input_int8_zp(name, v, p, mul)
        if isinstance(v, IntVal):
            if mul:
                real = v.scale / (self._host_copy(p.smooth).double() * p.x_scale)
                return self._requant(name + ".smooth", v, real, -self.qa, self.qa, p.x_scale).q.to(torch.int8), None
            if v.scale == p.x_scale and v.q.dtype == torch.int8:
                return v.q, None
            return self._requant(name, v, v.scale / p.x_scale, -self.qa, self.qa, p.x_scale).q.to(torch.int8), None
        x = v
        if mul and self.mode == "fp16" and not self.exact:  # multiply + quantize in one C loop (same values)
            if p.inv_h is None:
                p.inv_h = _h(1.0 / p.smooth).float()  # a per-layer constant: fp16 factors 1/s
            q = fixedpoint.smooth_quantize_fp16(p.xq, x, p.inv_h)
            if q is not None:
                return q, None
        if mul:
            x = self._smooth_mul(x, p)
        return p.xq(x), x

    def _smooth_mul(self, x: torch.Tensor, p: _LinearParams) -> torch.Tensor:
        """The explicit SmoothQuant multiply of a float input by 1/s: fp16 factors and one fp16
        rounding (checked against the numpy reference when verifying), or float32 in int mode."""
        if self.mode == "fp16":
            return self._vcheck(
                "smooth_mul", _h(_h(x).float() * _h(1.0 / p.smooth).float()), fp16ref.smooth_multiply, x, p.smooth
            )
        return x.float() * (1.0 / p.smooth)

    def _input_int8_zp(self, name: str, v, p: _LinearParams, mul: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_input_int8` of an asymmetric recipe: codes ``clamp(round(x / s) + z)`` over the full
        signed range; an integer input is requantized to the centred codes (bounds shifted by -z), then
        z is added."""
        z, lo, hi = p.x_zero, p.zq.lo, p.zq.hi
        if isinstance(v, IntVal):
            if v.scale == p.x_scale and v.q.dtype == torch.int8 and not mul:  # a producer's codes at z
                return v.q, None
            real = v.scale / (self._host_copy(p.smooth).double() * p.x_scale) if mul else v.scale / p.x_scale
            c = self._requant(name + (".smooth" if mul else ""), v, real, lo, hi, p.x_scale).q
            return (c + z).to(torch.int8), None
        x = v
        if mul:
            x = self._smooth_mul(x, p)
        return p.zq(x), x

    def _dynamic_zp(self, name: str, p: _LinearParams, x: torch.Tensor):
        """Dynamic asymmetric per-token linear: codes and zero points per row, the int32 GEMM, the
        rank-1 correction ``acc - z_row * colsum(W_q)`` (exact in int32: |sum (q - z) w| <= k * 255 * 127),
        then the float32 rescale. Returns (y float32 [R, n], codes, zero points, corrected sums)."""
        k = x.shape[-1]
        rows = x.reshape(-1, k)
        q, s_row, z = fixedpoint.dynamic_zero_points(rows, self.a_bits)
        self._dyn_scales = s_row.cpu()  # for the verifier
        acc = intgemm.int_linear(q, p.w_t, None, layer=name)  # [R, n] int32
        corr = acc - z[:, None] * p.colsum[None, :]  # the vector unit's multiply-add per output
        s_row = s_row.to(x.device)
        y = (corr.float() * s_row[:, None]) * p.w_scale[None, :] + p.bias  # dyn_rescale (fp32)
        return y, q, z, corr

    # ---- ops -------------------------------------------------------------------------------------------
    def linear(self, name: str, v):
        """One linear layer as the chip runs it: float (unquantized), dynamic per-token, or static
        (activation quantization, int8 GEMM, bias, requantization), each with its verify checks. One
        piece because the three paths share the parameter lookup and the checks' bookkeeping."""
        p = self.linear_params(name)
        lin = self.mods[name]
        if p is None:  # not quantized by the recipe: float layer
            out = F.linear(self._f32(v), lin.weight, lin.bias)
            return self._hs(out) if self.mode == "fp16" else out
        vf = self.verifier
        if self.static:
            q, xf = self._input_int8(name, v, p)
            # int8 GEMM + int32 bias + requantization (the fused kernel: the same integers as
            # fixedpoint.requantize(int_linear(q, w_t, bias), mult, shift, -QO, QO))
            out = p.gemm(q)  # int16 [..., n]: int_linear_requant(q, p.w_t, p.bias_q, p.rq), prepared
            res = IntVal(out, p.y_scale)
            if self.exact:
                vf.compare(name, out.reshape(-1, out.shape[-1]), self._linear_reference(p, q, xf))
            if vf is not None:
                vf.count_saturation(name, out, QO)
                got = fixedpoint.dequantize(out, p.y_scale)
        elif self.asym or p.smooth is not None:  # per-token zero points and/or channel balancing
            x = self._f32(v)
            if p.smooth is not None and p.fold in ("mul", "text"):  # the explicit multiply by 1/s
                if self.mode == "fp16":
                    h = _h(_h(x).float() * _h(1.0 / p.smooth).float())
                    x = self._vcheck("smooth_mul", h, fp16ref.smooth_multiply, x, p.smooth).float()
                else:
                    x = x / p.smooth
            if self.asym:
                y, q, z, corr = self._dynamic_zp(name, p, x)
            else:
                k = x.shape[-1]
                rows = x.reshape(-1, k)
                s_row = fixedpoint.symmetric_scale(rows.abs().amax(dim=1).double(), self.a_bits).to(x.device)
                q = fixedpoint.quantize(rows, s_row, self.a_bits, axis=0)  # [R, k]
                z, corr = 0, intgemm.int_linear(q, p.w_t, None, layer=name)
                y = (corr.float() * s_row[:, None]) * p.w_scale[None, :] + p.bias
            y = y.reshape(*x.shape[:-1], -1)
            res = self._hs(y) if self.mode == "fp16" else y
            got = y
            if self.exact:
                vf.compare(name, corr, reference.linear_zp(q.cpu(), z.cpu() if self.asym else 0, p.w_t.cpu()))
                if self.asym:  # the per-token codes, scales and zero points themselves
                    rq, rs, rz = reference.dynamic_quant_zp(x.reshape(-1, x.shape[-1]).cpu(), self.a_bits)
                    vf.compare(name + ".dyn_quant", q, rq)
                    vf.compare(name + ".dyn_zero", z, rz)
                    vf.compare(
                        name + ".dyn_scale", self._dyn_scales.float().view(torch.int32), rs.float().view(torch.int32)
                    )
        else:
            fast = self._dyn_linear_c(p, v) if vf is None else None
            if fast is not None:
                return fast
            x = self._f32(v)
            k = x.shape[-1]
            rows = x.reshape(-1, k)
            s_row = fixedpoint.symmetric_scale(rows.abs().amax(dim=1).double(), self.a_bits).to(x.device)
            q = fixedpoint.quantize(rows, s_row, self.a_bits, axis=0)  # [R, k]
            acc = intgemm.int_linear(q, p.w_t, None, layer=name)  # [R, n]
            y = (acc.float() * s_row[:, None]) * p.w_scale[None, :] + p.bias  # dyn_rescale (fp32)
            y = y.reshape(*x.shape[:-1], -1)
            res = self._hs(y) if self.mode == "fp16" else y
            got = y
            if self.exact:
                ref, _ = reference.matmul(q.cpu(), p.w_t.cpu())
                vf.compare(name, acc, ref)
                self._check_dynamic(name, rows, s_row, q, acc, res, p)
        if vf is not None:  # layer SQNR: float layer (original weights) on the same float input
            x_in = self._f32(v)
            if p.smooth is not None and p.fold == "modulate":
                x_in = x_in * p.smooth  # the modulation already divided the input by s
            if p.smooth is not None and p.fold == "vrows":
                x_in = x_in * p.smooth  # the producer's V rows already divided it by s
            ref_f = F.linear(x_in.float(), lin.weight, lin.bias) * p.row_scale
            vf.add_power(name, ref_f, got.float())
        return res

    def _linear_reference(self, p: _LinearParams, q: torch.Tensor, xf: torch.Tensor | None) -> torch.Tensor:
        """The float64 reference of a static linear: the input codes re-derived from the float input
        (when there was one), ``sum_k (q - z) w + b`` with the unfolded bias ``b = bias_q + z * colsum``
        (both formed in float64 from the stored integers), requantized."""
        k = q.shape[-1]
        if xf is None:
            q_ref = q
        elif p.zq is not None:
            q_ref = reference.quantize_act_zp(xf.cpu(), p.x_scale, p.x_zero, self.a_bits)
        else:
            q_ref = reference.quantize_act(xf.cpu(), p.x_scale, self.a_bits)
        w = p.w_t.cpu().to(torch.float64)
        bias = p.bias_q.cpu().to(torch.float64) + p.x_zero * w.sum(dim=0)  # the zero point taken out again
        a = q_ref.reshape(-1, k).cpu().to(torch.float64) - p.x_zero
        return reference.linear_requant(a, w, bias, p.mult.cpu(), p.shift.cpu(), -QO, QO)

    def _check_dynamic(self, name: str, rows, s_row, q, acc, res, p: _LinearParams) -> None:
        """Verifying a dynamic recipe: per-token scales (bit for bit), codes, sums and the rescaled output
        against the independent reference (``fp16ref.dynamic_linear``) on the same float input."""
        w_t, ws, b = (t.detach().cpu().numpy() for t in (p.w_t, p.w_scale, p.bias))
        fp16 = self.mode == "fp16"
        rq, rs, racc, ry = fp16ref.dynamic_linear(rows.detach().cpu().numpy(), w_t, ws, b, self.a_bits, fp16)
        vf = self.verifier
        vf.compare(name + ".dyn_scale", s_row.cpu().float().view(torch.int32), torch.from_numpy(rs.view(np.int32)))
        vf.compare(name + ".dyn_quant", q, torch.from_numpy(rq))
        vf.compare(name + ".dyn_acc", acc, torch.from_numpy(racc))
        out = res.reshape(ry.shape)
        if fp16:
            vf.compare_fp16("dyn_rescale", out, ry)
        else:
            vf.compare(name + ".dyn_rescale", out.cpu().view(torch.int32), torch.from_numpy(ry.view(np.int32)))

    def _dyn_linear_c(self, p: _LinearParams, v):
        """The dynamic branch of :meth:`linear` (not verifying) with its per-token quantization and its
        rescale as C loops (ckernels ``qm_dyn_quant`` / ``qm_dyn_rescale``: the same steps); None where
        they do not apply or an activation is not finite (the torch ops then run, and report it)."""
        dll = ckernels.lib()
        if (
            dll is None
            or p.bias is None
            or p.bias.dtype != torch.float32
            or p.w_scale.dtype != torch.float32
            or self.device.type != "cpu"
        ):
            return None
        x = v if not isinstance(v, IntVal) and v.dtype == torch.float16 else self._f32(v)  # fp16 widened in C
        k, n = p.w_t.shape
        if x.shape[-1] != k:
            return None
        rows = x.reshape(-1, k).contiguous()
        q = torch.empty(rows.shape, dtype=torch.int8)
        s_row = torch.empty(rows.shape[0], dtype=torch.float32)
        if dll.qm_dyn_quant(
            rows.data_ptr(),
            ckernels.IN_KIND_FLOAT[rows.dtype],
            rows.shape[0],
            k,
            self.qa,
            q.data_ptr(),
            s_row.data_ptr(),
        ):
            return None
        # int8 x int8 -> int32, exact: K * 128 * 128 < 2**31 rules out overflow (else the checked GEMM)
        acc = gemmpaths.mm(q, p.w_t) if k * 128 * 128 < 2**31 else intgemm.int_linear(q, p.w_t, None).contiguous()
        fp16 = self.mode == "fp16"
        out = torch.empty((*x.shape[:-1], n), dtype=torch.float16 if fp16 else torch.float32)
        if p.ws_c is None:
            p.ws_c = (p.w_scale.contiguous(), p.bias.contiguous())
        dll.qm_dyn_rescale(
            acc.data_ptr(),
            rows.shape[0],
            n,
            s_row.data_ptr(),
            p.ws_c[0].data_ptr(),
            p.ws_c[1].data_ptr(),
            out.data_ptr(),
            int(fp16),
        )
        return out

    def matmul(self, name: str, a, b, scale_hint: float = 1.0):
        """Attention product a @ b (QK^T or AV); integer when the recipe quantizes it."""
        if name in self.matmuls and self.static:
            g, art = self.wset, self.art
            sa = float(art.get(g, name, "a_scale"))
            sb = float(art.get(g, name, "b_scale"))
            sy = float(art.get(g, name, "y_scale"))
            qa_ = self._to_int8(name + ".a", a, sa)
            qb_ = self._to_int8(name + ".b", b, sb)
            m = int(art.get(g, name, "multiplier")[0])
            s = int(art.get(g, name, "shift")[0])
            qo = 2 ** ((QK_OUT_BITS if name.endswith(".qk") else OUT_BITS) - 1) - 1
            acc = intgemm.int_matmul(qa_, qb_, layer=name)
            out = fixedpoint.requantize(acc, m, s, -qo, qo)
            if self.exact:
                ra = qa_ if isinstance(a, IntVal) else reference.quantize_act(a.cpu(), sa, self.a_bits)
                rb = qb_ if isinstance(b, IntVal) else reference.quantize_act(b.cpu(), sb, self.a_bits)
                ref_acc, _ = reference.matmul(ra.cpu(), rb.cpu())
                self.verifier.compare(name, out, reference.requantize(ref_acc, m, s, -qo, qo))
            if self.verifier is not None:
                self.verifier.count_saturation(name, out, qo)
                self.verifier.add_power(name, self._f32(a) @ self._f32(b), fixedpoint.dequantize(out, sy))
            return IntVal(out, sy)
        if name in self.matmuls:  # dynamic: per-row (a) / per-column (b) scales, rescale in fp32
            af, bf = self._f32(a), self._f32(b)
            sa = fixedpoint.symmetric_scale(af.abs().amax(dim=-1).double(), self.a_bits).to(af.device)
            sb = fixedpoint.symmetric_scale(bf.abs().amax(dim=-2).double(), self.a_bits).to(af.device)
            qa_ = torch.round(af.double() / sa[..., None]).clamp(-self.qa, self.qa).to(torch.int8)
            qb_ = torch.round(bf.double() / sb[..., None, :]).clamp(-self.qa, self.qa).to(torch.int8)
            acc = intgemm.int_matmul(qa_, qb_, layer=name)
            y = (acc.float() * sa[..., None]) * sb[..., None, :]  # fp32, see the float path below
            if self.exact:
                ref_acc, _ = reference.matmul(qa_.cpu(), qb_.cpu())
                self.verifier.compare(name, acc, ref_acc)
            if self.verifier is not None:
                self.verifier.add_power(name, af @ bf, y)
            return y
        # float attention (the recipe leaves it unquantized): fp32 accumulation; the scores stay fp32
        # until the softmax has applied its 1/sqrt(D) (raw scores can exceed the fp16 range)
        return self._f32(a) @ self._f32(b)

    def _to_int8(self, name: str, v, scale: float) -> torch.Tensor:
        if isinstance(v, IntVal):
            if v.scale == scale and v.q.abs().max() <= self.qa:
                return v.q.to(torch.int8)
            return self._requant(name, v, v.scale / scale, -self.qa, self.qa, scale).q.to(torch.int8)
        key = (self.wset, name, "act", scale)
        aq = self._aq_cache.get(key)
        if aq is None:
            aq = self._aq_cache[key] = fixedpoint.ActQuantizer(scale, self.a_bits)
        return aq(v)

    def _int(self, name: str, fld: str, v, bits: int = 16, headroom: float = RES_HEADROOM) -> IntVal:
        """An integer view of a value for an integer kernel: float values are quantized at the op's
        static calibrated scale (dynamic abs-max for dynamic recipes)."""
        if isinstance(v, IntVal):
            return v
        key = (self.wset, name, fld, bits, headroom)
        aq = self._aq_cache.get(key)
        if aq is None:
            if self._absmax(name, fld) is None:  # dynamic recipe: the tensor's own range, per call
                s = self._static_scale(name, fld, bits, headroom, dynamic_of=v)
                aq = fixedpoint.ActQuantizer(s, bits, torch.int32)
            else:  # static: scale and reciprocal prepared once per (weight set, op)
                aq = self._aq_cache[key] = fixedpoint.ActQuantizer(
                    self._static_scale(name, fld, bits, headroom), bits, torch.int32
                )
        q = aq(v)
        if self.exact:
            self.verifier.compare(name, q, reference.quantize_act(v.cpu(), aq.scale, bits))
        return IntVal(q, aq.scale)

    def _check_int(self, name: str, got: torch.Tensor, ref) -> None:
        if self.exact:
            self.verifier.compare(name, got, ref[0] if isinstance(ref, tuple) else ref)

    def layernorm(self, name: str, v):
        if self.mode == "fp16":
            x, eps = self._float(v), self.mods[name].eps
            return self._vcheck(
                "layernorm",
                intops.layernorm_fp16(x, eps=eps),
                fp16ref.layernorm,
                x,
                eps,
                tolerant=self.device.type != "cpu",
            )
        iv = self._int(name, "in0", v, RES_BITS)
        q, s = intops.layernorm_int(iv.q, iv.scale, eps=self.mods[name].eps)
        if self.exact:
            self._check_int(name, q, reference.layernorm_int(iv.q.cpu(), iv.scale, self.mods[name].eps))
        return IntVal(q, s)

    def softmax(self, name: str, v, out_bits: int):
        sm = self.mods[name]
        if self.mode == "fp16":
            if self.verifier is None and not isinstance(v, IntVal) and v.dtype == torch.float32:
                return intops.softmax_fp16_scaled(v, sm.scale)  # the same fp16 values, fused
            x = self._f32(v)
            out = intops.softmax_fp16(self._hs(x * sm.scale))
            return self._vcheck("softmax", out, fp16ref.softmax, x, sm.scale, tolerant=True)
        iv = self._int(name, "in0", v, QK_OUT_BITS)
        q, s = intops.softmax_int(iv.q, iv.scale * sm.scale, out_bits=out_bits)
        if self.exact:
            self._check_int(name, q, reference.softmax_int(iv.q.cpu(), iv.scale * sm.scale, out_bits))
        return IntVal(q, s)

    def gelu(self, name: str, v):
        if self.mode == "fp16":
            x = self._float(v)
            return self._vcheck("gelu", intops.gelu_fp16(x), fp16ref.gelu, x, tolerant=True)
        iv = self._int(name, "in0", v, 16)
        q, s = intops.gelu_int(iv.q, iv.scale)
        if self.exact:
            self._check_int(name, q, reference.gelu_int(iv.q.cpu(), iv.scale))
        return IntVal(q, s)

    def _param_int(self, t: torch.Tensor) -> IntVal:
        """Per-step parameters (shift, scale, gate; [B, 1, C]) quantized once per step to 16 bits."""
        dll = ckernels.lib()
        if (
            dll is not None
            and t.dtype == torch.float32
            and t.device.type == "cpu"
            and t.dim() == 3
            and t.shape[1] == 1
            and t.numel()
            and t.stride(2) == 1
        ):  # one C pass, the same values
            out = torch.empty(t.shape, dtype=torch.int32)
            s_out = ctypes.c_double()
            if not dll.qm_param_quant(
                t.data_ptr(),
                t.shape[0],
                t.shape[2],
                t.stride(0),
                2 ** (PARAM_BITS - 1) - 1,
                out.data_ptr(),
                ctypes.byref(s_out),
            ):
                return IntVal(out, s_out.value)
        a = float(t.abs().max())
        if not (math.isfinite(a) and t.dtype == torch.float32 and t.device.type == "cpu"):
            s = float(fixedpoint.symmetric_scale(a, PARAM_BITS))  # raises on a non-finite range
            return IntVal(fixedpoint.quantize(t, s, PARAM_BITS).to(torch.int32), s)
        # the same values in fewer ops: symmetric_scale = fp32(absmax / qmax) (float64 quotient rounded
        # once), quantize = clamp(round_half_even(fl64(t / s)))
        q = 2 ** (PARAM_BITS - 1) - 1
        s = struct.unpack("f", struct.pack("f", a / q))[0] if a > 0 else 1.0
        return IntVal(torch.round(t.double().div_(s)).clamp_(-q, q).to(torch.int32), s)

    def _fold_mod(self, consumer: str, shift: torch.Tensor, scale: torch.Tensor):
        """(p, shift, scale) with the consumer's SmoothQuant factors folded in if it has them."""
        p = self.linear_params(consumer)
        if p is not None and p.smooth is not None and p.fold == "modulate":
            inv = 1.0 / (p.smooth if p.smooth.device == scale.device else self._host_copy(p.smooth))
            scale = (1 + scale) * inv - 1
            shift = shift * inv
        return p, shift, scale

    def norm_modulate(self, norm: str, name: str, v, shift: torch.Tensor, scale: torch.Tensor, consumer: str):
        """modulate(layernorm(v)): in fp16 mode (not verifying) one fused pass with the same values."""
        if self.mode == "fp16" and self.verifier is None:
            p = self.linear_params(consumer)
            inv = None
            if p is not None and p.smooth is not None and p.fold == "modulate":
                if p.inv_s is None:
                    p.inv_s = 1.0 / p.smooth  # the float32 factors _fold_mod uses (a per-layer constant)
                inv = p.inv_s
            aq = self._direct_quantizer(p)
            out = intops.layernorm_modulate_fp16(self._float(v), shift, scale, eps=self.mods[norm].eps, inv=inv, aq=aq)
            return out if aq is None else IntVal(out, p.x_scale)  # the consumer's int8 input (_input_int8)
        return self.modulate(name, self.layernorm(norm, v), shift, scale, consumer)

    def modulate(self, name: str, v, shift: torch.Tensor, scale: torch.Tensor, consumer: str):
        """x * (1 + scale) + shift, with the consumer's SmoothQuant factors folded in if it has them."""
        if isinstance(shift, StepChunk):
            out = self._modulate_staged(name, v, shift, scale, consumer)
            if out is not None:
                return out
            shift, scale = shift.dev, scale.dev
        raw = (shift, scale)
        p, shift, scale = self._fold_mod(consumer, shift, scale)
        if self.mode == "fp16":
            x = self._float(v)
            smooth = p.smooth if p is not None and p.smooth is not None and p.fold == "modulate" else None
            return self._vcheck("modulate", intops.modulate_fp16(x, shift, scale), fp16ref.modulate, x, *raw, smooth)
        iv = self._int(name, "in0", v, RES_BITS)
        sh, sc = self._param_int(shift), self._param_int(scale)
        s_out, lo, hi = self._modulate_out(name, p, lambda: datapath.modulated(self._f32(iv), shift, scale))
        q = intops.modulate_int(iv.q, iv.scale, sh.q, sh.scale, sc.q, sc.scale, s_out, lo, hi)
        if self.exact:
            self._check_int(
                name,
                q,
                reference.modulate_int(iv.q.cpu(), iv.scale, sh.q.cpu(), sh.scale, sc.q.cpu(), sc.scale, s_out, lo, hi),
            )
        return self._modulated(q, p, s_out, hi)

    def _modulate_out(self, name: str, p: _LinearParams | None, dynamic_of) -> tuple | None:
        """(s_out, lo, hi) of a modulation's int output: the consumer's int8 input scale and range, or a
        16-bit scale (calibrated; else from ``dynamic_of``, and None when that is None too)."""
        if p is not None and p.zq is not None:  # asymmetric: centred codes, z added by _modulated
            return p.x_scale, p.zq.lo, p.zq.hi
        if p is not None and p.static:  # straight into the GEMM's int8 input
            return p.x_scale, -self.qa, self.qa
        if dynamic_of is None and self._absmax(name, "out") is None:
            return None
        q16 = fixedpoint.qrange(16)[1]
        return self._static_scale(name, "out", 16, RES_HEADROOM, dynamic_of=dynamic_of), -q16, q16

    def _modulated(self, q: torch.Tensor, p: _LinearParams | None, s_out: float, hi: int) -> IntVal:
        if p is not None and p.zq is not None:
            return IntVal((q + p.x_zero).to(torch.int8), s_out)
        return IntVal(q.to(torch.int8) if hi <= 127 else q, s_out)

    def _modulate_staged(self, name: str, v, shift: StepChunk, scale: StepChunk, consumer: str) -> IntVal | None:
        """modulate's int path with its per-step operands staged from the host (the same integers);
        None where the output scale is not a calibrated constant."""
        p = self.linear_params(consumer)
        rng = self._modulate_out(name, p, None)
        if rng is None:
            return None
        s_out, lo, hi = rng
        iv = self._int(name, "in0", v, RES_BITS)

        def operands(t0_host: torch.Tensor) -> tuple:
            _, sh_f, sc_f = self._fold_mod(consumer, shift.at(t0_host), scale.at(t0_host))
            sh, sc = self._param_int(sh_f), self._param_int(sc_f)
            return intops.modulate_factors(sh.q, sh.scale, sc.q, sc.scale, s_out)

        m, r = self.graphs.stage(operands)
        return self._modulated(intops.modulate_apply(iv.q, iv.scale, m, r, s_out, lo, hi), p, s_out, hi)

    def residual(self, name: str, x, y, gate: torch.Tensor | None):
        """x + gate * y (gate None: plain add); int mode keeps the residual stream as RES_BITS codes."""
        if self.mode == "fp16":
            if self.verifier is None:  # one C pass: dequantize y, gate, add (the same fp16 values)
                xf = self._float(x)
                out = None
                if isinstance(y, IntVal) and y.q.dtype in (torch.int8, torch.int16):
                    out = intops.residual_fp16(xf, y.q, y.scale, gate)
                elif not isinstance(y, IntVal) and y.dtype == torch.float16:
                    out = intops.residual_fp16(xf, y, None, gate)
                if out is not None:
                    return out
            xf, yf = self._float(x), self._float(y)
            if gate is None:  # fp16 add = fp32 add rounded (intops doc)
                return self._vcheck("add", xf + yf, fp16ref.add, xf, yf)
            return self._vcheck("gated_add", intops.gated_add_fp16(xf, yf, gate), fp16ref.add, xf, yf, gate)
        ix = self._int(name, "in0", x, RES_BITS)
        iy = self._int(name, "in1", y, 16)
        if isinstance(gate, StepChunk):
            if self._absmax(name, "out") is not None:
                s_out = self._static_scale(name, "out", RES_BITS, RES_HEADROOM)

                def operands(t0_host: torch.Tensor) -> tuple:
                    g = self._param_int(gate.at(t0_host))
                    return (intops.gate_q16(g.q, g.scale),)

                (g16,) = self.graphs.stage(operands)
                return IntVal(intops.gated_add_apply(ix.q, ix.scale, iy.q, iy.scale, g16, s_out, -QR, QR), s_out)
            gate = gate.dev
        g = (
            self._param_int(gate)
            if gate is not None
            else IntVal(torch.ones(1, dtype=torch.int32, device=ix.q.device), 1.0)
        )
        s_out = self._static_scale(
            name,
            "out",
            RES_BITS,
            RES_HEADROOM,
            dynamic_of=lambda: datapath.gated_sum(self._f32(ix), self._f32(g), self._f32(iy)),
        )
        q = intops.gated_add_int(ix.q, ix.scale, iy.q, iy.scale, g.q, g.scale, s_out, -QR, QR)
        if self.exact:
            self._check_int(
                name,
                q,
                reference.gated_add_int(ix.q.cpu(), ix.scale, iy.q.cpu(), iy.scale, g.q.cpu(), g.scale, s_out, -QR, QR),
            )
            self.verifier.count_saturation(name, q, QR)
        return IntVal(q, s_out)

    # ---- the model -------------------------------------------------------------------------------------
    def _fast_attention(self, pre: str) -> bool:
        """Not verifying, attention products in float (the recipe leaves them unquantized): the operands
        go straight from the GEMM codes to head-major float32 (:meth:`_split_heads`)."""
        return self.verifier is None and pre + ".qk" not in self.matmuls and pre + ".av" not in self.matmuls

    def _split_heads(self, v, parts: int, heads: int, tmask: int):
        """A GEMM output v [B, N, parts * C] (int8/int16 codes) as ``parts`` contiguous float32 tensors
        [B, H, N, D] ([B, H, D, N] where bit p of ``tmask`` is set): one C pass with the values of
        dequantizing, then viewing the heads (what the float products read after their own copies);
        None when it does not apply."""
        if not isinstance(v, IntVal) or v.q.dtype not in (torch.int8, torch.int16) or v.q.dim() != 3:
            return None
        dll = ckernels.lib()
        if dll is None or v.q.device.type != "cpu" or not v.q.is_contiguous() or not fixedpoint._is_f32(v.scale):
            return None
        b, n, pc = v.q.shape
        d = pc // (parts * heads)
        out = torch.empty((parts, b, heads, n * d), dtype=torch.float32)
        dll.qm_split_heads(
            v.q.data_ptr(), 0 if v.q.dtype == torch.int8 else 1, v.scale, b, n, parts, heads, d, out.data_ptr(), tmask
        )
        return [out[p].view(b, heads, d, n) if (tmask >> p) & 1 else out[p].view(b, heads, n, d) for p in range(parts)]

    @staticmethod
    def _direct_quantizer(p: _LinearParams | None):
        """The consumer's activation quantizer when its int8 input is just ``xq`` of the producer's
        value (static recipe, no explicit smoothing multiply, 8-bit codes): producers may then emit the
        codes themselves (the same values :meth:`_input_int8` computes), else None."""
        if (
            p is None
            or not p.static
            or p.xq is None
            or p.xq.out_dtype != torch.int8
            or (p.smooth is not None and p.fold in ("mul", "text"))
        ):
            return None
        return p.xq

    def _attend_float(self, pre: str, q: torch.Tensor, k_t: torch.Tensor, vv: torch.Tensor, b: int, n: int, c: int):
        """:meth:`_attend` for :meth:`_fast_attention` with contiguous float32 operands: the same float32
        products; fp16 mode's fused softmax hands its fp16 values over as float32 (exact widening), int
        mode's integer softmax is dequantized as :meth:`matmul` does."""
        if self.mode == "fp16":
            probs = intops.softmax_fp16_scaled(torch.matmul(q, k_t), self.mods[pre + ".softmax"].scale, f32_out=True)
        else:
            probs = self._f32(self.softmax(pre + ".softmax", torch.matmul(q, k_t), 8))
        out = torch.matmul(probs, vv)  # [B', H, L, D]
        p = self.linear_params(pre + ".proj")
        aq = self._direct_quantizer(p)
        dll = ckernels.lib()
        if aq is not None and dll is not None and out.device.type == "cpu" and out.is_contiguous():  # one C pass
            q = torch.empty((b, n, c), dtype=torch.int8)
            h, d = out.shape[1], out.shape[3]
            dll.qm_merge_heads_quant(out.data_ptr(), b, h, n, d, aq.recip, float(aq.qmax), q.data_ptr())
            return self.linear(pre + ".proj", IntVal(q, p.x_scale))
        return self.linear(pre + ".proj", out.transpose(1, 2).reshape(b, n, c))

    def project(self, name: str, v):
        return self.linear(name, v)

    def text(self, y: torch.Tensor):
        return self._hs(y) if self.mode == "fp16" else y  # projected text: float, the same every step

    def heads(self, pre: str, v, roles: str, num_heads: int) -> list:
        """Not verifying, float products: contiguous head-major float32 operands in one C pass
        (:meth:`_split_heads`); otherwise views of the value (dequantized once for float products)."""
        parts = len(roles)
        tmask, _ = head_layout(pre, roles)
        if self._fast_attention(pre):
            hs = self._split_heads(v, parts, num_heads, tmask)
            if hs is not None:
                return hs
        v = self._float_operand(pre, v)
        if isinstance(v, IntVal):
            return [IntVal(t, v.scale) for t in head_views(v.q, parts, num_heads, tmask)]
        return head_views(v, parts, num_heads, tmask)

    def attend(self, pre: str, q, k_t, vv, b: int, n: int, c: int):
        fast = all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.is_contiguous() for t in (q, k_t, vv))
        if fast and self._fast_attention(pre):  # operands from _split_heads
            return self._attend_float(pre, q, k_t, vv, b, n, c)
        return self._attend(pre, q, k_t, vv, b, n, c)

    def _float_operand(self, pre: str, v):
        """A GEMM output that only float attention products read: dequantized once, whole and
        contiguous (elementwise, so the same float32 values as dequantizing each view later)."""
        if (
            isinstance(v, IntVal)
            and self.verifier is None
            and pre + ".qk" not in self.matmuls
            and pre + ".av" not in self.matmuls
        ):
            return self._f32(v)
        return v

    def _attend(self, pre: str, q, k, vv, b: int, n: int, c: int):
        scores = self.matmul(pre + ".qk", q, k)
        av_int = pre + ".av" in self.matmuls and self.static
        probs = self.softmax(pre + ".softmax", scores, self.a_bits if av_int else 8)
        out = self.matmul(pre + ".av", probs, vv)  # [B', H, L, D]
        out = _vmap(out, lambda t: t.transpose(1, 2).reshape(b, n, c))
        return self.linear(pre + ".proj", out)

    def modulation(self, table: torch.Tensor, t0: torch.Tensor, b: int) -> tuple:
        if self._staging():  # int mode on CUDA: the per-step operands come from the host
            host = self._host_copy(table)
            return tuple(StepChunk(table, t0, b, i, host) for i in range(6))
        return (table[None] + t0.reshape(b, 6, -1)).chunk(6, dim=1)  # [B, 6, C] float32

    def _staging(self) -> bool:
        """Int mode, static recipe, on CUDA with the float parts on the CPU, not verifying this block:
        the modulate and gate operands are computed on the host and copied in (no host sync; what lets
        :mod:`~quantmodel.emulator.cudagraph` replay the blocks)."""
        return (
            self.mode == "int"
            and self.static
            and self.verifier is None
            and self.host_device.type == "cpu"
            and self.graphs.active
        )

    def _host_copy(self, t: torch.Tensor) -> torch.Tensor:
        """A model constant's copy on the CPU, made once (a copy per call would be a host sync)."""
        hit = self._host_copies.get(id(t))
        if hit is None or hit[0] is not t:
            hit = self._host_copies[id(t)] = (t, t.detach().cpu())
        return hit[1]

    def swap_tokens(self, v, b: int, t: int, s: int):
        c = shape_of(v)[-1]
        return _vmap(v, lambda x: x.reshape(b, t, s, c).transpose(1, 2).reshape(b * s, t, c))

    def add_tpe(self, name: str, x_t, tpe: torch.Tensor):
        return self.residual(name, x_t, tpe.expand(shape_of(x_t)[0], -1, -1).contiguous(), None)

    def enter(self, h: torch.Tensor):
        return self._hs(h) if self.mode == "fp16" else self._int("blocks.0.norm1", "in0", h, RES_BITS)

    def leave(self, v) -> torch.Tensor:
        return self._f32(v) if isinstance(v, IntVal) else v

    @torch.no_grad()
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        sts = self.art.step_to_set
        if not 0 <= step < len(sts):
            raise ConfigError("step", step, f"0..{len(sts) - 1} (the artifact's step count)")
        self.wset = sts[step]
        self._step_on = self.verify_steps is None or step in self.verify_steps
        self.verifier, self.exact = self._checking if self._step_on else (None, False)
        m, dev = self.model, self.device
        h, t, t0_host, yy = self.embed(x, timestep, y)
        t0 = t0_host.to(dev)
        prog = self._program(tuple(h.shape), tuple(yy.shape))
        if prog is not None:  # the same values as the eager blocks below, with the per-op work done once
            out = prog.run(h, yy, t0)
        elif self.verifier is None and (self.stage_operands or (self.stage_operands is None and dev.type == "cuda")):
            # operands staged from the host; on CUDA the blocks replayed as a graph: the same values
            key = (self.wset, tuple(h.shape), tuple(yy.shape), tuple(t0.shape))
            blocks = lambda h_, y_, t0_: run_blocks(self, m, h_, y_, t0_)  # noqa: E731
            out = self.graphs.run(key, blocks, h, yy, t0, t0_host, self.static)
        else:
            out = run_blocks(self, m, h, yy, t0)
        self.verifier, self.exact = self._checking
        return self.finish(out, t).to(x.device)

    def embed(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor) -> tuple:
        """The float parts before the blocks, on the host as STDiT.forward runs them: the tokens h
        [B, N, C] and projected captions [B, L, C] on the device, the timestep embedding t [B, C] and
        its adaLN projection t0 [B, 6C] on the host."""
        hm, cfg, hdev = self.host, self.model.cfg, self.host_device
        x, timestep, y = x.to(hdev), timestep.to(hdev), y.to(hdev)
        b = x.shape[0]
        h = hm.x_embedder(x)
        pe = hm.input_pos_embed() if hasattr(hm, "input_pos_embed") else hm.pos_embed[:, None]  # as STDiT.forward
        h = hm.pos_add(h.reshape(b, cfg.num_temporal, cfg.num_spatial, -1), pe)
        h = h.reshape(b, cfg.num_temporal * cfg.num_spatial, -1).to(self.device)
        t = hm.t_embedder(timestep)
        return h, t, hm.t_block(t), self._caption(y)

    def finish(self, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The float part after the blocks, on the host: the blocks' output [B, N, C] to the model's
        output [B, Cout, T, H, W] (final layer, unpatchify)."""
        hm = self.host
        return hm.unpatchify(hm.final_layer(out.float().to(self.host_device), t))

    def _caption(self, y: torch.Tensor) -> torch.Tensor:
        """The projected caption [B, L, C] on the device. A sampler passes the same captions every step,
        so they are embedded once and reused while ``y`` is equal (the same values; 17 ms a step of a
        2-core host's time at full size, and a host-to-device copy)."""
        memo = self._caption_memo
        if memo is not None and memo[0].shape == y.shape and torch.equal(memo[0], y):
            return memo[1]
        yy = self.host.y_embedder(y).squeeze(1).to(self.device)  # [B, L, C]
        self._caption_memo = (y.clone(), yy)
        return yy

    def model_fn(self, x, t, y, step):
        return self.forward(x, t, y, step)

    def begin_block(self, i: int) -> None:
        """Called by :func:`~quantmodel.emulator.block.run_blocks` before block ``i``: checks on where
        block and step are among those verified."""
        on = self._step_on and (self.verify_blocks is None or i in self.verify_blocks)
        self.verifier, self.exact = self._checking if on else (None, False)

    def _program(self, x_shape: tuple, y_shape: tuple):
        """The compiled blocks (:mod:`quantmodel.emulator.program`) of this weight set and shapes, built on
        first use; None where the emulator's configuration is outside their scope."""
        if not self.use_program or self.verifier is not None or ckernels.lib() is None:
            return None
        key = (self.wset, x_shape, y_shape)
        if key not in self._programs:
            pool = self._program_pools.setdefault((x_shape, y_shape), {})
            self._programs[key] = emuprogram.build(self, x_shape, y_shape, pool)
        return self._programs[key]


# ---- fake quantization (fast float path for quality sweeps) ------------------------------------------
class FakeQuantModel:
    """Float32 simulation of an artifact (quantize-dequantize, no integer arithmetic): the same
    weights, scales, smoothing placement and step-to-set map as the emulator, but GEMMs in float and no
    requantization rounding. Much faster; for sweeps, not for bit-exactness claims."""

    def __init__(self, model: STDiT, artifact: QuantArtifact):
        import copy

        artifact.check_model(model)
        self.art = artifact
        self.recipe = artifact.recipe
        self.model = copy.deepcopy(model)
        self.wset = 0
        self.static = self.recipe.scheme != "dynamic"
        self.asym = self.recipe.asymmetric
        self.qa = fixedpoint.qrange(self.recipe.a_bits)[1]
        self._params: dict = {}
        mods = dict(self.model.named_modules())
        folds = artifact.meta.get("folds", {})
        for name in artifact.linears:
            _swap(self.model, name, _FakeLinear(self, name, mods[name]))
            if folds.get(name) == "modulate":
                from quantmodel.quant.smoothing import modulate_name

                mname = modulate_name(name)
                if mname in mods:
                    _swap(self.model, mname, _FakeModulate(self, name))
        for name in artifact.matmuls:
            _swap(self.model, name, _FakeMatMul(self, name))

    def params(self, name: str) -> dict:
        key = (self.wset, name)
        p = self._params.get(key)
        if p is None:
            a, g = self.art, self.wset
            dev = next(self.model.parameters()).device  # the artifact lives on the CPU
            w = (a.get(g, name, "weight_q").float() * a.get(g, name, "w_scale")[:, None]).to(dev)
            p = {"w": w}
            if self.static and name in self.art.linears:
                xs, ys = float(a.get(g, name, "x_scale")), float(a.get(g, name, "y_scale"))
                z = int(a.get(g, name, "x_zero")) if a.has(g, name, "x_zero") else 0
                bq = a.get(g, name, "bias_q").double() + z * a.get(g, name, "weight_q").double().sum(dim=1)  # unfolded
                p.update(
                    x_scale=xs, y_scale=ys, x_zero=z, b=(bq * xs * a.get(g, name, "w_scale").double()).float().to(dev)
                )
            elif name in self.art.linears:
                p["b"] = a.get(g, name, "bias").to(dev)
            if a.has(g, name, "smooth"):
                p["inv_s"] = (1.0 / a.get(g, name, "smooth")).to(dev)
                p["fold"] = self.art.meta["folds"].get(name, "mul")
            self._params[key] = p
        return p

    @torch.no_grad()
    def model_fn(self, x, t, y, step):
        self.wset = self.art.step_to_set[step]
        return self.model(x, t, y)


def _swap(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _fq(x: torch.Tensor, scale, qmax: int) -> torch.Tensor:
    return torch.round(x / scale).clamp(-qmax, qmax) * scale


def _fq_zp(x: torch.Tensor, scale: float, zero: int, bits: int) -> torch.Tensor:
    """Asymmetric quantize-dequantize: ``(clamp(round(x / s) + z, -2^(b-1), 2^(b-1) - 1) - z) * s``."""
    return (torch.round(x / scale).add_(zero).clamp_(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) - zero) * scale


class _FakeLinear(torch.nn.Module):
    def __init__(self, owner: FakeQuantModel, name: str, lin: torch.nn.Linear):
        super().__init__()
        self.owner, self.name = [owner], name

    def forward(self, x):
        o = self.owner[0]
        p = o.params(self.name)
        if "inv_s" in p and p["fold"] in ("mul", "text"):
            x = x * p["inv_s"]
        if o.static:
            x = _fq_zp(x, p["x_scale"], p["x_zero"], o.recipe.a_bits) if o.asym else _fq(x, p["x_scale"], o.qa)
            return _fq(F.linear(x, p["w"], p["b"]), p["y_scale"], QO)
        if o.asym:  # per-token min/max with zero points (the emulator's fixedpoint.dynamic_zero_points)
            q, s, z = fixedpoint.dynamic_zero_points(x.reshape(-1, x.shape[-1]), o.recipe.a_bits)
            xq = ((q.to(x.dtype) - z[:, None].to(x.dtype)) * s[:, None].to(x.device)).reshape(x.shape)
            return F.linear(xq, p["w"], p["b"])
        s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30) / o.qa
        return F.linear(_fq(x, s, o.qa), p["w"], p["b"])


class _FakeModulate(torch.nn.Module):
    def __init__(self, owner: FakeQuantModel, consumer: str):
        super().__init__()
        self.owner, self.consumer = [owner], consumer

    def forward(self, x, shift, scale):
        inv = self.owner[0].params(self.consumer)["inv_s"]
        return x * ((1 + scale) * inv) + shift * inv


class _FakeMatMul(torch.nn.Module):
    def __init__(self, owner: FakeQuantModel, name: str):
        super().__init__()
        self.owner, self.name = [owner], name

    def forward(self, a, b):
        o = self.owner[0]
        if not o.static:
            sa = a.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30) / o.qa
            sb = b.abs().amax(dim=-2, keepdim=True).clamp(min=1e-30) / o.qa
            return _fq(a, sa, o.qa) @ _fq(b, sb, o.qa)
        g, art = o.wset, o.art
        sa, sb = float(art.get(g, self.name, "a_scale")), float(art.get(g, self.name, "b_scale"))
        qo = 2 ** ((QK_OUT_BITS if self.name.endswith(".qk") else OUT_BITS) - 1) - 1
        return _fq(_fq(a, sa, o.qa) @ _fq(b, sb, o.qa), float(art.get(g, self.name, "y_scale")), qo)
