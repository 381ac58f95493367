"""Every --json output is standard JSON: no NaN / Infinity tokens, whatever the values."""

import json
import math

import pytest

from codesign.cli import jsonout
from codesign.cli import main as cli_main


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_spelled_as_the_schemas_say():
    obj = {"a": math.inf, "b": [-math.inf, math.nan, 1.5], "c": (2, {"d": math.nan}), "e": "x"}
    assert _strict(jsonout.dumps(obj)) == {"a": "inf", "b": ["-inf", None, 1.5], "c": [2, {"d": None}], "e": "x"}


def test_python_json_would_have_printed_infinity():
    """The case the module exists for: plain json.dumps is not standard JSON here."""
    with pytest.raises(ValueError, match="Infinity"):
        _strict(json.dumps({"psnr_db": math.inf}))


@pytest.mark.parametrize("argv", [("simulate", "--workload", "gemm:64,32,16", "--json"), ("hw", "--json")])
def test_cli_json_parses_strictly(capsys, argv):
    rc = cli_main(list(argv))
    out = capsys.readouterr().out
    assert rc == 0
    _strict(out)
