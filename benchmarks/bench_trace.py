"""Trace build speed and memory: opensora-v1.0-16x512x512 (100 steps, CFG), goal < 5 s and well
under 2 GB. Prints wall time, peak Python allocations (tracemalloc) and process peak RSS."""

import resource
import sys
import time
import tracemalloc

from quantmodel.model.tracing import build_trace
from workloads.presets import get_workload


def main() -> None:
    w = get_workload(sys.argv[1] if len(sys.argv) > 1 else "opensora-v1.0-16x512x512")
    build_trace(w)  # warm imports and torch's meta kernels
    tracemalloc.start()
    t0 = time.perf_counter()
    trace = build_trace(w)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t0 = time.perf_counter()
    trace = build_trace(w)
    seconds_untraced = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{w.name}: {len(trace.ops):,} ops over {trace.num_steps} steps")
    print(f"build time {seconds_untraced:.2f} s (goal < 5 s; {seconds:.2f} s under tracemalloc)")
    print(f"peak traced allocations {peak / 2**20:.0f} MiB; process peak RSS {rss_mib:.0f} MiB (goal << 2048 MiB)")


if __name__ == "__main__":
    main()
