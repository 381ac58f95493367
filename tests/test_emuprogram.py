"""The compiled blocks (quantmodel.emuprogram) are a speed-up only: a forward through them equals the
emulator's eager forward bit for bit, for every static recipe family, both temporal-embedding
placements, several steps and inputs (weight sets sharing one buffer pool), one and two threads, and
on shapes where the eager path splits its work (row-blocked softmax, flat-blocked GELU, column-blocked
GEMMs); configurations outside the program's scope keep the eager path."""
import dataclasses

import pytest
import torch

from quantmodel import ckernels
from quantmodel.calibrate import calibrate
from quantmodel.emulator import IntegerEmulator
from quantmodel.quantize import build_artifact
from quantmodel.recipes import get_recipe
from quantmodel.stdit import STDiTConfig, build_stdit

pytestmark = pytest.mark.skipif(ckernels.lib() is None,
                                reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)")


def _setup(w):
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    return model, calibrate(model, w, num_prompts=1)


def _inputs(model, g, step: int, rep: int):
    cfg = model.cfg
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    return x, torch.tensor([999 - 300 * step - 11 * rep] * 2), y


def _compare(model, art, steps: int, seed: int = 0) -> IntegerEmulator:
    """Program and eager forwards on the same inputs, two inputs per step; returns the program's emulator."""
    fast = IntegerEmulator(model, art, nonlinear="fp16")
    eager = IntegerEmulator(model, art, nonlinear="fp16")
    eager.use_program = False
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for rep in range(2):
            x, t, y = _inputs(model, g, step, rep)
            a, b = fast.forward(x, t, y, step), eager.forward(x, t, y, step)
            assert torch.equal(a, b), (art.recipe.name, step, rep, int((a != b).sum()))
    assert fast._programs and all(p is not None for p in fast._programs.values())  # the program ran
    return fast


@pytest.mark.parametrize("temporal_pos", ["attention", "residual"])
def test_program_equals_eager_forward_for_static_recipes(tiny_workload, temporal_pos):
    w = dataclasses.replace(tiny_workload, num_steps=3,
                            model=dataclasses.replace(tiny_workload.model, temporal_pos=temporal_pos))
    model, stats = _setup(w)
    for name in ("asq-w8a8", "static-w6a6", "tsq-tsw-w4a8", "groups2-cal-w6a6"):
        art = build_artifact(model, get_recipe(name), stats, w.num_steps)
        emu = _compare(model, art, w.num_steps)
        assert len(emu._programs) == len(set(art.step_to_set))  # one program per weight set
        assert len(emu._program_pools) == 1  # sharing one set of buffers


def test_program_equals_eager_on_blocked_shapes_and_thread_counts(tiny_workload):
    """hidden 256 on 4 x 128 x 128: 64-token frames (the 131k-score softmax runs in row blocks), GELU
    over 512 x 1024 values (flat blocks), fc1 with 1024 outputs (column-blocked GEMM)."""
    w = dataclasses.replace(tiny_workload, num_frames=4, height=128, width=128, num_steps=2,
                            model=dataclasses.replace(tiny_workload.model, hidden_size=256, num_heads=4, depth=1))
    model, stats = _setup(w)
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    n0 = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            _compare(model, art, w.num_steps, seed=nt)
    finally:
        torch.set_num_threads(n0)


def test_out_of_scope_configurations_keep_the_eager_path(tiny_workload):
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model, stats = _setup(w)
    x, t, y = _inputs(model, torch.Generator().manual_seed(3), 0, 0)
    attn = dataclasses.replace(get_recipe("asq-w8a8"), quantize_attention=True)
    cases = [(get_recipe("dynamic-w8a8"), "fp16", False), (attn, "fp16", False),
             (get_recipe("asq-w8a8"), "int", False), (get_recipe("asq-w8a8"), "fp16", True)]
    for recipe, mode, verify in cases:
        art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" else None, w.num_steps)
        emu = IntegerEmulator(model, art, nonlinear=mode, verify=verify)
        emu.forward(x, t, y, 0)
        assert all(p is None for p in emu._programs.values()), (recipe.name, mode, verify)
