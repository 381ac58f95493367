"""The engine is a SimPy model: its machine runs on ``simpy.Environment`` and the weight-set swap
on ``simpy.Store``. The project's design is a real SimPy model of the processor, built on a
well-kept library rather than a hand-written event kernel, so users can extend it with their own
SimPy processes; speed work goes into what the engine schedules (fewer events, memoised replays),
not into replacing the kernel."""

import simpy

from hwsim.config import load_hw
from hwsim.engine import Machine


def test_machine_runs_on_simpy():
    m = Machine(load_hw("edge-npu"))
    assert isinstance(m.env, simpy.Environment)
    proc_done = []

    def user_process(env):  # a user's own SimPy process runs beside the engine's
        yield env.timeout(5)
        proc_done.append(env.now)

    m.env.process(user_process(m.env))
    m.env.run()
    assert proc_done == [5]
