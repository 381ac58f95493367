"""Caption masks from the command line: ``sample --text`` with a ``mask`` key, ``calibrate`` with
``--text-tokens``; padding tokens change nothing, bad masks are one line and exit code 2."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from codesign.cli import main


def _features(path, padding: float, valid=(3, 5)):
    y = torch.randn(2, 1, 8, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 8, dtype=torch.int64)
    for i, n in enumerate(valid):
        mask[i, :n] = 1
        y[i, 0, n:] *= padding
    save_file({"y": y, "mask": mask}, str(path))
    return str(path)


def test_sample_with_a_mask_ignores_padding(tmp_path, wl, capsys):
    outs = []
    for i, padding in enumerate((1.0, 100.0)):
        text = _features(tmp_path / f"t{i}.safetensors", padding)
        assert main(["sample", "--workload", wl, "--text", text, "--out", str(tmp_path / f"x{i}.safetensors")]) == 0
        outs.append(load_file(str(tmp_path / f"x{i}.safetensors"))["latent"])
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("backend", ["emulator", "fakequant"])
def test_quantized_sample_with_a_mask_ignores_padding(tmp_path, wl, backend):
    """The integer emulator and fake-quant see only the valid tokens: padding scaled 100x changes
    neither the dynamic ranges nor the sample."""
    outs = []
    for i, padding in enumerate((1.0, 100.0)):
        text = _features(tmp_path / f"t{i}.safetensors", padding)
        out = str(tmp_path / f"x{i}.safetensors")
        args = ["sample", "--workload", wl, "--text", text, "--recipe", "dynamic-w8a8", "--backend", backend]
        assert main([*args, "--prompts", "1", "--out", out]) == 0
        outs.append(load_file(out)["latent"])
    assert torch.equal(outs[0], outs[1])


def test_bad_masks_and_token_counts_are_one_line_exit_2(tmp_path, wl, capsys):
    text = _features(tmp_path / "bad.safetensors", 1.0, valid=(3, 0))
    assert main(["sample", "--workload", wl, "--text", text]) == 2
    err = capsys.readouterr().err
    assert "no valid token in prompt(s) [1]" in err and len(err.strip().splitlines()) == 1
    out = str(tmp_path / "st.safetensors")
    assert main(["calibrate", "--workload", wl, "--text-tokens", "9", "--out", out]) == 2
    assert "from 1 to 8" in capsys.readouterr().err
    assert main(["calibrate", "--workload", wl, "--text-tokens", "0", "--out", out]) == 2
    assert "text-tokens" in capsys.readouterr().err
    assert main(["calibrate", "--workload", wl, "--text-tokens", "3", "--prompts", "1", "--out", out]) == 0
    from quantmodel.quant.calibrate import CalibStats

    assert CalibStats.load(out).meta["caption_mask"] == "valid tokens per prompt 3-3 of 8"
