"""`codesign sample`: the float model, or a quantized recipe (emulator or fake-quant) with --compare
writing both latents and the SQNR of one against the other; bad arguments as one line, exit 2, before
any work."""

import json

import pytest
import torch
from safetensors.torch import load_file

from codesign.cli import main
from quantmodel.eval.quality import sample_metrics


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_quantized_sample_with_compare_writes_both_latents(capsys, tmp_path):
    out = tmp_path / "s.safetensors"
    rc, text, _ = _run(
        capsys,
        *("sample", "--workload", "stdit-tiny", "--steps", "2", "--recipe", "asq-w8a8", "--prompts", "1"),
        *("--compare", "--out", str(out), "--json"),
    )
    assert rc == 0
    rep = json.loads(text)
    lat = load_file(str(out))
    assert set(lat) == {"latent", "latent_float"} and lat["latent"].shape == lat["latent_float"].shape
    m = sample_metrics(lat["latent_float"], lat["latent"])
    assert rep["sqnr_db"] == m["sqnr_db"] and rep["recipe"] == "asq-w8a8" and rep["backend"] == "emulator"
    assert 0 < rep["sqnr_db"] < 100  # quantized: close to the float sample, not equal to it
    # the float latent is what the float sampler alone writes
    rc, _, _ = _run(
        capsys, "sample", "--workload", "stdit-tiny", "--steps", "2", "--out", str(tmp_path / "f.safetensors")
    )
    assert rc == 0 and torch.equal(load_file(str(tmp_path / "f.safetensors"))["latent"], lat["latent_float"])


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--recipe", "asq-w8a8", "--backend", "gpu"], "backend"),
        (["--recipe", "asq-w8a8", "--nonlinear", "fp8"], "nonlinear"),
        (["--device", "tpu"], "device"),
        (["--compare"], "compare"),
        (["--recipe", "asq-w8a8", "--artifact", "no-such.safetensors"], "artifact"),
        (["--out", "no-such-dir/x.safetensors"], "out"),
        (["--recipe", "no-such-recipe"], "recipe"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, tmp_path, argv, field):
    rc, out, err = _run(capsys, "sample", "--workload", "stdit-tiny", "--steps", "1", *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], err
    if not torch.cuda.is_available():
        rc, _, err = _run(capsys, "sample", "--workload", "stdit-tiny", "--device", "cuda")
        assert rc == 2 and "no CUDA device" in err
