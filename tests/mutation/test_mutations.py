"""A fast subset of the mutation test: a quantizer bug, a rounding-mode bug and a dropped fp16 rounding,
each planted in-process, each failing ``verify`` through the check made for it."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("run_mutations", Path(__file__).with_name("run_mutations.py"))
mut = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mut)


@pytest.mark.parametrize(
    "bug,check",
    [
        ("rolled per-channel weight scales", "constants"),
        ("half away from zero in requantization", "ties"),
        ("half away from zero in activation quantization", "ties"),
        ("dropped fp16 rounding in GELU", "fp16 kernels"),
        ("zero point one code off", "constants"),
        ("int32 bias off by one", "constants"),  # its patch follows _quantize_linear's signature
    ],
)
def test_planted_bug_fails_verify(bug, check):
    (row,) = mut.run([bug], steps=2, prompts=1, clean=False)
    assert row["verdict"] == "caught" and check in row["caught_by"].split(", ")


def test_mutants_leave_no_trace():
    """After a mutant's context the real functions are back (the clean tie test passes)."""
    from quantmodel.emulator.ties import run_ties

    with mut.MUTANTS["half away from zero in requantization"]():
        assert not run_ties()["ok"]
    assert run_ties()["ok"]
