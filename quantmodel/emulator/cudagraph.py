"""The emulator's blocks on CUDA as one captured graph per weight set, replayed each denoising step.

Why: on a GPU the eager integer emulator spends much of its time on the host. A forward of the 28
blocks is thousands of small kernels (int8 GEMMs, requantizations, the vector unit's compiled
kernels) dispatched from Python, plus a host sync wherever a value had to be read back (an H100
profile of the unfused int mode: 330 ms of syncs in a 970 ms forward; the fp16 mode host-bound).
A CUDA graph records the kernels of one forward once; a replay launches all of them
with one call, so the forward runs at the speed of the GPU.

What may change between replays is only what a graph reads from memory: the inputs (embedded
tokens, projected text, timestep features), copied into the graph's static tensors, and the **per-step
operands** of the int mode: the adaLN modulation (shift, scale, gate [B, 1, C]) quantized to 16 bits
at the scale of its own abs-max, then turned into the fixed-point factors the modulate and gated-add
kernels read (:func:`~quantmodel.intarith.intops.modulate_factors`, ``gate_q16``). Those depend on the
timestep, and their constants are derived on the host from a data-dependent scale, so they are
computed on the host each step (a chip's host would do the same: they are [B, 1, C] per block) by
the closures the emulator registers through :meth:`StepGraphs.stage`, and copied in with one
host-to-device copy. Everything else a forward computes from the weight set's static calibration is
a constant of the graph, which is why a graph belongs to one (weight set, shapes) key.

Values: a replay runs the kernels of the eager forward it was captured from, with the same constants,
on the same inputs, so it returns the eager forward's integers bit for bit (tests/quantmodel/test_gpu.py
compares the two over whole samples). Policy: a key is captured the second time in a row it is run
(ASQ: every step after the first; a per-step weight set, TSQ, never repeats, so it stays eager rather
than paying a capture per step); one graph is kept. Where capture fails (an op the emulator runs
that a graph cannot hold), the key runs eagerly from then on and a warning says why.
Opt-in for now, ``QUANTMODEL_CUDA_GRAPHS=1``: written and tested on the CPU (the staged operands; the
capture needs a GPU) while no GPU could be had; it becomes the default on CUDA once the GPU tests
(tests/quantmodel/test_gpu.py) pass with it.
"""

from __future__ import annotations

import os
import traceback
import warnings
from dataclasses import dataclass, field

import torch

from quantmodel.intarith import fixedpoint


def enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("QUANTMODEL_CUDA_GRAPHS", "0") == "1"


@dataclass
class _Captured:
    key: tuple
    graph: torch.cuda.CUDAGraph
    inputs: tuple  # static copies of (h, y, t0)
    out: torch.Tensor  # what the captured forward returned (overwritten by each replay)
    fns: list  # the staging closures, in the order the forward asked for them
    flat: torch.Tensor  # float64 [total]: every staged operand, one after another
    keep: list = field(default_factory=list)  # the memoised device constants the kernels read


class StepGraphs:
    """Runs ``forward(h, y, t0)`` (the blocks) eagerly or as a replayed CUDA graph; see the module doc.

    ``stage(fn)`` is how the forward obtains a per-step operand: ``fn(t0_host)`` returns float64 CPU
    tensors; the device tensors holding them come back (copied now when eager; views of the graph's
    staged buffer when capturing, refilled before every replay)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.last_key = None
        self.failed: set = set()
        self.captured: _Captured | None = None
        self._t0_host = None
        self._log: list | None = None  # the staged operands' shapes, per stage() call of this eager forward
        self._views: list | None = None  # while capturing: the staged views still to hand out
        self._last_log: list = []  # the staged shapes of the last eager forward
        self._capture_fns: list = []
        self.replays = 0  # forwards served by a replay (tests and benchmarks read it)

    # ---- the staging protocol -------------------------------------------------------------------------
    def stage(self, fn) -> tuple:
        if self._views is not None:  # capturing: the next operand's static views
            views = self._views.pop(0)
            self._capture_fns.append(fn)
            return views
        outs = fn(self._t0_host)
        if self._log is not None:
            self._log.append([tuple(o.shape) for o in outs])
        if self.device.type != "cuda":
            return tuple(o.to(self.device) for o in outs)
        return tuple(o.pin_memory().to(self.device, non_blocking=True) for o in outs)

    # ---- a forward ------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Inside :meth:`run`: the forward may stage its per-step operands."""
        return self._t0_host is not None

    def run(self, key: tuple, forward, h, y, t0, t0_host, graphable: bool = True) -> torch.Tensor:
        """``forward(h, y, t0)``: replayed where ``key`` has a graph, captured where it ran last time
        too (and ``graphable``: the forward makes no host sync), else eager."""
        self._t0_host = t0_host
        try:
            return self._run(key, forward, h, y, t0, t0_host, graphable)
        finally:
            self._t0_host = None

    def _run(self, key, forward, h, y, t0, t0_host, graphable: bool) -> torch.Tensor:
        c = self.captured
        if c is not None and c.key == key:
            return self._replay(c, h, y, t0, t0_host)
        if graphable and key == self.last_key and key not in self.failed and enabled(self.device):
            shapes = self._last_log
            c = self._capture(key, forward, h, y, t0, shapes)
            if c is not None:
                return self._replay(c, h, y, t0, t0_host)
        self.last_key = key
        self._log = []
        try:
            out = forward(h, y, t0)
        finally:
            self._last_log, self._log = self._log, None
        return out

    def _capture(self, key, forward, h, y, t0, shapes) -> _Captured | None:
        self.captured = None  # one graph at a time: its memory pool goes with it
        sizes = [[_numel(s) for s in op] for op in shapes]
        flat = torch.zeros(sum(map(sum, sizes)), dtype=torch.float64, device=self.device)
        views, at = [], 0
        for op_shapes, op_sizes in zip(shapes, sizes, strict=True):
            vs = []
            for s, n in zip(op_shapes, op_sizes, strict=True):
                vs.append(flat[at : at + n].view(s))
                at += n
            views.append(tuple(vs))
        inputs = (h.clone(), y.clone(), t0.clone())
        graph = torch.cuda.CUDAGraph()
        self._views, self._capture_fns = views, []
        try:
            torch.cuda.synchronize(self.device)
            with fixedpoint.kept_constants() as kept, torch.cuda.graph(graph):
                out = forward(*inputs)
            if self._views:
                raise RuntimeError(f"the forward staged {len(shapes) - len(self._views)} of {len(shapes)} operands")
        except Exception as e:  # an op a graph cannot hold: this key runs eagerly from now on
            self.failed.add(key)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            frames = [f for f in traceback.extract_tb(e.__traceback__) if "quantmodel" in f.filename]
            if frames:  # where in the emulator: the op to make graph-safe
                msg += f" (at {frames[-1].filename.rsplit('quantmodel', 1)[-1]}:{frames[-1].lineno})"
            warnings.warn(f"CUDA graph capture failed, running the blocks eagerly: {msg}", stacklevel=3)
            torch.cuda.synchronize(self.device)
            return None
        finally:
            self._views = None
        self.captured = _Captured(key, graph, inputs, out, self._capture_fns, flat, kept)
        return self.captured

    def _replay(self, c: _Captured, h, y, t0, t0_host) -> torch.Tensor:
        for dst, src in zip(c.inputs, (h, y, t0), strict=True):
            dst.copy_(src, non_blocking=True)
        if c.fns:
            parts = [o.reshape(-1) for fn in c.fns for o in fn(t0_host)]
            staged = torch.cat(parts).pin_memory()  # float64, like the flat buffer
            if staged.numel() != c.flat.numel():
                raise RuntimeError(f"staged operands changed size: {staged.numel()} != {c.flat.numel()}")
            c.flat.copy_(staged, non_blocking=True)
        c.graph.replay()
        self.replays += 1
        return c.out


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
