"""The integer emulator on a CUDA GPU gives the CPU emulator's final sample bit for bit (stdit-tiny and
a mid-size STDiT, static and dynamic recipes, both vector-unit modes), and `verify` on the GPU finds
every integer op equal to the float64 reference. Skipped where no CUDA device is present (CI has none)."""

import dataclasses

import pytest
import torch

from quantmodel.emulator.integer import IntegerEmulator
from quantmodel.eval.quality import eval_inputs, sample, verify_recipe
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import calibrate
from workloads.presets import get_workload
from workloads.recipes import get_recipe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _mid():
    """Hidden 384 (6 heads), 2 blocks, 16 frames of 16x16 latent -> 1,024 tokens of 64 per frame."""
    w = get_workload("stdit-tiny")
    dims = dataclasses.replace(w.model, depth=2, hidden_size=384, num_heads=6, caption_channels=256)
    return dataclasses.replace(w, name="stdit-mid", model=dims, num_frames=16, height=128, width=128, num_steps=2)


WORKLOADS = {"tiny": lambda: dataclasses.replace(get_workload("stdit-tiny"), num_steps=3), "mid": _mid}


@pytest.fixture(scope="module", params=sorted(WORKLOADS))
def setup(request):
    w = WORKLOADS[request.param]()
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    stats = calibrate(model, w, num_prompts=1)
    z, y = eval_inputs(model, 1)
    return w, model, stats, z, y


@pytest.mark.xfail(
    strict=True,
    reason="not yet: the float parts around the integer blocks (embedders, final layer, sampler) run in the "
    "device's float libraries; measured on an H100 (torch 2.11): t_block's output already differs in 762 values",
)
@pytest.mark.parametrize("recipe", ["asq-w8a8", "dynamic-w8a8"])
@pytest.mark.parametrize("mode", ["fp16", "int"])
def test_cuda_sample_equals_cpu_bit_for_bit(setup, recipe, mode):
    w, model, stats, z, y = setup
    r = get_recipe(recipe)
    art = build_artifact(model, r, stats if r.scheme != "dynamic" else None, w.num_steps)
    cpu = sample(IntegerEmulator(model, art, nonlinear=mode).model_fn, model, w, z, y)
    gpu_model = build_stdit(STDiTConfig.from_workload(w), seed=0).cuda()
    emu = IntegerEmulator(gpu_model, art, nonlinear=mode, device="cuda")
    gpu = sample(emu.model_fn, gpu_model, w, z, y)
    assert torch.equal(cpu, gpu), f"{int((cpu != gpu).sum())} of {cpu.numel()} values differ"


@pytest.mark.parametrize("recipe", ["asq-w8a8", "dynamic-w8a8"])
def test_cuda_verify_zero_mismatches(setup, recipe):
    w, model, stats, _, _ = setup
    r = get_recipe(recipe)
    gpu_model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    rep = verify_recipe(gpu_model, w, r, "int", stats=stats if r.scheme != "dynamic" else None, device="cuda")
    assert rep["device"].startswith("cuda")
    assert rep["mismatches"] == 0 and rep["overflow"] is None and rep["fast_path_equal"] is True
