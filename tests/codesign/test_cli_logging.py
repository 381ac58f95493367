"""-v / -q on every command: warnings by default, -v adds info lines (a sweep's plan), -vv debug,
-q leaves errors only (no warning, no progress bar); library modules log through `logging`."""

import logging
import shutil
from pathlib import Path

import pytest

from codesign.cli import configure_logging, main
from codesign.store import POINTS

SPEC = Path(__file__).resolve().parents[2] / "codesign" / "specs" / "tiny.yaml"


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "r"
    assert main(["-q", "sweep", str(SPEC), "--out", str(out), "--jobs", "1"]) == 0
    return out


def test_verbose_shows_the_plan_default_does_not(swept, capsys):
    rc, out, err = run(capsys, "sweep", SPEC, "--out", swept, "--jobs", "1", "--quiet")
    assert rc == 0 and "to compute" not in err
    rc, out, err = run(capsys, "-v", "sweep", SPEC, "--out", swept, "--jobs", "1")
    plan = [ln for ln in err.splitlines() if "to compute" in ln]
    assert rc == 0 and len(plan) == 1 and plan[0].startswith("codesign: ") and ", 0 to compute" in plan[0]


def test_quiet_hides_warnings_and_progress(swept, tmp_path, capsys):
    for flags, shown in (([], True), (["-q"], False)):
        r = tmp_path / f"r{len(flags)}"
        shutil.copytree(swept, r)
        next((r / POINTS).glob("part-*.parquet")).write_bytes(b"garbage")
        rc, out, err = run(capsys, *flags, "sweep", SPEC, "--out", r, "--jobs", "1")
        assert rc == 0
        assert ("codesign: warning: unreadable" in err) is shown
        assert ("sweep " in err and "pt" in err) is shown  # tqdm's bar: "sweep NAME: ... pt"


def test_levels():
    assert configure_logging(0) == logging.WARNING
    assert configure_logging(1) == logging.INFO
    assert configure_logging(2) == logging.DEBUG
    assert configure_logging(3, quiet=False) == logging.DEBUG
    assert configure_logging(1, quiet=True) == logging.ERROR
    assert logging.getLogger("hwsim").getEffectiveLevel() == logging.ERROR
    configure_logging(0)


def test_records_still_reach_other_handlers():
    """After a command has configured logging, a library warning still reaches the root logger's
    handlers (an application's own logging)."""
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    root, keep = logging.getLogger(), Keep(logging.WARNING)
    root.addHandler(keep)
    try:
        configure_logging(0)
        logging.getLogger("quantmodel.intarith.ckernels").warning("probe")
    finally:
        root.removeHandler(keep)
    assert seen == ["probe"]
