"""SimPy model of an edge AI processor running quantized op traces: latency, energy, area,
storage and weight-set swapping. Reads ``workloads.trace.Trace``; never imports torch or quantmodel."""

from hwsim.config import HWConfig, hw_from_dict, hw_preset_names, hw_to_dict, load_hw, with_overrides
from hwsim.result import SimResult
from hwsim.simulate import SIM_VERSION, cache_info, clear_cache, simulate
from hwsim.tiling import systolic_cycles

__all__ = [
    "HWConfig",
    "SIM_VERSION",
    "SimResult",
    "cache_info",
    "clear_cache",
    "hw_from_dict",
    "hw_preset_names",
    "hw_to_dict",
    "load_hw",
    "simulate",
    "systolic_cycles",
    "with_overrides",
]
