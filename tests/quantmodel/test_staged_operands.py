"""The int mode's per-step operands staged from the host (what lets a CUDA graph replay the blocks, see
quantmodel.emulator.cudagraph) give the eager forward's integers bit for bit: the adaLN modulation's
16-bit codes and fixed-point factors computed on the CPU from the timestep features, then read by the
same kernels. Checked on the CPU (where staging is opt-in) over static recipes with SmoothQuant folded
into the modulation, zero points, per-step weight sets and integer attention, over several steps; the
StepGraphs bookkeeping (eager forwards never capture off CUDA) is exercised along the way."""

import dataclasses
import traceback

import pytest
import torch

from quantmodel.emulator.integer import IntegerEmulator, StepChunk
from quantmodel.quant.artifact import build_artifact
from workloads.recipes import get_recipe


@pytest.fixture(scope="module")
def setup(calibrated_tiny):
    return calibrated_tiny(3)


@pytest.mark.parametrize(
    "recipe, int_attention",
    [("asq-w8a8", False), ("asq-asym-w8a8", False), ("static-w6a6", False), ("tsq-tsw-w4a8", True)],
)
def test_staged_operands_give_the_eager_integers(setup, recipe, int_attention):
    w, model, stats = setup
    r = dataclasses.replace(get_recipe(recipe), quantize_attention=int_attention)
    art = build_artifact(model, r, stats, w.num_steps)
    staged = IntegerEmulator(model, art, nonlinear="int")
    eager = IntegerEmulator(model, art, nonlinear="int")
    for emu in (staged, eager):
        emu.use_program = False  # the eager blocks (the compiled CPU program has its own operands)
    staged.stage_operands, eager.stage_operands = True, False
    seen = []
    stage = staged.graphs.stage
    staged.graphs.stage = lambda fn: seen.append(fn) or stage(fn)
    g = torch.Generator().manual_seed(1)
    cfg = model.cfg
    for step in range(w.num_steps):
        x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
        y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
        t = torch.tensor([999 - 333 * step] * 2)
        a, b = staged.forward(x, t, y, step), eager.forward(x, t, y, step)
        assert torch.equal(a, b), (recipe, step, int((a != b).sum()))
    # every block staged its two modulations and three gates each step; nothing was captured on the CPU
    assert len(seen) == 5 * len(model.blocks) * w.num_steps
    assert staged.graphs.captured is None and staged.graphs.replays == 0


def test_step_chunk_is_the_modulation_chunk(setup):
    """A StepChunk's host values and device values are the chunk the eager modulation takes."""
    _, model, _ = setup
    blk = model.blocks[0]
    t0 = torch.randn(2, 6 * model.cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    want = (blk.scale_shift_table[None] + t0.reshape(2, 6, -1)).chunk(6, dim=1)
    for i in range(6):
        c = StepChunk(blk.scale_shift_table, t0, 2, i, blk.scale_shift_table.detach().clone())
        assert torch.equal(c.dev, want[i]) and torch.equal(c.at(t0), want[i])


@pytest.mark.parametrize("mode", ["int", "fp16"])
def test_blocks_make_no_tensor_from_host_data_once_warm(setup, mode):
    """What a CUDA graph capture needs of the blocks: the forward it captures repeats an eager one, and
    outside the staged operands that forward makes no tensor from Python or host data (on CUDA each is
    a host-to-device copy, which a capture cannot hold; per-layer constants are made once, on the first
    forward). Checked on the CPU with staging forced, integer attention products included."""
    from torch.overrides import TorchFunctionMode

    w, model, stats = setup
    art = build_artifact(
        model, dataclasses.replace(get_recipe("asq-w8a8"), quantize_attention=True), stats, w.num_steps
    )
    emu = IntegerEmulator(model, art, nonlinear=mode)
    emu.use_program, emu.stage_operands = False, True
    in_stage = [False]
    stage = emu.graphs.stage

    def staged(fn):
        def host(t0_host):
            in_stage[0] = True
            try:
                return fn(t0_host)
            finally:
                in_stage[0] = False

        return stage(host)

    emu.graphs.stage = staged
    made = []

    class Factories(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("tensor", "as_tensor", "from_numpy") and not in_stage[0]:
                at = [f for f in traceback.extract_stack() if "quantmodel" in f.filename][-1]
                made.append(f"{func.__name__} at {at.filename.rsplit('quantmodel', 1)[-1]}:{at.lineno}")
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(3)
    cfg = model.cfg
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    emu.forward(x, torch.tensor([999] * 2), y, 0)
    run = emu.graphs.run

    def watched(*args):
        with Factories():
            return run(*args)

    emu.graphs.run = watched
    emu.forward(x, torch.tensor([500] * 2), y, 1)
    assert made == []
