"""Fixtures shared by the codesign CLI tests."""

import pytest
import yaml


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    """stdit-tiny with 2 steps (a YAML workload file)."""
    from workloads.presets import PRESET_DIR

    d = yaml.safe_load((PRESET_DIR / "stdit-tiny.yaml").read_text())
    d["num_steps"] = 2
    path = tmp_path_factory.mktemp("wl") / "tiny2.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)
