"""A fuzzer for the command line: random arguments and paths, mutated YAML (workloads, hardware,
recipes, sweep specs) and damaged files of every format the tool reads (trace, calibration stats,
checkpoint, quantized artifact, results parts, manifest).

The property, for every input: exit code 0 or 2, never a traceback (an exception escaping ``main``),
a refusal is one line, no partial file (no ``.tmp`` left, nothing new after a refusal), and the run
stays within a stated time and memory. Everything runs in this process through ``codesign.cli.main``
(hundreds of interpreter starts would cost minutes). Hypothesis runs derandomized, so CI sees the
same inputs every time; ``CODESIGN_FUZZ=random`` explores new ones. Inputs that once failed are kept
as ``@example`` cases.

The size budgets (trace ops, GEMM tiles, design points) are lowered for the fuzzer so that an input
just inside a budget still runs in seconds; the refusal code path is the same at any budget.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import codesign.spec
import hwsim
import hwsim.bounded
import workloads.presets
from codesign.cli import main
from workloads.presets import get_workload
from workloads.recipes import get_recipe

RANDOM = os.environ.get("CODESIGN_FUZZ") == "random"
MAX_SECONDS = 60.0  # per input, on the loaded 2-core CI machine (the slowest legal input takes ~5 s idle)
MAX_RSS_GROWTH_KB = 2 * 2**20  # 2 GiB more peak memory than before the input


def fuzz_settings(n: int):
    return settings(
        max_examples=n * (5 if RANDOM else 1),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def small_budgets():
    """Budgets low enough that an input just inside one runs in seconds."""
    mp = pytest.MonkeyPatch()
    mp.setattr(workloads.presets, "MAX_TRACE_OPS", 5_000)
    mp.setattr(hwsim.bounded, "MAX_GEMM_TILES", 20_000)
    mp.setattr(codesign.spec, "MAX_DESIGN_POINTS", 32)
    yield
    mp.undo()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run ``codesign ARGV`` in ``cwd`` and check the property; (exit code, stdout, stderr)."""
    before = _files(cwd)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    t0 = time.perf_counter()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
    finally:
        os.chdir(old)
    seconds = time.perf_counter() - t0
    stderr = err.getvalue()
    assert rc in (0, 2), (argv, rc, stderr[-2000:])
    assert "Traceback" not in stderr, (argv, stderr[-2000:])
    if rc == 2:
        lines = [ln for ln in stderr.strip().splitlines() if "error" in ln]
        assert len(lines) == 1 and lines[0].startswith("codesign"), (argv, stderr[-2000:])
        new = {p for p in _files(cwd) - before if "quarantine" not in p.parts}
        assert not new, (argv, sorted(map(str, new)))
    torn = [p for p in cwd.rglob("*.tmp")]
    assert not torn, (argv, torn)
    assert seconds < MAX_SECONDS, (argv, seconds)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert growth < MAX_RSS_GROWTH_KB, (argv, growth)
    return rc, out.getvalue(), stderr


@contextlib.contextmanager
def workdir(corpus: Path):
    """A fresh folder holding a copy of the corpus (inputs may damage or heal what they read)."""
    d = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        for p in corpus.iterdir():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, d / p.name)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- the corpus: one valid file of every format the tool reads ---------------------------------------
def _tiny_spec() -> dict:
    return {
        "name": "fuzz",
        "cost_workload": "stdit-tiny",
        "recipes": ["asq-w8a8", "dynamic-w8a8"],
        "hardware": {
            "base": "edge-npu",
            "sampling": "grid",
            "axes": {"mac.rows": [16, 32], "vector.online_reduction": [True, False]},
        },
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import torch

    from quantmodel.model.build import build_stdit
    from quantmodel.model.config import STDiTConfig

    root = tmp_path_factory.mktemp("corpus")
    w = get_workload("stdit-tiny")
    (root / "workload.yaml").write_text(yaml.safe_dump(w.to_dict()))
    (root / "hw.yaml").write_text(yaml.safe_dump(hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))))
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    (root / "spec.yaml").write_text(yaml.safe_dump(_tiny_spec()))
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    torch.save(model.state_dict(), root / "ck.pth")
    for argv in (
        ["trace", "--workload", "stdit-tiny", "--out", "t.parquet"],
        ["trace", "--workload", "stdit-tiny", "--out", "t.csv"],
        ["calibrate", "--workload", "stdit-tiny", "--prompts", "1", "--out", "stats.safetensors"],
        ["quantize", "--workload", "stdit-tiny", "--recipe", "asq-w8a8", "--stats", "stats.safetensors"]
        + ["--out", "art.safetensors"],
        ["sweep", "spec.yaml", "--out", "res", "--jobs", "1", "--quiet"],
    ):
        assert run_cli(argv, root)[0] == 0, argv
    return root


def test_recipe_yaml_of_the_corpus_is_valid(corpus):
    """The corpus' recipe YAML is accepted (so mutations of it test the checks, not a typo)."""
    with workdir(corpus) as d:
        assert run_cli(["trace", "--workload", "stdit-tiny", "--recipe", "recipe.yaml", "--json"], d)[0] == 0


# ---- random command lines ------------------------------------------------------------------------------
WORKLOADS = ["stdit-tiny", "gemm:64,32,16", "gemm:0,1,1", "gemm:1,2", "gemm:a,b,c", "gemm:-1,2,3",
             "gemm:99999999999999999999,1,1", "gemm:100000000000000,1,1", "nope", "workload.yaml", "t.csv", ""]  # fmt: skip
RECIPES = ["fp16", "asq-w8a8", "dynamic-w8a8", "tsq-tsw-w8a8", "groups4-w8a8", "bogus", "recipe.yaml", "hw.yaml", ""]
HWS = ["edge-npu", "edge-npu-static", "edge-npu-lite", "bogus", "hw.yaml", "recipe.yaml", "x.cfg", "res"]
PATHS = ["out.csv", "out.parquet", "out.json", "out.safetensors", "no/such/dir/x.csv", "res", "res/manifest.json",
         "t.parquet", "sub", "sub/deeper", "", ".", "hw.yaml", "x.txt"]  # fmt: skip
NUMBERS = ["-1", "0", "1", "2", "1e30", "nan", "inf", "abc", ""]
MODELS = ["torch.nn:Identity", "torch.nn:ReLU", "torch.nn:Linear", "json:loads", "nope", "nope.mod:f", "torch.nn:Nope"]
INPUTS = ["2x3", "2x3x4:half", "0x3", "abc", "x=2x3", "x=2x3,2x3", "2x3:nope", "99999999999x99999999999x9", ""]


def _opt(name: str, values: list[str]):
    return st.one_of(st.just([]), st.sampled_from(values).map(lambda v: [name, v]))


def _flag(name: str):
    return st.sampled_from([[], [name]])


def _argv(cmd: str, *parts) -> st.SearchStrategy:
    return st.tuples(*parts).map(lambda ps: [cmd] + [a for p in ps for a in p])


COMMANDS = st.one_of(
    _argv("trace", _opt("--workload", WORKLOADS), _opt("--recipe", RECIPES), _opt("--out", PATHS),
          _opt("--scalesim-topology", PATHS), _flag("--json"), _flag("--timing")),
    _argv("simulate", _opt("--workload", WORKLOADS), _opt("--trace", PATHS + ["t.parquet", "t.csv"]),
          _opt("--hw", HWS), _opt("--recipe", RECIPES), _opt("--prefetch", ["jit", "early", "late"]),
          _opt("--plots", PATHS), _opt("--scalesim-report", PATHS), _opt("--timeline", PATHS), _flag("--json"),
          _flag("--timing")),
    _argv("sweep", st.sampled_from([["spec.yaml"], ["nope.yaml"], ["hw.yaml"], ["res"], []]),
          _opt("--out", PATHS), st.sampled_from([["--jobs", "1"], ["--jobs", "0"], ["--jobs", "x"]]),
          _opt("--flush-every", NUMBERS), _opt("--connect-timeout", NUMBERS), _flag("--append"), _flag("--quiet")),
    _argv("report", st.sampled_from([["res"], ["nope"], ["t.csv"], ["."], []]), _opt("--out", PATHS),
          _flag("--timing")),
    _argv("quantize", _opt("--workload", WORKLOADS), _opt("--recipe", RECIPES),
          _opt("--stats", ["stats.safetensors", "art.safetensors", "t.csv", "nope"]),
          _opt("--checkpoint", ["ck.pth", "t.parquet", "nope"]), _opt("--out", PATHS), _opt("--seed", NUMBERS)),
    _argv("trace", st.sampled_from([["--model", m] for m in MODELS]), _opt("--input", INPUTS),
          _opt("--steps", NUMBERS + ["1000000000"]), _opt("--recipe", RECIPES), _opt("--layers", ["", ",", "0", "*"]),
          _opt("--out", PATHS), _flag("--json")),
    st.sampled_from([["hw"], ["hw", "--json"], ["workloads"], ["workloads", "--json"], ["recipes"], ["--help"],
                     [], ["nope"], ["simulate", "--workload"]]),
)  # fmt: skip


@fuzz_settings(70)
@given(argv=COMMANDS)
@example(argv=["trace", "--workload", "stdit-tiny", "--out", "no/such/dir/x.csv"])
@example(argv=["sweep", "spec.yaml", "--out", "hw.yaml/r", "--jobs", "1"])
@example(argv=["simulate", "--workload", "gemm:99999999999999999999,1,1"])
@example(argv=["simulate", "--workload", "gemm:100000000000000,1,1", "--recipe", "asq-w8a8"])  # DRAM, before planning
@example(argv=["simulate", "--workload", "gemm:100000000000000,1,1", "--hw", "edge-npu-lite", "--plots", "p"])
@example(argv=["simulate", "--workload", "gemm:30000,20000,20000", "--recipe", "asq-w8a8"])  # closed form: 26,880 tiles
@example(argv=["simulate", "--workload", "gemm:30000,20000,20000", "--plots", "p", "--json"])  # no tile in the timeline
@example(argv=["simulate", "--workload", "stdit-tiny", "--plots", "hw.yaml"])
@example(argv=["report", "res", "--out", "hw.yaml"])
@example(argv=["trace", "--model", "torch.nn:Identity", "--input", "2x3", "--steps", "1000000000"])
@example(argv=["trace", "--model", "torch.nn:ReLU", "--input", "99999999999x99999999999x9"])
@example(argv=["calibrate", "--workload", "stdit-tiny", "--prompts", "99999999999", "--out", "s.safetensors"])
def test_fuzz_command_lines(corpus, argv):
    with workdir(corpus) as d:
        run_cli(argv, d)


# ---- mutated YAML --------------------------------------------------------------------------------------
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 64, 10**6, 2**31, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e30, -1e30, 1e-30, float("nan"), float("inf"), 0.5]),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(st.integers(min_value=-3, max_value=100), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _leaves(d: object, prefix: tuple = ()) -> list[tuple]:
    """Paths to every node of nested mappings and lists (the node itself included)."""
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _leaves(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _leaves(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, base: dict) -> object:
    """``base`` with one to three mutations: a node replaced, deleted, or an unknown key added."""
    import copy

    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _leaves(d)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if not path:
            if op == "set":
                d = draw(VALUES)
            continue
        parent = d
        for p in path[:-1]:
            parent = parent[p]
        if op == "set":
            parent[path[-1]] = draw(VALUES)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(min_size=1, max_size=6))] = draw(VALUES)
    return d


def _dump(obj: object) -> str:
    try:
        return yaml.safe_dump(obj, allow_unicode=True)
    except yaml.YAMLError:
        return repr(obj)


WORKLOAD = get_workload("stdit-tiny").to_dict()
HW = hwsim.hw_to_dict(hwsim.load_hw("edge-npu"))
RECIPE = {**get_recipe("asq-w8a8").to_dict(), "name": "my-w8a8"}
KINDS = {
    "workload": (WORKLOAD, ["trace", "--workload", "m.yaml", "--json"]),
    "hw": (HW, ["simulate", "--workload", "gemm:64,32,16", "--hw", "m.yaml", "--json"]),
    "recipe": (RECIPE, ["simulate", "--workload", "stdit-tiny", "--recipe", "m.yaml", "--json"]),
    "spec": (_tiny_spec(), ["sweep", "m.yaml", "--out", "r", "--jobs", "1", "--quiet"]),
}


@fuzz_settings(80)
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)))
@example(data=None, kind="spec-axis-string")
@example(data=None, kind="hw-sram-1e30")
@example(data=None, kind="recipe-layers-int")
def test_fuzz_yaml(corpus, data, kind):
    if data is None:  # regression inputs of the issue
        text = {
            "spec-axis-string": _dump({**_tiny_spec(), "hardware": {"base": "edge-npu", "axes": {"mac.rows": ["a"]}}}),
            "hw-sram-1e30": _dump({**HW, "sram": {**HW["sram"], "weight_buffer_bytes": 1e30}}),
            "recipe-layers-int": _dump({**RECIPE, "layers": 7560}),  # found by the fuzzer: a TypeError
        }[kind]
        argv = KINDS[kind.split("-")[0]][1]
    else:
        base, argv = KINDS[kind]
        if data.draw(st.integers(0, 9), label="raw text if 0") == 0:
            text = data.draw(st.text(max_size=80), label="text")
        else:
            text = _dump(data.draw(mutated(base), label=kind))
    with workdir(corpus) as d:
        (d / "m.yaml").write_text(text)
        run_cli(argv, d)


# ---- damaged files of every format the tool reads ---------------------------------------------------------
READERS = {
    "t.parquet": ["simulate", "--trace", "t.parquet", "--json"],
    "t.csv": ["simulate", "--trace", "t.csv", "--json"],
    "stats.safetensors": ["quantize", "--workload", "stdit-tiny", "--recipe", "asq-w8a8", "--stats",
                          "stats.safetensors", "--out", "a.safetensors"],
    "ck.pth": ["quantize", "--workload", "stdit-tiny", "--recipe", "asq-w8a8", "--stats", "stats.safetensors",
               "--checkpoint", "ck.pth", "--out", "a.safetensors"],
    "art.safetensors": ["verify", "--workload", "stdit-tiny", "--recipe", "asq-w8a8", "--artifact",
                        "art.safetensors"],
    "res/manifest.json": ["sweep", "spec.yaml", "--out", "res", "--jobs", "1", "--quiet"],
    "res/points/part": ["sweep", "spec.yaml", "--out", "res", "--jobs", "1", "--quiet"],
}  # fmt: skip


@fuzz_settings(40)
@given(
    target=st.sampled_from(sorted(READERS)),
    damage=st.sampled_from(["truncate", "garbage", "flip", "empty"]),
    where=st.floats(min_value=0.0, max_value=1.0),
    junk=st.binary(min_size=1, max_size=64),
)
def test_fuzz_damaged_files(corpus, target, damage, where, junk):
    argv = READERS[target]
    with workdir(corpus) as d:
        path = d / target
        if target == "res/points/part":
            path = sorted((d / "res" / "points").glob("part-*.parquet"))[0]
        data = path.read_bytes()
        cut = int(where * len(data))
        if target == "art.safetensors" and damage == "flip":
            damage = "truncate"  # a flip inside the tensors is a valid artifact: verify would run for 20 s
        if damage == "truncate":
            data = data[:cut]
        elif damage == "garbage":
            data = junk * (1 + len(data) // (4 * len(junk)))
        elif damage == "flip":
            data = data[:cut] + bytes(b ^ 0xFF for b in data[cut : cut + len(junk)]) + data[cut + len(junk) :]
        else:
            data = b""
        if target == "art.safetensors" and data and damage != "garbage":
            data = data[: min(len(data), 64)]  # keep the artifact unreadable (see above)
        path.write_bytes(data)
        run_cli(argv, d)
