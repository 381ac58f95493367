"""What a simulation returns: latency, energy, area, storage, swaps, stalls, utilisation, per-op and
per-step numbers, and (when asked) a timeline of engine events."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimResult:
    sim_version: str
    hw: str
    workload: str
    recipe: str
    prefetch: str
    prefetch_used: str
    weight_placement: str  # sram | dram | flash
    num_steps: int
    latency_s: float
    latency_per_step_s: list
    energy_j: float
    energy_breakdown_j: dict
    area_mm2: float
    area_breakdown_mm2: dict
    storage_bytes: int
    float_weight_bytes: int
    weight_set_bytes: int  # largest quantized weight set
    num_weight_sets: int
    swap_count: int  # steps that brought in a new weight set
    swap_bytes: int
    swap_stall_s: float  # latency the swaps added (waits, tails and DRAM contention)
    swap_hidden_s: float  # swap transfer time hidden under compute
    initial_load_bytes: int
    initial_load_s: float  # flash -> DRAM before the first step; not in latency_s
    stall_breakdown_s: dict
    utilisation: dict
    macs: int
    dram_bytes: int
    flash_bytes: int
    sram_bytes: int
    per_op: list  # one row per op of step 0
    memo: dict  # how much was simulated vs replayed
    note: str = ""
    dram_lower_bound_bytes: int = 0  # compulsory DRAM traffic on this chip (hwsim/schedule.py), swaps included
    dram_over_bound: float = 0.0  # dram_bytes / dram_lower_bound_bytes
    # swap_stall_s split: layers waiting for weights still in flight (jit; early never waits) and
    # the rest, DRAM and DMA time the background copy took from the layers
    swap_wait_s: float = 0.0
    swap_contention_s: float = 0.0
    timeline: dict = field(default_factory=dict)  # step -> [(engine, start_s, end_s, label)]

    def to_dict(self, timeline: bool = False) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "timeline"}
        if timeline:
            d["timeline"] = {str(k): [list(e) for e in v] for k, v in self.timeline.items()}
        return d

    @property
    def energy_per_step_j(self) -> float:
        return self.energy_j / self.num_steps if self.num_steps else 0.0
