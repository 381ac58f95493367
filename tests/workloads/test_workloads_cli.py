"""Workload presets, user YAML workloads, and the bad-input contract of the command line:
one line naming the field and what is allowed, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from workloads.errors import ConfigError
from workloads.presets import Gemm, get_workload, preset_names


def codesign(*args):
    return subprocess.run([sys.executable, "-m", "codesign.cli", *args], capture_output=True, text=True)


def test_presets_are_listed_and_valid():
    names = preset_names()
    assert {"opensora-v1.0-16x256x256", "opensora-v1.0-16x512x512", "stdit-tiny"} <= set(names)
    w = get_workload("opensora-v1.0-16x512x512")
    assert (w.num_steps, w.cfg_scale, w.latent_size, w.num_tokens, w.model_batch) == (100, 7.0, (16, 64, 64), 16384, 2)
    assert get_workload("opensora-v1.0-16x256x256").num_spatial == 256
    assert get_workload("gemm:64,128,32") == Gemm(64, 128, 32)


def test_user_yaml_workload(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "model: {depth: 4, hidden_size: 128, num_heads: 4, caption_channels: 64, "
        "model_max_length: 10}\nnum_frames: 8\nheight: 128\nwidth: 64\nsampler: rflow\n"
        "num_steps: 30\ncfg_scale: 7.0\n"
    )
    w = get_workload(str(f))
    assert w.name == "mine" and w.latent_size == (8, 16, 8) and w.num_tokens == 8 * 32


BAD_YAML = {
    "unknown field": ("num_frames: 8\nheight: 64\nwidth: 64\nframes_per_second: 8\n", "workload.frames_per_second"),
    "zero dimension": ("num_frames: 0\nheight: 64\nwidth: 64\n", "num_frames: got 0"),
    "negative dimension": ("num_frames: 8\nheight: -64\nwidth: 64\n", "height: got -64"),
    "resolution not divisible": (
        "num_frames: 8\nheight: 100\nwidth: 64\n",
        "height: got 100; allowed: a multiple of 16",
    ),
    "heads do not divide hidden": (
        "model: {hidden_size: 100, num_heads: 16}\nnum_frames: 8\nheight: 64\nwidth: 64\n",
        "model.num_heads",
    ),
    "bad sampler": ("num_frames: 8\nheight: 64\nwidth: 64\nsampler: ddim\n", "sampler: got 'ddim'"),
    "malformed yaml": ("num_frames: [8\nheight: 64\n", "valid YAML"),
    "missing field": ("height: 64\nwidth: 64\n", "workload.num_frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_bad_workload_yaml(tmp_path, case):
    text, message = BAD_YAML[case]
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        get_workload(str(f))


@pytest.mark.parametrize(
    "args, message",
    [
        (["trace", "--workload", "opensora-v9"], "workload: got 'opensora-v9'; allowed: one of"),
        (["trace", "--workload", "gemm:4,-1,4"], "gemm.k: got -1"),
        (["trace", "--workload", "gemm:4,4"], "gemm:M,K,N"),
        (["trace", "--workload", "stdit-tiny", "--out", "x.txt"], "out: got 'x.txt'"),
        (
            ["sample", "--workload", "stdit-tiny", "--checkpoint", "missing.pth"],
            "checkpoint: got 'missing.pth'; allowed: an existing",
        ),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message):
    r = codesign(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_bad_yaml_file(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("num_frames: 8\nheight: 60\nwidth: 64\n")
    r = codesign("trace", "--workload", str(f))
    assert r.returncode == 2 and "height: got 60" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_workloads_and_trace_json(tmp_path):
    r = codesign("workloads", "--json")
    assert r.returncode == 0
    assert "opensora-v1.0-16x512x512" in {row["name"] for row in json.loads(r.stdout)}
    out = tmp_path / "t.parquet"
    r = codesign("trace", "--workload", "stdit-tiny", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["steps"] == 10 and s["ops"] == 720 and out.is_file()
    assert {"total_macs", "weight_storage_bytes", "activation_bytes"} <= set(s)
