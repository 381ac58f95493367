"""A simulation's engine activity as Chrome trace-event JSON, the format Perfetto (ui.perfetto.dev) and
chrome://tracing open: one track per engine (MAC arrays, vector unit, each DMA engine, the DRAM
controller), one span per op on it, named by the op, plus a track of the recorded steps.

Only the steps the simulation recorded carry events (step 0 and the steps around the first weight-set
swap: ``simulate(..., timeline=True)``); each is placed at its own start in the video, so a swap
step sits where it happens. Times are microseconds (the format's unit)."""

from __future__ import annotations

import json
from pathlib import Path

from hwsim.result import SimResult
from workloads.io import write_text

STEPS_TRACK = "steps"


def chrome_trace(res: SimResult) -> dict:
    """``{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}`` of ``res.timeline``."""
    starts_s = [0.0]
    for lat in res.latency_per_step_s:
        starts_s.append(starts_s[-1] + lat)
    engines = sorted({ev[0] for evs in res.timeline.values() for ev in evs})
    tids = {name: i + 1 for i, name in enumerate([STEPS_TRACK, *engines])}
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": f"{res.hw}: {res.workload}"}}
    ]
    events += [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}} for name, tid in tids.items()
    ]
    for step in sorted(res.timeline):
        t0_s = starts_s[step]
        events.append(_span(f"step {step}", STEPS_TRACK, tids, t0_s, t0_s + res.latency_per_step_s[step], step))
        for engine, a_s, b_s, label in res.timeline[step]:
            events.append(_span(label, engine, tids, t0_s + a_s, t0_s + b_s, step))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "hw": res.hw,
            "workload": res.workload,
            "recipe": res.recipe,
            "sim_version": res.sim_version,
            "latency_s": res.latency_s,
            "recorded_steps": sorted(res.timeline),
        },
    }


def _span(name: str, track: str, tids: dict, start_s: float, end_s: float, step: int) -> dict:
    return {
        "name": name,
        "cat": track,
        "ph": "X",
        "pid": 1,
        "tid": tids[track],
        "ts": start_s * 1e6,
        "dur": (end_s - start_s) * 1e6,
        "args": {"step": step},
    }


def write_chrome_trace(res: SimResult, path: str | Path) -> Path:
    """Write :func:`chrome_trace` of ``res`` to ``path`` (atomically); the path."""
    return write_text(path, json.dumps(chrome_trace(res)))
