"""The Python API is documented and is what the notebooks use: docs/api.md equals the page generated
from codesign.api's docstrings, every public function has a docstring and type hints, and the notebooks
import nothing of the project but codesign.api."""

import ast
import inspect
from pathlib import Path

import nbformat

from codesign import api, apidoc

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("codesign", "quantmodel", "hwsim", "workloads", "shapes")


def test_api_page_is_generated_from_the_docstrings():
    assert (ROOT / "docs" / "api.md").read_text() == apidoc.render(), "run: python -m codesign.apidoc > docs/api.md"


def test_every_function_is_documented_and_typed():
    names = [f.__name__ for f in apidoc.functions()]
    for needed in ("trace", "simulate", "sweep", "optimize", "load_results", "report"):
        assert needed in names
    for f in apidoc.functions():
        sig = inspect.signature(f)
        assert inspect.getdoc(f), f.__name__
        assert sig.return_annotation is not inspect.Signature.empty, f.__name__
        untyped = [p for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
        assert all(p.kind is p.VAR_KEYWORD or p.name in ("model", "inputs") for p in untyped), (f.__name__, untyped)


def test_notebooks_use_only_the_api():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for node in ast.walk(ast.parse(cell.source)):
                mods = []
                if isinstance(node, ast.ImportFrom):
                    mods = [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                for m in mods:
                    if m.split(".")[0] in PROJECT:
                        assert m == "codesign.api", f"{path.name}: imports {m}"


def test_api_spec_and_workload_round_trip(tmp_path):
    spec = api.load_spec("tiny")
    assert api.load_spec(spec) is spec and spec.name == "tiny"
    assert api.workload("stdit-tiny").num_steps == api.trace("stdit-tiny").meta["num_steps"]
