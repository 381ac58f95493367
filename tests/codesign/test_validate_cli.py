"""`codesign validate`: the table, the JSON rows and the exit codes (1 when a component is out of band)."""

import json

from codesign import cli
from hwsim import validate


def test_validate_command_table_json_and_exit_code(capsys):
    assert cli.main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "npu samsung-5nm-6k area" in out and "sram 22 nm read_pj" in out
    assert out.strip().splitlines()[-1].endswith("0 outside")
    assert cli.main(["validate", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all({"component", "model", "reference", "source", "ratio", "band", "ok"} <= set(r) for r in rows)
    assert all(r["ok"] for r in rows)


def test_a_component_out_of_band_exits_1(monkeypatch, capsys):
    bad = validate.Row("made-up", 2.0, 1.0, "", "test", (0.9, 1.1))
    monkeypatch.setattr(validate, "validate", lambda: [bad])
    assert cli.main(["validate"]) == 1
    assert "OUT" in capsys.readouterr().out
