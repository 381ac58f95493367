"""`codesign verify / quantize / quality / recipes`: JSON keys, exit codes, bad input as one line."""

import json

import yaml

from codesign.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_verify_json_reports_zero_mismatches(capsys, wl):
    rc, out, err = _run(
        capsys, "verify", "--workload", wl, "--recipe", "asq-w8a8", "--nonlinear", "fp16", "--prompts", "1", "--json"
    )
    assert rc == 0
    rep = json.loads(out)
    for key in (
        "layers_checked",
        "mismatches",
        "max_abs_diff_lsb",
        "layer_sqnr_db",
        "sample_sqnr_db",
        "sample_psnr_db",
        "overflow",
        "step_to_set",
    ):
        assert key in rep
    assert rep["mismatches"] == 0 and rep["max_abs_diff_lsb"] == 0 and rep["layers_checked"] == 18
    # every artifact constant re-derived from the weights and statistics, bit for bit
    assert rep["constants"]["ok"] and rep["constants"]["compared"] > 200 and not rep["constants"]["not_rederived"]
    # every fp16 vector-unit kernel checked against its independent reference (only exp / tanh may differ)
    vk = rep["vector_kernels"]
    assert set(vk) == {"dequant", "layernorm", "modulate", "softmax", "gelu", "add", "gated_add", "smooth_mul"}
    assert all(c["elements"] > 0 for c in vk.values())
    assert all(c["mismatches"] == 0 for k, c in vk.items() if not c["tolerant"])
    # the tie test ran inside verify: every rounding site got exact x.5 inputs and rounded them half to even
    assert rep["ties"]["ok"] and len(rep["ties"]["sites"]) >= 10
    assert all(s["ties"] > 0 and s["mismatches"] == 0 for s in rep["ties"]["sites"].values())
    assert set(rep["layer_sqnr_db"]) >= {"blocks.0.attn.qkv", "blocks.1.mlp.fc2"}
    # the unchecked emulator users run (compiled blocks where the C kernels are built) gives the same sample
    from quantmodel.intarith import ckernels

    assert rep["fast_path_equal"] is True and rep["ok"] is True
    assert rep["fast_path"] == ("compiled" if ckernels.lib() is not None else "eager")


def test_verify_a_subset_of_blocks_and_steps(capsys, wl):
    """--layers / --steps: only block 1's integer ops, only in step 0, are checked (the others run the
    unchecked path, which gives the same values); bad indices are refused before any work."""
    common = ("verify", "--workload", wl, "--recipe", "asq-w8a8", "--prompts", "1", "--nonlinear", "int")
    rc, out, _ = _run(capsys, *common, "--json")
    full = json.loads(out)
    rc, out, _ = _run(capsys, *common, "--layers", "1", "--steps", "0", "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["ok"] is True and rep["mismatches"] == 0
    assert rep["blocks_checked"] == [1] and rep["steps_checked"] == [0] and full["blocks_checked"] == "all"
    assert set(rep["layer_sqnr_db"]) == {k for k in full["layer_sqnr_db"] if k.startswith("blocks.1.")}
    assert 0 < rep["checks"] < full["checks"] / full["num_steps"]
    assert rep["sample_sqnr_db"] == full["sample_sqnr_db"]  # the same sample: unchecked ops give the same values
    for flag, bad in (("--layers", "7"), ("--steps", "0,x"), ("--layers", "")):
        rc, out, err = _run(capsys, *common, flag, bad)
        assert rc == 2 and not out and len(err.strip().splitlines()) == 1 and flag[2:] in err


def test_quantize_then_verify_artifact_and_quality_csv(capsys, wl, tmp_path):
    art = tmp_path / "a.safetensors"
    rc, out, _ = _run(
        capsys, "quantize", "--workload", wl, "--recipe", "tsq-tsw-w8a8", "--prompts", "1", "--out", str(art), "--json"
    )
    assert rc == 0 and json.loads(out)["num_weight_sets"] == 2 and art.is_file()
    rc, out, _ = _run(capsys, "verify", "--workload", wl, "--recipe", "tsq-tsw-w8a8", "--artifact", str(art), "--json")
    rep = json.loads(out)  # an artifact without --stats: recalibrated with the settings it records
    assert rc == 0 and rep["mismatches"] == 0 and rep["constants"]["ok"] and rep["constants"]["compared"] > 0
    d = yaml.safe_load(open(wl))
    d["num_steps"] += 1
    (tmp_path / "more_steps.yaml").write_text(yaml.safe_dump(d))
    for other, field in (("--recipe", "artifact"), ("--workload", "steps")):  # another recipe, step count
        args = ["--workload", wl, "--recipe", "tsq-tsw-w8a8"]
        args[args.index(other) + 1] = "asq-w8a8" if other == "--recipe" else str(tmp_path / "more_steps.yaml")
        rc, out, err = _run(capsys, "verify", *args, "--artifact", str(art))
        assert rc == 2 and not out and len(err.strip().splitlines()) == 1 and f"error: {field}:" in err, err
    csv = tmp_path / "q.csv"
    rc, out, _ = _run(
        capsys,
        "quality",
        "--workload",
        wl,
        "--recipes",
        "fp16,static,dynamic-w4a8",
        "--bits",
        "w8a8",
        "--prompts",
        "1",
        "--out",
        str(csv),
    )
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(csv)
    assert list(df["recipe"]) == ["fp16", "static-w8a8", "dynamic-w4a8"]
    for col in ("sqnr_db", "psnr_db", "worst_layer_sqnr_db", "weight_storage_bytes", "num_weight_sets"):
        assert col in df.columns
    assert df.loc[1, "weight_storage_bytes"] < df.loc[0, "weight_storage_bytes"]


def test_recipes_lists_presets(capsys):
    rc, out, _ = _run(capsys, "recipes", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert (
        rc == 0 and rows["tsq-tsw-w6a6"]["weight_sets"] == "steps" and rows["groups4-cal-w8a8"]["split"] == "calibrated"
    )
    assert (rows["tsq-w8a8"]["weight_sets"], rows["tsq-w8a8"]["scale_sets"]) == ("1", "steps")
    assert (rows["groups4-cal-tsq-w4a8"]["weight_sets"], rows["groups4-cal-tsq-w4a8"]["scale_sets"]) == ("1", "4")


def test_bad_input_is_one_line_and_exit_2(capsys, wl, tmp_path):
    def bad(*argv):
        rc, out, err = _run(capsys, *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "recipe" in bad("verify", "--workload", wl, "--recipe", "nope-w8a8")
    assert "w_bits" in bad("verify", "--workload", wl, "--recipe", "asq-w5a8")
    assert "nonlinear" in bad("verify", "--workload", wl, "--recipe", "asq-w8a8", "--nonlinear", "bf16")
    rfile = tmp_path / "r.yaml"
    rfile.write_text("scheme: static\nw_bits: 8\na_bits: 8\nlayers: ['blocks.*.no_such_layer']\n")
    assert "recipe.layers" in bad("verify", "--workload", wl, "--recipe", str(rfile))
    # stats of another model (seed 1) and of another step count
    stats = tmp_path / "s.safetensors"
    assert _run(capsys, "calibrate", "--workload", wl, "--seed", "1", "--prompts", "1", "--out", str(stats))[0] == 0
    assert "fingerprint" in bad("verify", "--workload", wl, "--recipe", "asq-w8a8", "--stats", str(stats))
    d = yaml.safe_load(open(wl))
    d["num_steps"] = 3
    (tmp_path / "tiny3.yaml").write_text(yaml.safe_dump(d))
    stats10 = tmp_path / "s3.safetensors"
    assert (
        _run(capsys, "calibrate", "--workload", str(tmp_path / "tiny3.yaml"), "--prompts", "1", "--out", str(stats10))[
            0
        ]
        == 0
    )
    assert "num_steps" in bad(
        "quantize",
        "--workload",
        wl,
        "--recipe",
        "asq-w8a8",
        "--stats",
        str(stats10),
        "--out",
        str(tmp_path / "x.safetensors"),
    )
    assert not (tmp_path / "x.safetensors").exists()
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    assert "artifact" in bad("verify", "--workload", wl, "--recipe", "asq-w8a8", "--artifact", str(corrupt))
    assert not list(tmp_path.glob("*.tmp"))
