"""`codesign simulate --timeline FILE.json`: Chrome trace-event JSON that Perfetto opens: one named
track per engine, every span inside its step, each recorded step's spans ending at that step's
simulated latency, steps placed at their start in the video."""

import json

import pytest

from codesign import api
from codesign.cli import main
from hwsim.timeline import STEPS_TRACK, chrome_trace


@pytest.fixture(scope="module")
def res():
    return api.simulate(api.trace("stdit-tiny", "tsq-tsw-w8a8"), "edge-npu", timeline=True)


def test_spans_match_the_simulated_latency(res):
    doc = json.loads(json.dumps(chrome_trace(res)))  # what a viewer reads back
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    engines = {ev[0] for evs in res.timeline.values() for ev in evs}
    assert set(names.values()) == engines | {STEPS_TRACK}
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == sum(len(v) for v in res.timeline.values()) + len(res.timeline)
    assert len(res.timeline) >= 2  # step 0 and the swap step(s) of TSQ+TSW
    for step in res.timeline:
        start_us = sum(res.latency_per_step_s[:step]) * 1e6
        steps = [e for e in spans if names[e["tid"]] == STEPS_TRACK and e["args"]["step"] == step]
        assert len(steps) == 1 and steps[0]["ts"] == pytest.approx(start_us, rel=1e-12)
        assert steps[0]["dur"] == pytest.approx(res.latency_per_step_s[step] * 1e6, rel=1e-12)
        ops = [e for e in spans if names[e["tid"]] != STEPS_TRACK and e["args"]["step"] == step]
        assert all(e["dur"] >= 0 and e["ts"] >= start_us - 1e-9 for e in ops)
        end_us = max(e["ts"] + e["dur"] for e in ops)
        assert end_us == pytest.approx(start_us + res.latency_per_step_s[step] * 1e6, rel=1e-9)
        assert {names[e["tid"]] for e in ops} == {ev[0] for ev in res.timeline[step]}
        labels = {e["name"] for e in ops}
        assert "x_embedder.proj" in labels


def test_cli_writes_the_file_and_refuses_bad_paths(tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = ["simulate", "--workload", "stdit-tiny", "--hw", "edge-npu", "--recipe", "asq-w8a8"]
    assert main([*argv, "--timeline", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["otherData"]["recorded_steps"] == [0] and any(e["ph"] == "X" for e in doc["traceEvents"])
    capsys.readouterr()
    for bad in (str(tmp_path / "t.txt"), str(tmp_path / "no-dir" / "t.json"), str(tmp_path)):
        assert main([*argv, "--timeline", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "timeline" in err[0]
    # alone, --timeline still puts the timelines into --json
    assert main([*argv, "--timeline", "--json"]) == 0
    assert "0" in json.loads(capsys.readouterr().out)["timeline"]
