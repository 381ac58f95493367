"""Every `--json` output of the CLI validates against its documented JSON Schema (codesign/schemas/), a
changed output fails validation, and every part of the results store has the declared Arrow schema
(codesign/store_schema.py), old parts included."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import jsonschema
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codesign.cli import build_parser, main
from codesign.store import ResultStore, load_results
from codesign.store_schema import HW_COLUMNS, QUALITY_SCHEMA, columns_markdown, hw_leaves, part_schema, points_schema
from workloads.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "codesign" / "schemas"
TINY = (ROOT / "workloads" / "presets" / "stdit-tiny.yaml").read_text()


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory) -> str:
    """stdit-tiny with 2 denoising steps: the quantization commands in seconds."""
    path = tmp_path_factory.mktemp("wl") / "tiny2.yaml"
    path.write_text(TINY.replace("num_steps: 10", "num_steps: 2"))
    return str(path)


def commands(tmp: Path, tiny2: str) -> list[tuple[str, list[str]]]:
    art = str(tmp / "a.safetensors")
    spec = tmp / "opt.yaml"
    spec.write_text(
        "name: opt\ncost_workload: stdit-tiny\nrecipes: [static-w8a8, asq-w8a8]\n"
        "hardware: {base: edge-npu, sampling: random, samples: 4, axes: {mac.arrays: [1, 2], clock.freq_hz: {min: 6.0e8, max: 1.2e9}}}\n"
    )
    return [
        ("workloads", ["workloads", "--json"]),
        ("hw", ["hw", "--json"]),
        ("recipes", ["recipes", "--json"]),
        ("validate", ["validate", "--json"]),
        ("trace", ["trace", "--workload", tiny2, "--recipe", "tsq-tsw-w8a8", "--json"]),
        ("trace", ["trace", "--workload", "gemm:64,64,64", "--json", "--timing", "--out", str(tmp / "t.parquet"),
                   "--scalesim-topology", str(tmp / "t.csv")]),
        ("simulate", ["simulate", "--workload", tiny2, "--recipe", "tsq-tsw-w8a8", "--json", "--timeline", "--timing"]),
        ("simulate", ["simulate", "--workload", "gemm:64,64,64", "--json"]),
        ("sample", ["sample", "--workload", tiny2, "--json"]),
        ("sample", ["sample", "--workload", tiny2, "--recipe", "asq-w8a8", "--prompts", "1", "--compare", "--json"]),
        ("quantize", ["quantize", "--workload", tiny2, "--recipe", "asq-w8a8", "--prompts", "1", "--out", art, "--json"]),
        ("verify", ["verify", "--workload", tiny2, "--recipe", "asq-w8a8", "--artifact", art, "--json"]),
        ("optimize", ["optimize", str(spec), "--out", str(tmp / "opt"), "--trials", "4", "--batch", "2", "--jobs", "1",
                      "--quiet", "--json"]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny2) -> list[tuple[str, list[str], object]]:
    """Each command's --json output, run in-process once for the module."""
    tmp = tmp_path_factory.mktemp("json")
    res = []
    for name, argv in commands(tmp, tiny2):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            rc = main(argv)
        assert rc in (0, 1), f"{argv}: exit {rc}"  # validate exits 1 when a component is out of its band
        res.append((name, argv, json.loads(buf.getvalue())))
    return res


def test_every_json_output_validates(outputs):
    for name, argv, out in outputs:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(out)]
        assert not errors, f"codesign {' '.join(argv)}: {errors[:5]}"
    sim = next(o for n, a, o in outputs if n == "simulate" and "--timeline" in a)
    assert sim["timeline"] and "timing" in sim  # the optional parts were exercised, not only allowed


def test_every_json_command_has_a_schema_and_every_schema_a_command(tiny2, tmp_path):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    with_json = {name for name, p in sub.choices.items() if "--json" in p._option_string_actions}
    files = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert with_json == files
    assert {name for name, _ in commands(tmp_path, tiny2)} == files  # and the test runs each


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")))
def test_schema_is_documented(name):
    s = schema(name)
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$id"] == f"urn:stdit-codesign:json:{name}:v1" and s["title"] == f"codesign {name} --json"

    def walk(node, path):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: an undocumented field would pass"
            assert set(node["required"]) <= set(node["properties"]), path
        for key, prop in node.get("properties", {}).items():
            where = f"{path}.{key}"
            assert prop.get("description"), f"{where} has no description"
            if prop.get("type") in ("number", "integer") or "$ref" in prop:
                assert prop["description"].rstrip().endswith("]"), f"{where}: description without a [unit]"
            walk(prop, where)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):  # a map's values: documented the same way
            values = node["additionalProperties"]
            assert values.get("type") not in ("number", "integer"), f"{path}: a map of bare numbers, no unit"
            walk(values, path + "{}")

    walk(s, name)


def test_a_changed_output_fails(outputs):
    sim = copy.deepcopy(next(o for n, a, o in outputs if n == "simulate"))
    v = validator("simulate")
    assert v.is_valid(sim)
    for mutate in (
        lambda d: d.update(new_metric_s=1.0),  # a field added without documenting it
        lambda d: d.update(latency_s="fast"),  # a wrong type
        lambda d: d.pop("energy_j"),  # a field gone
        lambda d: d["per_op"][0].update(extra=1),  # nested rows are closed too
        lambda d: d["energy_breakdown_j"].update(noc=0.0),
        lambda d: d.update(swap_count=1.5),  # an integer field holding a fraction
    ):
        bad = copy.deepcopy(sim)
        mutate(bad)
        assert not v.is_valid(bad)
    rows = copy.deepcopy(next(o for n, a, o in outputs if n == "hw"))
    rows[0]["int8_macs"] = "4096"
    assert not validator("hw").is_valid(rows)


def test_simulate_breakdowns_match_the_store_columns():
    props = schema("simulate")["properties"]
    for src, prefix in {"energy_breakdown_j": "energy_j.", "area_breakdown_mm2": "area_mm2.",
                        "stall_breakdown_s": "stall_s.", "utilisation": "util."}.items():  # fmt: skip
        cols = {n.removeprefix(prefix) for n in points_schema().names if n.startswith(prefix)}
        assert set(props[src]["properties"]) == cols, src


# ---- the results store -----------------------------------------------------------------------------
SPEC = """
name: schema-test
cost_workload: {wl}
quality: {{workload: {wl}, options: {{num_prompts: 1}}}}
recipes: [fp16, dynamic-w8a8]
hardware:
  base: edge-npu
  sampling: grid
  axes:
    vector.online_reduction: [true, false]     # dynamic without the unit: a failed point (null metrics)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny2) -> Path:
    tmp = tmp_path_factory.mktemp("store")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(wl=tiny2))
    assert main(["sweep", str(spec), "--out", str(tmp / "res"), "--jobs", "1", "--quiet"]) == 0
    return tmp / "res"


def test_store_parts_have_the_declared_schema(store):
    for kind in ("points", "quality"):
        parts = list((store / kind).glob("part-*.parquet"))
        assert parts
        for p in parts:
            assert pq.read_schema(p).equals(part_schema(kind), check_metadata=True), p
    df = load_results(store)
    assert len(df) == 4 and sorted(df["status"]) == ["failed", "ok", "ok", "ok"]
    assert df.loc[df["status"] == "failed", "latency_s"].isna().all()
    assert df["q.sqnr_db"].notna().all()


def test_every_column_is_documented():
    for s in (points_schema(), QUALITY_SCHEMA):
        for f in s:
            md = f.metadata or {}
            assert md.get(b"description") and b"undocumented" not in md[b"description"], f.name
            assert b"unit" in md, f.name


def test_hw_columns_are_the_hardware_config_leaves():
    import hwsim
    from codesign.spec import flatten

    leaves = set(hw_leaves())
    assert set(HW_COLUMNS) == leaves, (
        f"hardware fields without a store-column description: {sorted(leaves - set(HW_COLUMNS))}, "
        f"described but gone: {sorted(set(HW_COLUMNS) - leaves)} (codesign/store_schema.py HW_COLUMNS; then "
        "paste columns_markdown() into docs/json-output.md)"
    )
    for name in hwsim.hw_preset_names():  # every preset flattens to the same columns
        assert set(flatten(hwsim.hw_to_dict(hwsim.load_hw(name)))) == set(HW_COLUMNS), name


def test_a_row_that_does_not_fit_is_refused(store, tmp_path):
    df = load_results(store)
    row = df[df["status"] == "ok"].iloc[0].to_dict()
    row = {k: v for k, v in row.items() if not k.startswith("q.")}
    st = ResultStore(tmp_path / "s")
    (st.root / "points").mkdir(parents=True)
    for change, column in (
        ({"new_column_s": 1.0}, "new_column_s"),
        ({"latency_s": "fast"}, "latency_s"),
        ({"key": None}, "key"),
        ({"swap_count": 1.5}, "swap_count"),
    ):
        with pytest.raises(ConfigError, match=column):
            st.write_rows([{**row, **change}])
    assert not list((st.root / "points").iterdir())  # nothing half-written
    assert st.write_rows([row]) is not None


def test_parts_written_the_old_way_still_load_and_compact(store, tmp_path):
    """A store from before the schema: pandas-inferred parts (counts as double beside a failed row,
    a quality_key column of nulls) load, and compaction rewrites them with the declared schema."""
    import shutil

    df = load_results(store)
    old = tmp_path / "old"
    shutil.copytree(store, old)
    for p in (old / "points").glob("part-*.parquet"):
        p.unlink()
    rows = [{k: v for k, v in r.items() if not k.startswith("q.")} for r in df.to_dict("records")]
    for r in rows:
        r["quality_key"] = None
    half = len(rows) // 2
    for i, chunk in enumerate((rows[:half], rows[half:])):
        t = pa.Table.from_pandas(pd.DataFrame(chunk), preserve_index=False)  # the old writer
        pq.write_table(t, old / "points" / f"part-old{i}.parquet")
    assert pa.types.is_null(pq.read_schema(old / "points" / "part-old0.parquet").field("quality_key").type)
    before = load_results(old).sort_values("key").reset_index(drop=True)
    assert len(before) == 4
    ResultStore(old).compact("points")
    (part,) = (old / "points").glob("part-*.parquet")
    assert pq.read_schema(part).equals(points_schema(), check_metadata=True)
    after = load_results(old).sort_values("key").reset_index(drop=True)
    assert after["swap_count"].dtype == before["swap_count"].dtype == "float64"  # a failed row: NaN
    assert after["swap_count"].equals(before["swap_count"]) and after["hw_key"].equals(before["hw_key"])
    assert pq.read_table(part).column("swap_count").type == pa.int64()
    pd.testing.assert_series_equal(before["latency_s"], after["latency_s"])


def test_docs_table_is_generated_from_the_schema():
    page = (ROOT / "docs" / "json-output.md").read_text()
    assert columns_markdown() in page, "docs/json-output.md is stale: paste codesign.store_schema.columns_markdown()"
