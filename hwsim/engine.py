"""The SimPy model of the processor: DMA engines, MAC arrays and the vector unit as processes that
share SRAM capacity (``simpy.Container`` per buffer) and DRAM bandwidth (one memory controller
serving transfers in turn at full bandwidth, so concurrent transfers slow each other down).

Time is counted in integer cycles of the NPU clock. Integers make the sums exact, so a unit
simulated once and replayed from the memo gives bit-for-bit the numbers of simulating it again.

One ``Machine`` simulates one denoising step. A step runs its execution units in order (a layer
finishes before the next starts; ops hand over through DRAM), each unit as three processes:

- two loaders, one per operand (input, weights), each in tile order: reserve SRAM for the next
  tile of its operand, DMA it in; the input loader then runs the fused pre-stage on the vector unit;
- compute: takes ready tiles, reserves output SRAM, runs the tile on the MAC arrays (or vector
  unit), frees the input tiles it no longer needs;
- storer: runs a fused post-stage on the vector unit, DMAs the output tile out, frees its SRAM.

Double buffering falls out of the buffer capacities (two tiles of each operand). A weight-set swap
is a background process: flash -> DRAM (-> SRAM when weights are resident) in flash-sized chunks,
competing with the layers for DMA engines and the DRAM bus.
"""

from __future__ import annotations

import math
from collections import deque

import simpy

from hwsim.config import HWConfig
from hwsim.tiling import SPLIT_MIN_BYTES, Plan, dram_cycles_per_byte

STAT_KEYS = (
    "crit_mac",
    "crit_vector",
    "mac_busy",
    "vector_busy",
    "dram_busy",
    "dma_busy",
    "flash_busy",
    "wait_memory",
    "wait_vector",
    "wait_store",
    "tail",
)


class Buffer:
    """SRAM capacity shared by the processes of a unit (the semantics of ``simpy.Container`` with
    FIFO waiters), without an event when a request can be served at once."""

    __slots__ = ("env", "level", "waiters")

    def __init__(self, env: simpy.Environment, capacity: int):
        self.env, self.level, self.waiters = env, capacity, deque()

    def take(self, amount: int):
        """None when taken now, else an event that fires once it is taken."""
        if not self.waiters and self.level >= amount:
            self.level -= amount
            return None
        ev = self.env.event()
        self.waiters.append((amount, ev))
        return ev

    def give(self, amount: int) -> None:
        self.level += amount
        w = self.waiters
        while w and self.level >= w[0][0]:
            amount, ev = w.popleft()
            self.level -= amount
            ev.succeed()


class Queue:
    """Hand-over queue between two processes (``simpy.Store`` semantics, no event when not empty)."""

    __slots__ = ("env", "items", "waiter")

    def __init__(self, env: simpy.Environment):
        self.env, self.items, self.waiter = env, deque(), None

    def put(self, item) -> None:
        if self.waiter is not None:
            ev, self.waiter = self.waiter, None
            ev.succeed(item)
        else:
            self.items.append(item)

    def wait(self):
        ev = self.env.event()
        self.waiter = ev
        return ev


def unit_params(hw: HWConfig) -> tuple:
    """What a unit's run on an idle machine reads from the config beyond its plan: DMA engines,
    cycles per byte of the DRAM controller and of one engine, descriptor setup (the flash is the
    background swap's; the MAC arrays and vector unit are in the plan's tile cycles)."""
    return (
        hw.dma.engines,
        dram_cycles_per_byte(hw),
        hw.clock.freq_hz / hw.dma.bandwidth_bytes_per_s,
        hw.dma.setup_cycles,
    )


class Machine:
    def __init__(self, hw: HWConfig, record: bool = False):
        self.env = simpy.Environment()
        self.hw = hw
        # FIFO servers kept as "free at" times: a request made now is served in request order, which
        # is what simpy.Resource does, without its per-request events (service times are known when
        # a request is made). DMA engines: one free time per engine; the DRAM bus, the flash device
        # and the vector unit: one each. The MAC arrays are used by one unit's compute at a time.
        self.dma_free = [0] * hw.dma.engines
        self.bus_free = 0
        self.flash_free = 0
        self.vec_free = 0
        # cycles per byte at the sustained DRAM bandwidth and of one engine, setup per descriptor
        _, self.cpb_dram, self.cpb_dma, self.setup = unit_params(hw)
        self.cpb_flash = hw.clock.freq_hz / hw.flash.bandwidth_bytes_per_s
        self.xfer_cycles: dict = {}  # bytes -> (controller cycles, engine cycles) of one engine's transfer
        self.split_cycles: dict = {}  # (bytes, engines) -> ``_split_costs``
        self.st = dict.fromkeys(STAT_KEYS, 0)  # the layers' counters
        self.swap_st = dict.fromkeys(STAT_KEYS, 0)  # the background swap's counters
        self.swap_proc = None
        self.events = [] if record else None  # (engine, start, end, label)

    # ---- transfers ------------------------------------------------------------------------------
    def reserve_xfer(self, nbytes: int, st: dict, label: str) -> int:
        """Book one DMA transfer between DRAM and SRAM requested now; returns its end time.

        A transfer of at least two descriptors' worth (``SPLIT_MIN_BYTES`` each) is cut over the
        engines idle now, as a driver splits a large copy into descriptors; otherwise the
        lowest-numbered idle engine (or the first to free up) takes it whole. Each piece: its
        engine spends ``setup_cycles``, then the piece queues for the DRAM controller, holds it for
        bytes / sustained DRAM bandwidth, and its engine stays busy until bytes / engine bandwidth.
        The engines thus share the controller, and a transfer moves at the slower of the two."""
        now = self.env.now
        free = self.dma_free
        if nbytes < 2 * SPLIT_MIN_BYTES or len(free) == 1:  # one engine: the common, fast path
            for e, f in enumerate(free):  # the lowest-numbered idle engine, else the first to free up
                if f <= now:
                    break
            else:
                e = free.index(min(free))
            cost = self.xfer_cycles.get(nbytes)
            if cost is None:  # (controller cycles, engine cycles): a unit moves few distinct sizes
                cost = self.xfer_cycles[nbytes] = (math.ceil(nbytes * self.cpb_dram), math.ceil(nbytes * self.cpb_dma))
            tb, te = cost
            f = free[e]
            t0 = f if f > now else now
            tb0 = t0 + self.setup
            if self.bus_free > tb0:
                tb0 = self.bus_free
            self.bus_free = end = tb0 + tb
            if t0 + self.setup + te > end:
                end = t0 + self.setup + te
            free[e] = end
            st["dram_busy"] += tb
            st["dma_busy"] += end - t0
            if self.events is not None:
                self.events.append(("dram", tb0, tb0 + tb, label))
                self.events.append((f"dma{e}", t0, end, label))
            return end
        return self._reserve_split(nbytes, st, label, now)

    def _reserve_split(self, nbytes: int, st: dict, label: str, now: int) -> int:
        """``reserve_xfer`` of a transfer that may be cut over the engines idle now."""
        free = self.dma_free
        idle = [e for e, f in enumerate(free) if f <= now]
        pieces = min(len(idle), nbytes // SPLIT_MIN_BYTES)
        if pieces >= 2:
            engines = idle[:pieces]
        else:
            engines = [idle[0] if idle else free.index(min(free))]
        costs = self.split_cycles.get((nbytes, len(engines)))
        if costs is None:
            costs = self.split_cycles[nbytes, len(engines)] = self._split_costs(nbytes, len(engines))
        setup, bus, end = self.setup, self.bus_free, now
        dram_busy = dma_busy = 0
        for (tb, te), e in zip(costs, engines):
            f = free[e]
            t0 = f if f > now else now
            tb0 = t0 + setup
            if bus > tb0:
                tb0 = bus
            bus = tb0 + tb
            e_end = t0 + setup + te
            if bus > e_end:
                e_end = bus
            free[e] = e_end
            if e_end > end:
                end = e_end
            dram_busy += tb
            dma_busy += e_end - t0
            if self.events is not None:
                self.events.append(("dram", tb0, bus, label))
                self.events.append((f"dma{e}", t0, e_end, label))
        self.bus_free = bus
        st["dram_busy"] += dram_busy
        st["dma_busy"] += dma_busy
        return end

    def _split_costs(self, nbytes: int, pieces: int) -> list[tuple[int, int]]:
        """(controller cycles, engine cycles) of each piece of a transfer cut over ``pieces``
        engines: bytes shared out evenly, the controller's cycles rounded on the running total
        (pieces cost no rounding)."""
        share, extra = divmod(nbytes, pieces)
        out, done, bus_done = [], 0, 0
        for i in range(pieces):
            b = share + (1 if i < extra else 0)
            done += b
            tb = math.ceil(done * self.cpb_dram) - bus_done
            bus_done += tb
            out.append((tb, math.ceil(b * self.cpb_dma)))
        return out

    def xfer(self, nbytes: int, st: dict, label: str):
        end = self.reserve_xfer(nbytes, st, label)
        yield self.env.timeout(end - self.env.now)

    def reserve_vector(self, cycles: int, st: dict, label: str) -> int:
        v0 = max(self.env.now, self.vec_free)
        self.vec_free = v0 + cycles
        st["vector_busy"] += cycles
        if self.events is not None:
            self.events.append(("vector", v0, v0 + cycles, label))
        return v0 + cycles

    # ---- one execution unit -------------------------------------------------------------------------
    def run_unit(self, plan: Plan, label: str):
        """Replay a unit's tiles; returns when its last output tile is in DRAM.

        The loop is the replay's hot path: it keeps the time it knows (``now``: time moves only
        where it yields) and its own counters (added to the step's at the end) rather than asking
        the environment and the dict on every tile; the events it schedules are the same."""
        env = self.env
        st = self.st
        tiles = plan.tiles
        if not tiles:
            return
        if plan.closed:  # a huge GEMM in closed form (hwsim/gemm_closed_form.py): its replay alone
            yield from self._run_closed(plan, label)
            return
        if plan.parts:  # each part once the one before has drained (its last output stored)
            for part in plan.parts:
                yield from self.run_unit(part, label)
            return
        in_buf, w_buf, out_buf = Buffer(env, plan.in_cap), Buffer(env, plan.w_cap), Buffer(env, plan.out_cap)
        qa, qb, outq = Queue(env), Queue(env), Queue(env)
        env.process(self._loader(tiles, in_buf, 1, 0, 6, qa, label))
        env.process(self._loader(tiles, w_buf, 4, 3, -1, qb, label))
        storer = env.process(self._storer(outq, out_buf, label))
        is_mac = plan.engine == "mac"
        busy_key = "mac_busy" if plan.engine == "mac" else "vector_busy"
        crit_key = "crit_mac" if plan.engine == "mac" else "crit_vector"  # the engine the unit waits on
        ev = self.events
        eng_name = plan.engine
        timeout, reserve_vector = env.timeout, self.reserve_vector
        in_give, w_give, out_take, out_put = in_buf.give, w_buf.give, out_buf.take, outq.put
        alloc = busy = crit = wait_vector = wait_memory = wait_store = 0
        qa_items, qb_items = qa.items, qb.items
        qa_pop, qb_pop = qa_items.popleft, qb_items.popleft
        now = env.now
        for t in tiles:
            if qa_items and qb_items:  # both operands ready: no wait
                qa_pop()
                qb_pop()
            else:
                t0 = now
                if qa_items:
                    qa_pop()
                else:
                    yield qa.wait()
                if qb_items:
                    qb_pop()
                else:
                    yield qb.wait()
                now = env.now
                waited = now - t0
                if waited:
                    pre = min(waited, t[6])  # part of the wait spent in the fused pre-stage
                    wait_vector += pre
                    wait_memory += waited - pre
            if t[8]:
                alloc = t[8]
                ev_ = out_take(alloc)
                if ev_ is not None:
                    t1 = now
                    yield ev_
                    now = env.now
                    wait_store += now - t1
            if is_mac:  # the arrays belong to this unit
                busy += t[7]
                end = now + t[7]
                if ev is not None:
                    ev.append((eng_name, now, end, label))
            else:  # the vector unit may be shared with a background user
                end = reserve_vector(t[7], st, label)
            crit += end - now
            if end > now:
                yield timeout(end - now)
                now = end
            if t[2]:
                in_give(t[2])
            if t[5]:
                w_give(t[5])
            if t[11]:
                out_put((t[9], t[10], alloc))
        out_put(None)
        if is_mac:
            st[busy_key] += busy
        st[crit_key] += crit
        st["wait_vector"] += wait_vector
        st["wait_memory"] += wait_memory
        st["wait_store"] += wait_store
        yield storer
        st["tail"] += env.now - now

    def _run_closed(self, plan: Plan, label: str):
        """A closed-form plan's cycles and counters, as its replay on an idle machine gives them.
        It assumes the machine to itself: ``simulate`` refuses a step that swaps weights in the
        background beside one (``closed_form_beside_swap``)."""
        if self.background_active:
            raise RuntimeError(f"{label}: a closed-form plan beside a background process")
        cycles, counters = plan.closed
        for k, v in counters.items():
            self.st[k] += v
        if cycles:
            yield self.env.timeout(cycles)

    def _loader(self, tiles, buf, get_i: int, load_i: int, pre_i: int, ready, label):
        """One operand's loads, in tile order (input and weights each have their own DMA queue, so
        the next input block and its pre-stage run ahead of the weight tiles): reserve its SRAM,
        DMA it in, run the fused pre-stage (input only) on the vector unit, hand it to compute."""
        env = self.env
        st = self.st
        reserve_xfer, reserve_vector, timeout = self.reserve_xfer, self.reserve_vector, env.timeout
        take, put = buf.take, ready.put
        pre_label = label + " (pre)"
        for t in tiles:
            if t[get_i]:
                ev = take(t[get_i])
                if ev is not None:
                    yield ev
            if t[load_i]:
                end = reserve_xfer(t[load_i], st, label)
                now = env.now
                if end > now:
                    yield timeout(end - now)
            if pre_i >= 0 and t[pre_i]:
                yield timeout(reserve_vector(t[pre_i], st, pre_label) - env.now)
            put(t)

    def _storer(self, outq, out_buf, label):
        env = self.env
        st = self.st
        items = outq.items
        pop, give, timeout = items.popleft, out_buf.give, env.timeout
        post_label = label + " (post)"
        while True:
            if items:
                item = pop()
            else:
                item = yield outq.wait()
            if item is None:
                return
            nbytes, post, alloc = item
            if post:
                yield timeout(self.reserve_vector(post, st, post_label) - env.now)
            if nbytes:  # 0: the output stays in SRAM for the next unit (else as ``xfer``)
                yield timeout(self.reserve_xfer(nbytes, st, label) - env.now)
            give(alloc)

    # ---- weight-set swap ------------------------------------------------------------------------------
    def start_swap(self, pieces: list, from_flash: bool, to_sram: bool, arrivals: list):
        """Stream ``pieces`` (bytes per unit, in execution order) into place in the background.

        ``arrivals[i]`` (an event or None) fires when unit i's weights are in place. Flash reads are
        ``flash.chunk_bytes`` commands, queued as UFS queues them (``flash.queue_depth`` in flight,
        ``flash.command_latency_s`` each); a reader and a writer overlap through a two-chunk queue.
        One piece: the command generator, the reader and the writer are SimPy processes that share
        the queue, the arrival events and the counters through this closure.
        """
        env = self.env
        chunk = self.hw.flash.chunk_bytes
        q = simpy.Store(env, capacity=2)
        st = self.swap_st

        flash = self.hw.flash
        latency = math.ceil(flash.command_latency_s * self.hw.clock.freq_hz)
        depth = flash.queue_depth

        def commands():
            for i, nbytes in enumerate(pieces):
                left = nbytes
                while left > 0:
                    c = min(chunk, left)
                    left -= c
                    yield c, i if left == 0 else -1
                if nbytes == 0 and arrivals[i] is not None:
                    yield 0, i

        def reader():
            """UFS reads: up to ``queue_depth`` commands in flight; a command's data starts
            ``command_latency_s`` after it is issued, once the device has sent the earlier ones
            (so with a deep queue the latency hides behind the previous transfers)."""
            inflight = deque()  # (data end, bytes, tag)
            todo = commands()
            nxt = next(todo, None)
            while nxt is not None or inflight:
                while nxt is not None and (len(inflight) < depth or not from_flash):
                    c, tag = nxt
                    nxt = next(todo, None)
                    if not from_flash or not c:
                        inflight.append((env.now, c, tag))
                        continue
                    f0 = max(env.now + latency, self.flash_free)
                    tf = math.ceil(c * self.cpb_flash)
                    self.flash_free = f0 + tf
                    st["flash_busy"] += tf
                    if self.events is not None:
                        self.events.append(("flash", f0, f0 + tf, "swap"))
                    inflight.append((f0 + tf, c, tag))
                end, c, tag = inflight.popleft()
                if end > env.now:
                    yield env.timeout(end - env.now)
                yield q.put((c, tag))
            yield q.put(None)

        def writer():
            while True:
                item = yield q.get()
                if item is None:
                    return
                c, i = item
                if c:
                    if from_flash:  # flash -> DRAM
                        yield from self.xfer(c, st, "swap")
                    if to_sram:  # DRAM -> SRAM (resident weights)
                        yield from self.xfer(c, st, "swap")
                if i >= 0 and arrivals[i] is not None:
                    arrivals[i].succeed()

        env.process(reader())
        self.swap_proc = env.process(writer())
        return self.swap_proc

    @property
    def background_active(self) -> bool:
        return self.swap_proc is not None and self.swap_proc.is_alive
