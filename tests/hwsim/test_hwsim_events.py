"""hwsim.events runs events in SimPy's order: the same processes give the same trace of (time,
what) on both, and the whole engine gives the same result, bit for bit, on either kernel."""

from pathlib import Path

import pytest
import simpy

import hwsim
from hwsim import engine, events
from workloads.trace import Trace

DATA = Path(__file__).resolve().parents[1] / "data" / "hwsim"


def _scenario(env, store_cls, log):
    """Processes that meet at the same instants: timeouts of 0, processes started while other
    events of that instant wait, an event succeeded by another process, a store with three
    producers queueing on it and a slower consumer, a process waited on after it ended."""
    store = store_cls(env, 2)
    gate = env.event()

    def producer(name, n, gap):
        for i in range(n):
            yield store.put((name, i))
            log.append((env.now, "put", name, i))
            yield env.timeout(gap)

    def consumer():
        for _ in range(10):
            item = yield store.get()
            log.append((env.now, "got", item))
            yield env.timeout(1 if item[1] % 2 else 0)
        gate.succeed("open")

    def child(name):
        log.append((env.now, "start", name))
        yield env.timeout(0)
        log.append((env.now, "child", name))

    def spawner():
        yield env.timeout(3)
        env.timeout(0).callbacks.append(lambda _e: log.append((env.now, "timeout-0")))
        env.process(child("c1"))
        env.process(child("c2"))

    def waiter():
        value = yield gate
        log.append((env.now, "gate", value))
        yield env.timeout(0)
        log.append((env.now, "after-0"))

    env.process(producer("a", 4, 0))
    env.process(producer("b", 3, 0))
    env.process(producer("c", 3, 2))
    early = env.process(waiter())
    env.process(consumer())
    env.process(spawner())
    env.run()

    def late():  # yields a process that has already ended: goes on at once
        yield early
        log.append((env.now, "late"))

    env.process(late())
    env.run()


def test_event_order_matches_simpy():
    ours, theirs = [], []
    _scenario(events.Environment(), events.Store, ours)
    _scenario(simpy.Environment(), simpy.Store, theirs)
    assert ours == theirs
    assert len(ours) > 15


@pytest.mark.parametrize("prefetch", ["jit", "early"])
def test_engine_on_simpy_gives_identical_numbers(monkeypatch, prefetch):
    """The swapping case of test_hwsim_model (a swap step with its layers waiting for weights,
    and its twin), unmemoised, with the timeline: every unit and the swap run on the kernel."""
    hw = hwsim.with_overrides(  # test_hwsim_model's swapping chip: the sets live in flash, swapped every step
        hwsim.load_hw("edge-npu"),
        {
            "sram.weight_buffer_bytes": 65536,
            "sram.activation_buffer_bytes": 262144,
            "dram.weight_capacity_bytes": 1_000_000,
            "flash.part": "emmc5.1",
        },
    )
    trace = Trace.load(DATA / "stdit-tiny-tsq-tsw-w8a8.parquet")
    ours = hwsim.simulate(trace, hw, prefetch=prefetch, timeline=True, memo=False).to_dict(timeline=True)
    monkeypatch.setattr(engine, "Environment", simpy.Environment)
    monkeypatch.setattr(engine, "Store", simpy.Store)
    theirs = hwsim.simulate(trace, hw, prefetch=prefetch, timeline=True, memo=False).to_dict(timeline=True)
    ours.pop("memo"), theirs.pop("memo")
    assert ours == theirs
    assert ours["swap_count"] > 0
