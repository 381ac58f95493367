"""The discrete-event kernel under ``engine.Machine``: SimPy's semantics, without its generality.

A design point spends most of its time stepping events (a full-size step replays tens of thousands
of tiles, several events each). SimPy's ``Environment``, ``Event``, ``Timeout``, ``Process`` and
``Store`` are general (failures, interrupts, conditions, context managers, any priority); this
module keeps only what the engine uses and runs events in exactly SimPy's order, so the numbers do
not move by one cycle:

- the queue is a heap of ``(time, priority, insertion number, event)``: URGENT (0) for a process's
  start, NORMAL (1) for everything else, as ``simpy.core.Environment.schedule``;
- an event is scheduled when it is triggered (a timeout when it is made, ``succeed`` when called, a
  process when its generator returns); when it is processed its callbacks run in the order they
  were added, and a process that yields an event already processed goes on at once
  (``simpy.events.Process._resume``);
- ``Store`` is ``simpy.Store``: a put or a get is served at once when it can be (a put when the
  store has room, a get when it holds an item), first come first served, and a served put
  (get) lets the first waiting get (put) try again when it is processed.

Errors are not modelled as events (the engine raises none): an exception in a process propagates
out of ``run``. tests/hwsim/test_hwsim_events.py runs the same processes on SimPy and here.
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import count

URGENT, NORMAL = 0, 1
PENDING = object()


class Event:
    """An event: pending until triggered, then scheduled; ``callbacks`` is None once processed."""

    __slots__ = ("env", "callbacks", "value")

    def __init__(self, env: Environment, value=PENDING):
        self.env, self.callbacks, self.value = env, [], value

    @property
    def triggered(self) -> bool:
        return self.value is not PENDING

    def succeed(self, value=None) -> Event:
        if self.value is not PENDING:
            raise RuntimeError(f"{self!r} has already been triggered")
        self.value = value
        env = self.env
        heappush(env.queue, (env.now, NORMAL, next(env.eid), self))
        return self


class Process(Event):
    """A generator run as a process: resumed with the value of each event it yields; triggered
    (NORMAL) with its return value when the generator ends."""

    __slots__ = ("gen",)

    def __init__(self, env: Environment, gen):
        super().__init__(env)
        self.gen = gen
        start = Event(env, None)
        start.callbacks.append(self._resume)
        heappush(env.queue, (env.now, URGENT, next(env.eid), start))

    @property
    def is_alive(self) -> bool:
        return self.value is PENDING

    def _resume(self, event: Event) -> None:
        send = self.gen.send
        value = event.value
        while True:
            try:
                event = send(value)
            except StopIteration as stop:
                self.value = stop.value
                env = self.env
                heappush(env.queue, (env.now, NORMAL, next(env.eid), self))
                return
            cbs = event.callbacks
            if cbs is not None:  # not processed yet: wait for it
                cbs.append(self._resume)
                return
            value = event.value


class Environment:
    """Integer time ``now`` and the event queue; ``run`` processes events until none is left."""

    __slots__ = ("now", "queue", "eid")

    def __init__(self):
        self.now, self.queue, self.eid = 0, [], count()

    def event(self) -> Event:
        return Event(self)

    def timeout(self, delay: int) -> Event:
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        ev = Event(self, None)
        heappush(self.queue, (self.now + delay, NORMAL, next(self.eid), ev))
        return ev

    def process(self, gen) -> Process:
        return Process(self, gen)

    def run(self) -> None:
        queue = self.queue
        while queue:
            self.now, _, _, event = heappop(queue)
            callbacks, event.callbacks = event.callbacks, None
            for cb in callbacks:
                cb(event)


class Store:
    """``simpy.Store`` of a given capacity: ``put(item)`` and ``get()`` return events."""

    __slots__ = ("env", "capacity", "items", "puts", "gets")

    def __init__(self, env: Environment, capacity: int):
        self.env, self.capacity, self.items, self.puts, self.gets = env, capacity, [], [], []

    def put(self, item) -> Event:
        ev = Event(self.env)
        ev.callbacks.append(self._trigger_get)
        self.puts.append((ev, item))
        self._trigger_put(None)
        return ev

    def get(self) -> Event:
        ev = Event(self.env)
        ev.callbacks.append(self._trigger_put)
        self.gets.append(ev)
        self._trigger_get(None)
        return ev

    def _trigger_put(self, _event) -> None:
        if self.puts and len(self.items) < self.capacity:
            ev, item = self.puts.pop(0)
            self.items.append(item)
            ev.succeed()

    def _trigger_get(self, _event) -> None:
        if self.gets and self.items:
            self.gets.pop(0).succeed(self.items.pop(0))
