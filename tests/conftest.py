"""Shared fixtures: small models and workloads that keep the suite fast on a 2-core CPU."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_workload():
    from workloads.presets import get_workload

    return get_workload("stdit-tiny")
