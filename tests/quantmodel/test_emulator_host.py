"""The emulator's host side of a denoising step (what a CUDA run waits on between the blocks' replays):
the captions are projected once per prompt, not once per step, with the same values; and the host's
allocator, once told to keep freed memory, serves a step's large tensors from pages already touched."""

import subprocess
import sys
import textwrap

import pytest
import torch

from quantmodel.emulator.integer import IntegerEmulator
from quantmodel.quant.artifact import build_artifact
from workloads.recipes import get_recipe


def test_captions_are_projected_once_while_they_are_equal(calibrated_tiny):
    w, model, stats = calibrated_tiny(3)
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear="int")
    calls = []
    emu.host.y_embedder.register_forward_hook(lambda *a: calls.append(1))
    cfg, g = model.cfg, torch.Generator().manual_seed(3)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    t = torch.tensor([999, 999])
    y0 = y.clone()
    outs = [emu.forward(x, t, y, step) for step in range(w.num_steps)]
    assert len(calls) == 1
    y[1] += 1.0  # the caller's tensor changed in place: new captions, projected again
    outs.append(emu.forward(x, t, y, 0))
    assert len(calls) == 2
    fresh = IntegerEmulator(model, art, nonlinear="int")
    for i, (step, captions) in enumerate([(0, y0), (1, y0), (2, y0), (0, y)]):
        fresh._caption_memo = None  # projected anew: the values each call must give
        assert torch.equal(outs[i], fresh.forward(x, t, captions, step)), i


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_host_memory_serves_a_steps_tensors_without_page_faults():
    """The host's float work of a full-size step (37.7 MB [2, 4096, 1152] float32 tensors made and
    freed): once the setting is on, a step reuses the pages of the one before (glibc's default maps
    and unmaps each such tensor, faulting all 9,216 of its pages every time). In a child process: the
    setting is the process's."""
    script = textwrap.dedent(
        """
        import resource, torch
        from quantmodel.emulator import hostmem
        assert hostmem.keep_freed_host_memory()
        x = torch.randn(2, 4096, 1152)

        def step():  # what the final layer does: LayerNorm, modulate
            return torch.nn.functional.layer_norm(x, (1152,)) * 1.5 + 0.5

        for _ in range(10):  # warm-up: the heap grows to the step's peak
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            step()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10, x.nbytes // resource.getpagesize())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    faults_per_step, pages = map(int, out.split())
    assert faults_per_step < pages // 20, (faults_per_step, pages)


def test_model_fns_build_no_autograd_graph(calibrated_tiny):
    """A sampler's model_fn keeps no autograd graph (at full size one would hold every activation of
    the 28 blocks): the integer emulator's and the fake-quant model's outputs need no grad."""
    from quantmodel.emulator.integer import FakeQuantModel

    w, model, stats = calibrated_tiny(3)
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    cfg, g = model.cfg, torch.Generator().manual_seed(4)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    t = torch.tensor([999, 999])
    for fn in (IntegerEmulator(model, art).model_fn, FakeQuantModel(model, art).model_fn):
        assert not fn(x, t, y, 0).requires_grad


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("device, kept", [("cuda", True), ("cpu", None)])
def test_codesign_keeps_host_memory_only_for_cuda_runs(tmp_path, device, kept):
    """``--device cuda`` turns the setting on before the command runs (without a GPU the command then
    refuses the device, exit 2); a CPU run leaves the allocator alone."""
    script = textwrap.dedent(
        f"""
        from codesign.cli import main
        from quantmodel.emulator import hostmem
        main(["-q", "calibrate", "--workload", "stdit-tiny", "--device", "{device}", "--prompts", "1",
              "--out", r"{tmp_path / "stats.safetensors"}"])
        print(hostmem._applied)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == str(kept)
