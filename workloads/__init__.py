"""Workload presets and the op-trace format: plain data, no torch."""

from workloads.errors import ConfigError
from workloads.presets import Gemm, ModelDims, Workload, get_workload, preset_names
from workloads.trace import TRACE_VERSION, Op, Trace

__all__ = [
    "ConfigError",
    "Gemm",
    "ModelDims",
    "Workload",
    "get_workload",
    "preset_names",
    "TRACE_VERSION",
    "Op",
    "Trace",
]
