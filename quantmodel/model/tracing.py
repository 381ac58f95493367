"""Op traces from the model itself: run STDiT on PyTorch's ``meta`` device (shapes only, no
arithmetic), record every leaf op through forward hooks, and repeat the step for every denoising
step of the sampler.

Each op also records which op wrote each tensor it reads (``Op.reads``): a torch-function mode
carries the name of the op that produced a tensor through the reshapes, splits and transposes between
modules, so the trace says who writes what and who reads it, and a recipe can put the quantization
of a tensor on its producer (``workloads.recipes.annotate_trace``).

The transformer's op list does not depend on the step (only the timestep value changes), so one meta
forward is recorded and stamped with each step index.

Caption tokens: by default the trace costs all ``model_max_length`` text tokens (120 in OpenSora v1.0)
in the caption embedder and in every cross-attention's kv projection, QK^T, softmax and AV, because
that is what hardware with a fixed-shape kernel computes: the padding tokens are computed and then
masked away. ``build_trace(..., text_tokens=n)`` costs only ``n`` valid tokens instead (a runtime that
packs the valid tokens, as OpenSora's GPU path does). The trace's meta says which: ``text_tokens``
(costed) and ``text_tokens_padded`` (the model's L). A quantization recipe later annotates the
trace with bit-widths, weight sets and the extra ops it needs (``workloads.recipes``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.model.layers import Add, GatedAdd, MatMul, Modulate, Softmax
from quantmodel.model.stdit3 import RMSNorm, Rope
from workloads.errors import ConfigError
from workloads.presets import Gemm, Workload
from workloads.trace import Op, Trace, gemm_trace, reads_str

FP_BYTES = 2  # float ops are counted at FP16


def _numel(shape) -> int:
    return math.prod(shape)


def _block_index(name: str) -> int:
    """Block position in execution order: v1.0 ``blocks.N`` -> N; v1.2 runs ``spatial_blocks.N``
    then ``temporal_blocks.N`` -> 2N and 2N+1; -1 outside the blocks."""
    parts = name.split(".")
    if len(parts) < 2 or not parts[1].isdigit():
        return -1
    offset = {"blocks": None, "spatial_blocks": 0, "temporal_blocks": 1}.get(parts[0], -1)
    if offset == -1:
        return -1
    return int(parts[1]) if offset is None else 2 * int(parts[1]) + offset


class _Producers(TorchFunctionMode):
    """Which recorded op produced each tensor: a module's output is tagged with the module's name
    by the forward hook; any torch function on tagged tensors (view, permute, unbind, chunk, ...)
    passes its inputs' tags to its outputs. Tensors are kept alive so their ids stay unique."""

    def __init__(self):
        super().__init__()
        self.tags: dict[int, str] = {}
        self._alive: list = []

    def producer(self, t: torch.Tensor) -> str:
        return self.tags.get(id(t), "")

    def tag(self, obj, name: str) -> None:
        for t in tree_flatten(obj)[0]:
            if isinstance(t, torch.Tensor):
                self.tags[id(t)] = name
                self._alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        names = {
            self.tags[id(t)]
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and id(t) in self.tags
        }
        if len(names) == 1:
            self.tag(out, names.pop())
        elif names:  # inside a module (its hook re-tags the output), or combined by no traced op:
            self.tag(out, "?" + "+".join(sorted(names)))  # a read of it names no producer (a test fails)
        return out


def _op_for(name: str, mod: nn.Module, inputs: tuple, output: torch.Tensor, producers: list[str]) -> Op | None:
    """One trace record for a leaf module call, from its input and output shapes; ``producers``:
    the op that wrote each tensor input ("" for a model input or a parameter)."""
    out_el = _numel(output.shape)
    blk = _block_index(name)
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    reads = [(p, t.storage_offset() if p else 0, _numel(t.shape), 8 * FP_BYTES) for p, t in zip(producers, tensors)]
    if isinstance(mod, nn.Linear):
        k, n = mod.in_features, mod.out_features
        m = _numel(inputs[0].shape) // k
        return Op(
            0,
            name,
            "linear",
            1,
            m,
            k,
            n,
            m * n,
            m * k * n,
            weight_bytes=(k * n + n) * FP_BYTES,
            input_bytes=m * k * FP_BYTES,
            output_bytes=m * n * FP_BYTES,
            block=blk,
            reads=reads_str(reads[:1]),
        )
    if isinstance(mod, nn.Conv3d):  # patch embedding: stride == kernel, i.e. a GEMM over patches
        k = mod.in_channels * _numel(mod.kernel_size)
        n = mod.out_channels
        m = out_el // n
        return Op(
            0,
            name,
            "conv",
            1,
            m,
            k,
            n,
            out_el,
            m * k * n,
            weight_bytes=(k * n + n) * FP_BYTES,
            input_bytes=_numel(inputs[0].shape) * FP_BYTES,
            output_bytes=out_el * FP_BYTES,
            block=blk,
            reads=reads_str(reads[:1]),
        )
    if isinstance(mod, MatMul):
        a, b = inputs
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        batch = _numel(a.shape[:-2])
        kind = "matmul_qk" if name.endswith(".qk") else "matmul_av"
        return Op(
            0,
            name,
            kind,
            batch,
            m,
            k,
            n,
            out_el,
            batch * m * k * n,
            input_bytes=(_numel(a.shape) + _numel(b.shape)) * FP_BYTES,
            output_bytes=out_el * FP_BYTES,
            block=blk,
            reads=reads_str(reads),
        )
    # RMS QK-norm (v1.2) costs what a LayerNorm does (reduction, rsqrt, scale): counted as one;
    # rotary embedding is an elementwise multiply-add
    vector_kind = {
        Softmax: "softmax",
        nn.LayerNorm: "layernorm",
        RMSNorm: "layernorm",
        Modulate: "modulate",
        nn.GELU: "gelu",
        nn.SiLU: "silu",
        GatedAdd: "elementwise",
        Add: "elementwise",
        Rope: "elementwise",
    }
    for cls, kind in vector_kind.items():
        if isinstance(mod, cls):
            in_bytes = sum(_numel(t.shape) for t in tensors) * FP_BYTES
            return Op(
                0,
                name,
                kind,
                1,
                elements=out_el,
                input_bytes=in_bytes,
                output_bytes=out_el * FP_BYTES,
                block=blk,
                reads=reads_str(reads),
            )
    return None


def record_forward(model: nn.Module, batch: int, text_tokens: int | None = None) -> list[Op]:
    """Ops of one forward pass at the given model batch, in execution order (meta device), with
    ``text_tokens`` caption tokens (default: the model's padded ``model_max_length``)."""
    cfg = model.cfg
    ops: list[Op] = []
    hooks = []
    prod = _Producers()

    def record(name, mod, inputs, output):
        producers = [prod.producer(t) for t in inputs if isinstance(t, torch.Tensor)]
        op = _op_for(name, mod, inputs, output, producers)
        if op is not None:
            ops.append(op)
            prod.tag(output, name)

    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: record(name, m, i, o)))
    try:
        with torch.no_grad(), prod:
            x = torch.empty(batch, cfg.in_channels, *cfg.input_size, device="meta")
            t = torch.empty(batch, device="meta")
            y = torch.empty(batch, 1, text_tokens or cfg.model_max_length, cfg.caption_channels, device="meta")
            model(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    # the sinusoidal timestep (and v1.2 fps) embeddings are functions, not modules: count them, as
    # the writers of what their embedder's first linear reads
    for name in ("t_embedder", "fps_embedder"):
        if hasattr(model, name):
            ops.insert(
                0, Op(0, f"{name}.freq", "embedding", 1, elements=batch * 256, output_bytes=batch * 256 * FP_BYTES)
            )
            i = next(i for i, op in enumerate(ops) if op.name == f"{name}.mlp.0")
            if ops[i].reads.startswith(":"):
                ops[i] = dataclasses.replace(ops[i], reads=f"{name}.freq" + ops[i].reads)
    return ops


def build_trace(workload: Workload | Gemm, text_tokens: int | None = None) -> Trace:
    """The float op trace of a whole sampling run (every op of every step); ``text_tokens`` costs
    only that many valid caption tokens instead of the padded ``model_max_length`` (module docstring)."""
    if isinstance(workload, Gemm):
        return gemm_trace(workload.m, workload.k, workload.n)
    padded = workload.model.model_max_length
    if text_tokens is not None and (
        isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or not 1 <= text_tokens <= padded
    ):
        raise ConfigError("text_tokens", text_tokens, f"an integer from 1 to {padded} (the model's text tokens)")
    cfg = STDiTConfig.from_workload(workload)
    model = build_stdit(cfg, device="meta")
    step_ops = record_forward(model, workload.model_batch, text_tokens)
    ops = [op if s == 0 else _with_step(op, s) for s in range(workload.num_steps) for op in step_ops]
    meta = {
        "workload": workload.name,
        "num_steps": workload.num_steps,
        "model_batch": workload.model_batch,
        "sampler": workload.sampler,
        "cfg_scale": workload.cfg_scale,
        "num_tokens": workload.num_tokens,
        "num_spatial": workload.num_spatial,
        "num_temporal": workload.num_temporal,
        "text_tokens": text_tokens or padded,  # caption tokens the trace costs
        "text_tokens_padded": padded,  # the model's L: what fixed-shape hardware computes
        "recipe": "fp16",
    }
    return Trace(ops=ops, meta=meta)


def _with_step(op: Op, step: int) -> Op:
    new = object.__new__(Op)  # dataclasses.replace is ~10x slower; 50k ops per trace
    new.__dict__.update(op.__dict__)
    new.__dict__["step"] = step
    return new
