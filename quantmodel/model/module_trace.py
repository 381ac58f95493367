"""Op traces of any PyTorch model: run a user's ``nn.Module`` on the ``meta`` device (shapes only, no
weights, no arithmetic) and record every operation it calls, mapped onto the trace's op kinds, so
the hardware model can cost models this repository does not define.

How: a torch-function mode sees every torch call of the forward pass; module hooks keep the path of
the module being run, which names the ops (``blocks.3.attn.qkv`` for the linear of that module,
``blocks.3.attn.sdpa0.qk`` for the first product of an attention call inside it). What each call
becomes:

- GEMMs: ``F.linear`` / ``addmm`` / a matmul with a parameter operand -> ``linear`` (weights counted);
  ``matmul`` / ``bmm`` / ``@`` of two activations -> ``matmul_av`` when the left operand was written by a
  softmax, else ``matmul_qk``; ``F.scaled_dot_product_attention`` -> ``matmul_qk``, ``softmax``,
  ``matmul_av``; ``F.conv1d/2d/3d`` (and transposed) -> ``conv`` as the GEMM it is (im2col
  convention: ``batch`` = groups).
- Vector work: norms -> ``layernorm``, softmax -> ``softmax``, GELU / SiLU -> ``gelu`` / ``silu``,
  embedding lookups -> ``embedding``, every other arithmetic call (adds, multiplies, activations,
  transcendental functions, reductions) -> ``elementwise`` over the larger of its input and output.
- Free: views, reshapes, permutes, slicing, concatenation, padding, dtype and device casts, tensor
  creation and shape queries (data movement the hardware model does not charge as compute).
- Anything else stops the trace with a one-line error naming the op and the module that called it,
  rather than costing a model that is missing work.

Each op records which op wrote each activation it reads (``Op.reads``), tracked through the free
calls, so a recipe can place its quantization (``workloads.recipes.annotate_trace``): parameters and
buffers are not activations. Float ops are counted at FP16, as for STDiT (``tracing.FP_BYTES``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from quantmodel.model.tracing import FP_BYTES
from workloads import presets as budgets  # read at call time: the budgets are module settings
from workloads.errors import ConfigError
from workloads.trace import Op, Trace, reads_str

F = torch.nn.functional

# calls that move or describe data and cost no compute in the hardware model
_FREE = {
    *"view view_as reshape reshape_as permute transpose t flatten unflatten squeeze unsqueeze expand "
    "expand_as contiguous chunk split tensor_split unbind narrow select movedim swapaxes swapdims "
    "__getitem__ __setitem__ cat concat concatenate stack hstack vstack pad repeat repeat_interleave tile "
    "flip roll clone detach detach_ to type float half bfloat16 double int long bool cpu cuda "
    "size dim numel shape __len__ dtype device is_floating_point is_complex requires_grad is_contiguous "
    "stride storage_offset data_ptr element_size ndim __get__ __format__ __repr__ __bool__ __index__ item "
    "tolist new_zeros new_ones new_empty new_full new_tensor zeros_like ones_like empty_like full_like "
    "rand_like randn_like arange linspace zeros ones empty full tensor as_tensor fill_ zero_ copy_ dropout "
    "dropout1d dropout2d dropout3d alpha_dropout identity broadcast_to broadcast_tensors meshgrid "
    "index_select gather masked_select where triu tril diagonal unfold as_strided is_nonzero __array__ "
    "get_device _has_compatible_shallow_copy_type ne eq lt le gt ge logical_not logical_and logical_or "
    "any all argmax argmin nonzero isfinite isnan isinf __eq__ __ne__ __lt__ __le__ __gt__ __ge__".split()
}
_NORMS = {"layer_norm", "group_norm", "rms_norm", "batch_norm", "instance_norm", "local_response_norm", "normalize"}
_ELEMENTWISE = {
    *"add sub mul div true_divide floor_divide remainder fmod pow neg abs exp exp2 expm1 log log2 log10 log1p "
    "sqrt rsqrt sin cos tan tanh sigmoid relu relu6 leaky_relu elu selu celu hardtanh hardswish hardsigmoid "
    "mish softplus softsign erf erfc clamp clip clamp_min clamp_max maximum minimum reciprocal sign round "
    "floor ceil trunc masked_fill lerp addcmul addcdiv square mean sum amax amin max min var std logsumexp "
    "cumsum prod norm baddbmm_bias glu silu_ gelu_ sigmoid_ relu_ tanh_ exp_ mul_ add_ sub_ div_ neg_ "
    "square_ sqrt_ rsqrt_ clamp_ masked_fill_ "
    "__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__ "
    "__rtruediv__ __itruediv__ __pow__ __rpow__ __neg__ __abs__ __floordiv__ __mod__".split()
}
_GELU = {"gelu"}
_SILU = {"silu"}
_SOFTMAX = {"softmax", "log_softmax", "_softmax"}
_MATMUL = {"matmul", "bmm", "mm", "__matmul__", "__rmatmul__", "baddbmm", "addbmm"}
_CONV = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


def _numel(shape) -> int:
    return math.prod(shape)


def _block_index(name: str) -> int:
    """The first list index in a module path (``transformer_blocks.3.attn1.to_q`` -> 3); -1 if none."""
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else -1


def _fname(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":  # a property (Tensor.shape, .dtype, ...): free
        return "__get__"
    return name


class _Recorder(TorchFunctionMode):
    """The torch-function mode that turns calls into ``Op`` records (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.ops: list[Op] = []
        self.stack: list[str] = [""]  # module paths being run (hooks push and pop)
        self.calls: dict[str, int] = {}  # how often each module ran (a module run twice names #2)
        self.counts: dict[tuple[str, str], int] = {}
        self.tags: dict[int, str] = {}  # id(tensor) -> the op that wrote it
        self.kinds: dict[str, str] = {}  # op name -> kind
        self.leaves: set[str] = {n for n, m in model.named_modules() if n and not list(m.children())}
        self.params = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
        self._alive: list = []

    # ---- naming and producers -------------------------------------------------------------
    def module(self) -> str:
        return self.stack[-1]

    def fresh(self, kind: str) -> str:
        """A new op name: a leaf module's first op takes the module's path (``attn.qkv``), any other
        op the module's path and its kind's running count (``attn.sdpa0``)."""
        mod = self.module()
        if mod in self.leaves and (mod, "") not in self.counts:
            self.counts[(mod, "")] = 1
            return mod
        i = self.counts.get((mod, kind), 0)
        self.counts[(mod, kind)] = i + 1
        return f"{mod}.{kind}{i}" if mod else f"{kind}{i}"

    def tag(self, obj, name: str) -> None:
        for t in tree_flatten(obj)[0]:
            if isinstance(t, torch.Tensor):
                self.tags[id(t)] = name
                self._alive.append(t)

    def activations(self, args, kwargs) -> list[torch.Tensor]:
        return [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and id(t) not in self.params]

    def read(self, t: torch.Tensor) -> tuple[str, int, int, int]:
        p = self.tags.get(id(t), "")
        return (p, t.storage_offset() if p else 0, _numel(t.shape), 8 * FP_BYTES)

    def emit(self, kind: str, reads: list, name: str | None = None, **fields) -> str:
        name = name or self.fresh(kind)
        ins = sum(e for _, _, e, _ in reads) * FP_BYTES
        self.ops.append(Op(0, name, kind, block=_block_index(name), reads=reads_str(reads), input_bytes=ins, **fields))
        self.kinds[name] = kind
        return name

    # ---- the mode ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _fname(func)
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:
            return out
        acts = self.activations(args, kwargs)
        if name in _FREE:
            producers = {self.tags[id(t)] for t in acts if id(t) in self.tags}
            if len(producers) == 1:
                self.tag(out, producers.pop())
            return out
        handler = self._handler(name)
        if handler is None:
            where = self.module() or "the model's forward"
            raise ConfigError(
                "model op",
                f"{name} (called in {where})",
                "a GEMM (linear, matmul, bmm, conv, scaled_dot_product_attention), a norm, softmax, an activation, "
                "an elementwise or reduction op, an embedding, or a view/shape op",
            )
        self.tag(out, handler(args, kwargs, acts, outs))
        return out

    def _handler(self, name: str) -> Callable | None:
        if name == "linear" or name == "addmm":
            return self._linear
        if name in _MATMUL:
            return self._matmul
        if name == "scaled_dot_product_attention":
            return self._sdpa
        if name == "einsum":
            return self._einsum
        if name == "multi_head_attention_forward":
            return self._mha
        if name in _CONV:
            return self._conv
        if name == "embedding":
            return lambda a, k, acts, outs: self._vector("embedding", acts, outs)
        for names, kind in ((_NORMS, "layernorm"), (_SOFTMAX, "softmax"), (_GELU, "gelu"), (_SILU, "silu")):
            if name in names:
                return lambda a, k, acts, outs, kind=kind: self._vector(kind, acts, outs)
        if name in _ELEMENTWISE:
            return lambda a, k, acts, outs: self._vector("elementwise", acts, outs)
        return None

    # ---- mapped ops -------------------------------------------------------------------------
    def _vector(self, kind: str, acts: list, outs: list) -> str:
        out_el = sum(_numel(t.shape) for t in outs)
        elements = max(out_el, max((_numel(t.shape) for t in acts), default=0))
        return self.emit(kind, [self.read(t) for t in acts], elements=elements, output_bytes=out_el * FP_BYTES)

    def _gemm_linear(
        self, x: torch.Tensor, k: int, n: int, bias: bool, out: torch.Tensor, name: str | None = None, reads=None
    ) -> str:
        m = _numel(x.shape) // k
        return self.emit(
            "linear",
            reads if reads is not None else [self.read(x)],
            name=name,
            m=m,
            k=k,
            n=n,
            elements=m * n,
            macs=m * k * n,
            weight_bytes=(k * n + (n if bias else 0)) * FP_BYTES,
            output_bytes=_numel(out.shape) * FP_BYTES,
        )

    def _linear(self, args, kwargs, acts, outs) -> str:
        if len(args) == 3 and id(args[2]) in self.params and args[0].dim() == 1:  # addmm(bias, x, W)
            return self._gemm_linear(args[1], args[1].shape[-1], outs[0].shape[-1], True, outs[0])
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = (args[2] if len(args) > 2 else kwargs.get("bias")) is not None
        if id(w) not in self.params:  # F.linear on an activation "weight": a product of two activations
            return self._matmul((x, w.transpose(-2, -1)), {}, acts, outs)
        return self._gemm_linear(x, w.shape[-1], w.shape[0], bias, outs[0])

    def _matmul(self, args, kwargs, acts, outs) -> str:
        tensors = [t for t in args if isinstance(t, torch.Tensor)]
        a, b = tensors[-2], tensors[-1]  # baddbmm(input, a, b): the product's operands are the last two
        if id(b) in self.params and b.dim() == 2:  # x @ W: a linear layer written as a product
            return self._gemm_linear(a, b.shape[0], b.shape[1], False, outs[0])
        a2 = a if a.dim() > 1 else a[None]
        b2 = b if b.dim() > 1 else b[:, None]
        m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
        batch = _numel(torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
        return self._product(a, b, batch, m, k, n, outs[0])

    def _product(self, a, b, batch: int, m: int, k: int, n: int, out) -> str:
        """A product of two activations: attention-weights x values when the left operand came out of
        a softmax, query x key otherwise."""
        kind = "matmul_av" if self.kinds.get(self.tags.get(id(a), "")) == "softmax" else "matmul_qk"
        return self.emit(
            kind,
            [self.read(a), self.read(b)],
            batch=batch,
            m=m,
            k=k,
            n=n,
            elements=batch * m * n,
            macs=batch * m * k * n,
            output_bytes=_numel(out.shape) * FP_BYTES,
        )

    def _einsum(self, args, kwargs, acts, outs) -> str:
        """One operand: a permutation (free) or a reduction (vector work); two: the product they spell,
        its indices sorted into batch (in both and the output), m, n (in one and the output) and k
        (contracted)."""
        eq = args[0].replace(" ", "")
        ops = [t for t in tree_flatten(args[1:])[0] if isinstance(t, torch.Tensor)]
        lhs, _, out_idx = eq.partition("->")
        terms = lhs.split(",")
        if len(ops) == 1 and len(terms) == 1:
            if _numel(outs[0].shape) == _numel(ops[0].shape):
                return self.tags.get(id(ops[0]), "")
            return self._vector("elementwise", acts, outs)
        if len(ops) != 2 or len(terms) != 2 or "..." in eq or not out_idx:
            raise ConfigError("model op", f"einsum {eq!r} (called in {self.module()})", "einsum of one or two operands")
        a, b = ops
        size = {c: d for term, t in zip(terms, ops) for c, d in zip(term, t.shape)}
        ta, tb, to = set(terms[0]), set(terms[1]), set(out_idx)
        prod = lambda idx: _numel([size[c] for c in idx])  # noqa: E731
        batch, m, n, k = prod(ta & tb & to), prod((ta & to) - tb), prod((tb & to) - ta), prod((ta & tb) - to)
        if id(b) in self.params and not (ta & tb & to):
            return self._gemm_linear(a, k, n, False, outs[0])
        return self._product(a, b, batch, m, k, n, outs[0])

    def _mha(self, args, kwargs, acts, outs) -> str:
        """nn.MultiheadAttention's functional core: in-projection (packed when query, key and value
        are one tensor), the attention products, the out-projection."""
        q, k, v = args[0], args[1], args[2]  # [L, N, E], [S, N, Ek], [S, N, Ev]
        heads = int(args[4] if len(args) > 4 else kwargs["num_heads"])
        lq, nb, e = q.shape if q.dim() == 3 else (q.shape[0], 1, q.shape[1])
        lk = k.shape[0]
        base = self.module()
        if q is k and k is v:
            qkv = self._gemm_linear(q, e, 3 * e, True, torch.empty(lq, nb, 3 * e, device="meta"), f"{base}.in_proj")
            srcs = [
                (qkv, 0, lq * nb * e, 16),
                (qkv, lq * nb * e, lk * nb * e, 16),
                (qkv, 2 * lq * nb * e, lk * nb * e, 16),
            ]
        else:
            srcs = []
            for part, t in (("q", q), ("k", k), ("v", v)):
                out = torch.empty(t.shape[0], nb, e, device="meta")
                op = self._gemm_linear(t, t.shape[-1], e, True, out, f"{base}.in_proj_{part}")
                srcs.append((op, 0, _numel(out.shape), 16))
        batch, d = nb * heads, e // heads
        av = self._attention_products(base, srcs, batch, lq, lk, d, d)
        self.tags[id(outs[0])] = av
        av_el = batch * lq * d
        return self._gemm_linear(outs[0], e, e, True, outs[0], f"{base}.out_proj", reads=[(av, 0, av_el, 16)])

    def _sdpa(self, args, kwargs, acts, outs) -> str:
        q, k, v = (list(args) + [kwargs.get(x) for x in ("query", "key", "value")])[:3]
        batch = _numel(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]))
        lq, d, lk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
        srcs = [self.read(q), self.read(k), self.read(v)]
        return self._attention_products(self.fresh("sdpa"), srcs, batch, lq, lk, d, dv)

    def _attention_products(self, base: str, srcs: list, batch: int, lq: int, lk: int, d: int, dv: int) -> str:
        """Q K^T, the softmax over the scores, and P V (``srcs``: the reads of q, k and v); the id of
        the P V op."""
        scores = batch * lq * lk
        qk = self.emit(
            "matmul_qk",
            srcs[:2],
            name=f"{base}.qk",
            batch=batch,
            m=lq,
            k=d,
            n=lk,
            elements=scores,
            macs=scores * d,
            output_bytes=scores * FP_BYTES,
        )
        sm = self.emit(
            "softmax",
            [(qk, 0, scores, 8 * FP_BYTES)],
            name=f"{base}.softmax",
            elements=scores,
            output_bytes=scores * FP_BYTES,
        )
        return self.emit(
            "matmul_av",
            [(sm, 0, scores, 8 * FP_BYTES), srcs[2]],
            name=f"{base}.av",
            batch=batch,
            m=lq,
            k=lk,
            n=dv,
            elements=batch * lq * dv,
            macs=scores * dv,
            output_bytes=batch * lq * dv * FP_BYTES,
        )

    def _conv(self, args, kwargs, acts, outs) -> str:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = (args[2] if len(args) > 2 else kwargs.get("bias")) is not None
        groups = int(args[6] if len(args) > 6 else kwargs.get("groups", 1))
        out = outs[0]
        kvol = _numel(w.shape[2:])
        # conv weight [Cout, Cin/g, *k]; transposed [Cin, Cout/g, *k]
        if w.shape[1] * groups == x.shape[1]:  # a convolution: out positions x (Cin/g * k) x Cout/g
            m = _numel(out.shape) // out.shape[1]
            k, n = w.shape[1] * kvol, w.shape[0] // groups
        else:  # transposed: input positions x Cin/g x (Cout/g * k)
            m = _numel(x.shape) // x.shape[1]
            k, n = w.shape[0] // groups, w.shape[1] * kvol
        macs = groups * m * k * n
        return self.emit(
            "conv",
            [self.read(x)],
            batch=groups,
            m=m,
            k=k,
            n=n,
            elements=_numel(out.shape),
            macs=macs,
            weight_bytes=(_numel(w.shape) + (out.shape[1] if bias else 0)) * FP_BYTES,
            output_bytes=_numel(out.shape) * FP_BYTES,
        )


def record_module(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> list[Op]:
    """Ops of one forward pass of ``model`` (already on the meta device) on ``args`` / ``kwargs``."""
    rec = _Recorder(model)
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def push(mod, _inputs):
        path = names.get(mod, "")
        runs = rec.calls.get(path, 0)
        rec.calls[path] = runs + 1
        rec.stack.append(path if runs == 0 or not path else f"{path}#{runs + 1}")

    def pop(mod, _inputs, _output):
        rec.stack.pop()

    for mod in names:
        hooks.append(mod.register_forward_pre_hook(push))
        hooks.append(mod.register_forward_hook(pop))
    try:
        with torch.no_grad(), rec:
            model(*args, **(kwargs or {}))
    finally:
        for h in hooks:
            h.remove()
    return rec.ops


# ---- what a user names ------------------------------------------------------------------------
def resolve(ref: str, field: str) -> object:
    """``package.module:attribute`` -> the attribute (one line, exit 2 when it cannot be found)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ConfigError(field, ref, "package.module:attribute (e.g. mypkg.models:build_model)")
    mod_name, attr = ref.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(field, ref, f"an importable module ({e})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, ref, f"an attribute of {mod_name}")
        obj = getattr(obj, part)
    return obj


_DTYPES = {"float": torch.float32, "half": torch.float16, "long": torch.int64, "int": torch.int32, "bool": torch.bool}


def parse_inputs(spec: str) -> tuple[tuple, dict]:
    """``2x4x32x32,timestep=2:long`` -> meta tensors: positional shapes, then ``name=shape``; a
    ``:dtype`` suffix picks float (default), half, long, int or bool."""
    args, kwargs = [], {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, _, rest = part.rpartition("=")
        shape_s, _, dtype_s = rest.partition(":")
        try:
            shape = tuple(int(d) for d in shape_s.split("x"))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape) or (dtype_s and dtype_s not in _DTYPES):
            raise ConfigError(
                "input", part, f"a shape like 2x4x32x32, optionally name= and :dtype ({', '.join(_DTYPES)})"
            )
        if math.prod(shape) > budgets.MAX_MACS:  # torch refuses (overflow) beyond int64; counts stay exact below
            raise ConfigError("input", part, f"a tensor of at most 2^62 elements (this one has {math.prod(shape):.3g})")
        t = torch.empty(shape, dtype=_DTYPES[dtype_s or "float"], device="meta")
        if key:
            kwargs[key] = t
        elif kwargs:
            raise ConfigError("input", part, "positional shapes before name=shape ones")
        else:
            args.append(t)
    return tuple(args), kwargs


def _example_inputs(obj) -> tuple[tuple, dict]:
    """What an example-inputs factory returned, as (args, kwargs) on the meta device."""
    out = obj() if callable(obj) else obj
    if isinstance(out, dict):
        args, kwargs = (), out
    elif isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) and isinstance(out[0], (tuple, list)):
        args, kwargs = tuple(out[0]), out[1]
    elif isinstance(out, (tuple, list)):
        args, kwargs = tuple(out), {}
    else:
        args, kwargs = (out,), {}
    to_meta = lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tuple(to_meta(a) for a in args), {k: to_meta(v) for k, v in kwargs.items()}


def trace_model(
    model: str | nn.Module | Callable,
    inputs: str | tuple | Callable,
    num_steps: int = 1,
    name: str | None = None,
) -> Trace:
    """The float op trace of ``num_steps`` forward passes of a user's model.

    ``model``: an ``nn.Module``, a factory returning one, or ``"package.module:factory"``; it is built
    on the meta device (no weights allocated). ``inputs``: a shape string (:func:`parse_inputs`), an
    example-inputs factory (``"package.module:fn"`` or a callable returning args, kwargs or both), or
    a tuple of tensors."""
    label = name or (model if isinstance(model, str) else type(model).__name__)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError("steps", num_steps, "a positive integer")
    factory = resolve(model, "model") if isinstance(model, str) else model
    if isinstance(factory, nn.Module):
        module = factory.to("meta")
    elif callable(factory):
        try:
            with torch.device("meta"):
                module = factory()
        except TypeError as e:
            raise ConfigError("model", label, f"a factory callable with no arguments ({e})") from None
        if not isinstance(module, nn.Module):
            raise ConfigError("model", label, "a factory returning a torch.nn.Module")
        module = module.to("meta")
    else:
        raise ConfigError("model", label, "an nn.Module or a factory returning one")
    module.eval()
    if isinstance(inputs, str) and ":" in inputs and "=" not in inputs and not inputs[:1].isdigit():
        args, kwargs = _example_inputs(resolve(inputs, "inputs"))
    elif isinstance(inputs, str):
        args, kwargs = parse_inputs(inputs)
    elif callable(inputs):
        args, kwargs = _example_inputs(inputs)
    else:
        args, kwargs = tuple(inputs), {}
    try:
        step_ops = record_module(module, args, kwargs)
    except ConfigError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("inputs", str(inputs)[:80], f"inputs the model accepts ({first[:160]})") from None
    _check_budget(step_ops, num_steps, label)
    ops = [op if s == 0 else _with_step(op, s) for s in range(num_steps) for op in step_ops]
    batch = next((t.shape[0] for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim()), 1)
    meta = {"workload": label, "num_steps": num_steps, "model_batch": int(batch), "recipe": "fp16", "source": "module"}
    return Trace(ops=ops, meta=meta)


def _check_budget(step_ops: list, num_steps: int, label: str) -> None:
    """Refuse a trace beyond the workload budgets (``workloads.presets``) before building it: a
    huge ``--steps`` would otherwise loop for minutes even over a model of no ops."""
    ops = max(1, len(step_ops)) * num_steps
    if ops > budgets.MAX_TRACE_OPS:
        raise ConfigError(
            "steps",
            num_steps,
            f"a trace of at most {budgets.MAX_TRACE_OPS:,} ops ({label}: {len(step_ops):,} ops per step, {num_steps:,} steps)",
        )
    macs = sum(op.macs for op in step_ops) * num_steps
    if macs > budgets.MAX_MACS:
        raise ConfigError("inputs", label, f"a trace of at most 2^62 MACs so every count stays exact ({macs:.3g})")


def _with_step(op: Op, step: int) -> Op:
    new = object.__new__(Op)
    new.__dict__.update(op.__dict__)
    new.__dict__["step"] = step
    return new
