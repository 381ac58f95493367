"""Shared fixtures: small models and workloads that keep the suite fast on a 2-core CPU."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_workload():
    from workloads.presets import get_workload

    return get_workload("stdit-tiny")


@pytest.fixture(scope="session")
def calibrated_tiny(tiny_workload):
    """``calibrated_tiny(num_steps)``: (workload, model, stats) of stdit-tiny with that many steps (seed-0
    weights, one calibration prompt), built once per step count and shared (treat them as read-only)."""
    import dataclasses

    from quantmodel.model.build import build_stdit
    from quantmodel.model.config import STDiTConfig
    from quantmodel.quant.calibrate import calibrate

    built: dict = {}

    def get(num_steps: int):
        if num_steps not in built:
            w = dataclasses.replace(tiny_workload, num_steps=num_steps)
            model = build_stdit(STDiTConfig.from_workload(w), seed=0)
            built[num_steps] = (w, model, calibrate(model, w, num_prompts=1))
        return built[num_steps]

    return get
