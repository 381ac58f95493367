"""Run a sweep: every (recipe x hardware point) of a spec through hwsim, on a local process pool
or a Dask cluster, into a resumable results store.

Work is planned in the parent: each design point gets its content key, points already in the store
are skipped, and the rest are cut into chunks **by hardware point**: a chunk holds every pending
recipe of one hardware point (or of a few, when there are few recipes), so the worker that runs it
finds the plans, unit runs and whole steps the recipes share in hwsim's process-level cache (the
W8A8 static / ASQ / groups / TSQ+TSW recipes differ only in a few smoothing multiplies and swaps).
The float trace of the cost workload is built once in the parent and shipped to workers once:
through a pickle file the pool's workers load and keep (local), or
``Client.scatter(broadcast=True)`` (Dask); each worker annotates it per recipe
(``workloads.recipes``, plain Python) once and keeps the quantized traces. A chunk returns its rows; the parent alone writes them to
the store, in small atomic part files, so a killed sweep loses at most the last second of work and
a rerun computes only what is missing.

Quality is a property of the recipe, not of the chip: it is computed once per (quality workload,
recipe) and joined onto the cost rows when the results are loaded.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from codesign.spec import SweepSpec, content_hash, flatten, set_dotted
from codesign.store import BREAKDOWN_PREFIXES, POINTS, QUALITY, SCALAR_METRICS, ResultStore, quarantine
from workloads.errors import ConfigError
from workloads.io import atomic_open

_log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0  # the most work a SIGKILL can lose (plus chunks in flight)
MAX_CHUNK = 16  # points per task (a hardware point's recipes are never split, so one may hold more)


# ---- worker side (runs in pool processes / Dask workers; imports no torch) ----------------------
_TRACE_CACHE: dict[str, object] = {}


def _init_worker(parent_pid: int, threads: int) -> None:
    """Pool-worker initializer: share the cores between the workers (torch reads these before its
    first import), and exit when the sweep process dies (a SIGKILLed parent cannot shut its pool
    down; a worker blocked on the task queue would otherwise live on as an orphan)."""
    import threading

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _resolve(ref):
    """A shipped object (trace, quality preparation), or the path of a pickled one (local pool):
    loaded once per worker and kept (every chunk needs every recipe's trace); ``_forget`` drops
    the files a finished sweep deleted."""
    if not isinstance(ref, str):
        return ref
    if ref not in _TRACE_CACHE:
        with open(ref, "rb") as fh:
            _TRACE_CACHE[ref] = pickle.load(fh)
    return _TRACE_CACHE[ref]


def _forget() -> None:
    for ref in [r for r in _TRACE_CACHE if not os.path.exists(r)]:
        del _TRACE_CACHE[ref]


def result_columns(result: dict) -> dict:
    """Flatten a ``SimResult.to_dict()`` into the store's metric columns."""
    row = {m: result[m] for m in SCALAR_METRICS if m in result}
    if result.get("latency_per_step_s"):
        row["latency_step_max_s"] = max(result["latency_per_step_s"])
    for src, prefix in BREAKDOWN_PREFIXES.items():
        for k, v in (result.get(src) or {}).items():
            row[prefix + k] = v
    return row


_QUANTIZED: dict = {}  # recipe -> quantized trace, for the float trace in _QUANTIZED_OF
_QUANTIZED_OF: list = [None]


def quantized_trace(float_trace, recipe):
    """The recipe's annotated trace (``workloads.recipes.annotate_trace``: plain Python, no torch),
    made once per worker: annotating in the workers, in parallel, beats annotating every recipe
    in the parent and shipping each big trace."""
    from workloads.recipes import annotate_trace

    if _QUANTIZED_OF[0] is not float_trace:  # a new sweep (the reference keeps the id unique)
        _QUANTIZED.clear()
        _QUANTIZED_OF[0] = float_trace
    key = repr(recipe)
    if key not in _QUANTIZED:
        _QUANTIZED[key] = annotate_trace(float_trace, recipe)
    return _QUANTIZED[key]


def simulate_chunk(float_ref, recipes: dict, items: list[tuple[str, str, dict, str]]) -> list[dict]:
    """Simulate one chunk of design points: ``items`` = (recipe name, key, hw dict, prefetch), the
    recipes of a hardware point next to each other (they share hwsim's cache); ``float_ref`` = the
    shipped float trace, ``recipes`` = name -> ``Recipe``."""
    import hwsim

    _forget()
    float_trace = _resolve(float_ref)
    rows = []
    for recipe, key, hw_dict, prefetch in items:
        trace = quantized_trace(float_trace, recipes[recipe])
        t0 = time.perf_counter()
        try:
            hw = hwsim.hw_from_dict(hw_dict)
            res = hwsim.simulate(trace, hw, prefetch=prefetch)
            row = {"key": key, "status": "ok", "error": "", **result_columns(res.to_dict())}
        except ConfigError as e:  # the point is not a valid chip: a failed row, the sweep goes on
            row = {"key": key, "status": "failed", "error": str(e)}
        row["sim_wall_s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


_MODELS: dict = {}


def _quality_model(workload_name: str, options: dict):
    from quantmodel.eval import quality
    from workloads.presets import get_workload

    key = (workload_name, options.get("checkpoint"))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = quality.load_model(get_workload(workload_name), checkpoint=options.get("checkpoint"))
    return _MODELS[key]


def prepare_quality(workload_name: str, options: dict, need_stats: bool = True) -> dict:
    """What every recipe's quality shares, computed once per quality workload: the per-step
    calibration statistics (static recipes only) and the float model's reference sample."""
    from quantmodel.eval import quality
    from workloads.presets import get_workload

    w = get_workload(workload_name)
    model = _quality_model(workload_name, options)
    stats = quality.get_stats(model, w, num_prompts=options.get("num_prompts", 4)) if need_stats else None
    z, y = quality.eval_inputs(model, options.get("num_samples", 1), workload=w)
    ref = quality.sample(lambda x, t, yy, step: model(x, t, yy), model, w, z, y)
    return {"stats": stats, "reference": ref}


def evaluate_quality(workload_name: str, recipe_name: str, options: dict, prep_ref) -> dict:
    """Quality metrics of one recipe on the quality workload (quantmodel.eval.quality.evaluate_recipe)."""
    from quantmodel.eval import quality
    from workloads.presets import get_workload

    prep = _resolve(prep_ref)
    model = _quality_model(workload_name, options)
    kw = {k: options[k] for k in ("backend", "nonlinear", "num_samples", "layer_sqnr") if k in options}
    res = quality.evaluate_recipe(
        model, get_workload(workload_name), recipe_name, stats=prep["stats"], reference_sample=prep["reference"], **kw
    )
    return {f"q.{k}": v for k, v in res.items() if k not in ("recipe", "scheme", "w_bits", "a_bits")}


# ---- planning --------------------------------------------------------------------------------
@dataclass
class RecipePlan:
    recipe: str
    rows: list[dict]  # the columns the parent knows (identity, recipe, hw.*) for pending points
    items: list[tuple[str, dict, str]]  # what the worker needs for the pending points


@dataclass
class SweepPlan:
    spec: SweepSpec
    total_points: int
    done_points: int
    recipes: list[RecipePlan]
    quality_pending: list[tuple[str, str]] = field(default_factory=list)  # (quality_key, recipe)

    @property
    def pending_points(self) -> int:
        return sum(len(r.items) for r in self.recipes)


def workload_identity(workload, for_quality: bool = False) -> dict:
    """The workload fields a content key hashes. ``trained`` (which trained model a quality run
    loads) never changes a cost, so cost keys leave it out; quality keys keep it only when it is set,
    so a workload without a trained model hashes as it did before the field existed."""
    d = workload.to_dict()
    if not for_quality or not d.get("trained"):
        d.pop("trained", None)
    return d


def quality_prep_key(spec: SweepSpec) -> str:
    from workloads.presets import get_workload

    wl = workload_identity(get_workload(spec.quality_workload), for_quality=True)
    return content_hash({"workload": wl, "options": spec.quality_options})


def quality_key(spec: SweepSpec, recipe_name: str) -> str | None:
    if spec.quality_workload is None:
        return None
    from workloads.presets import get_workload
    from workloads.recipes import get_recipe

    return content_hash(
        {
            "workload": workload_identity(get_workload(spec.quality_workload), for_quality=True),
            "recipe": get_recipe(recipe_name).to_dict(),
            "options": spec.quality_options,
        }
    )


def point_key(workload_id: dict, recipe_dict: dict, hw_dict: dict, prefetch: str) -> str:
    """The content key of one design point (what it computes, so a sweep and a search share points)."""
    import hwsim

    return content_hash(
        {
            "workload": workload_id,
            "recipe": recipe_dict,
            "hw": hw_dict,
            "prefetch": prefetch,
            "sim_version": hwsim.SIM_VERSION,
        }
    )


def point_hw_dict(base: dict, point) -> dict:
    """The hardware of one design point: the base with the point's overrides, resolved through the
    hardware schema (a `nominal` clock becomes the node's clock), as the store keys and records it."""
    import hwsim

    d = base
    for name, value in point.overrides:
        d = set_dotted(d, name, value)
    return hwsim.hw_to_dict(hwsim.hw_from_dict(d))


def plan_sweep(spec: SweepSpec, store: ResultStore, pairs: set | None = None) -> SweepPlan:
    """Keys of every design point; what is not in the store yet, grouped by recipe. ``pairs``: only
    these (point index, recipe) combinations (a search asks for single points, not the cross product)."""
    import hwsim
    from workloads.presets import get_workload
    from workloads.recipes import get_recipe

    workload = get_workload(spec.cost_workload)
    wl = workload_identity(workload)
    base = hwsim.hw_to_dict(hwsim.load_hw(spec.hw_base))
    points = spec.hardware_points()
    hw_dicts = [point_hw_dict(base, p) for p in points]
    hw_cols = [
        {f"hw.{k}": (v if not isinstance(v, (list, dict)) else str(v)) for k, v in flatten(d).items()} for d in hw_dicts
    ]
    done = store.done_keys(POINTS)
    plans, n_done = [], 0
    for rname in spec.recipes:
        recipe = get_recipe(rname)
        rdict = recipe.to_dict()
        qkey = quality_key(spec, rname)
        common = {
            "spec_hash": spec.spec_hash,
            "spec_name": spec.name,
            "cost_workload": spec.cost_workload,
            "recipe": recipe.name,
            "scheme": recipe.scheme,
            "w_bits": recipe.w_bits,
            "a_bits": recipe.a_bits,
            "num_weight_sets": recipe.num_weight_sets(workload.num_steps),
            "hw_base": spec.hw_base,
            "sim_version": hwsim.SIM_VERSION,
            "quality_workload": spec.quality_workload,
            "quality_key": qkey,
        }
        rp = RecipePlan(rname, [], [])
        seen = set()
        for p, d, cols in zip(points, hw_dicts, hw_cols):
            if pairs is not None and (p.index, rname) not in pairs:
                continue
            key = point_key(wl, rdict, d, p.prefetch)
            if key in done or key in seen:
                n_done += key in done
                continue
            seen.add(key)
            hw_key = content_hash({"hw": d, "prefetch": p.prefetch})
            rp.rows.append(
                {"key": key, **common, "point_index": p.index, "hw_key": hw_key, "prefetch": p.prefetch, **cols}
            )
            rp.items.append((key, d, p.prefetch))
        if rp.items:
            plans.append(rp)
    total = len(points) * len(spec.recipes) if pairs is None else len(pairs)
    q_pending = []
    if spec.quality_workload is not None:
        q_done = store.done_keys(QUALITY)
        q_pending = [(quality_key(spec, r), r) for r in spec.recipes if quality_key(spec, r) not in q_done]
    return SweepPlan(spec, total, n_done, plans, q_pending)


# ---- executors ---------------------------------------------------------------------------------
class InlineRunner:
    """``--jobs 1``: compute in this process (no pool to start; notebooks and small sweeps)."""

    jobs = 1

    def ship(self, name: str, trace):
        return trace

    def release(self, ref) -> None:
        pass

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:  # re-raised by fut.result() in the collector
            fut.set_exception(e)
        return fut

    def wait_some(self, futures: set, timeout: float | None):
        return set(futures)

    def close(self) -> None:
        pass


class LocalRunner:
    """A process pool on this machine; traces travel as pickle files the workers load once."""

    def __init__(self, jobs: int, cache_dir: Path):
        import multiprocessing as mp

        self.jobs = jobs
        self.cache_dir = cache_dir
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_dir.mkdir(parents=True)
        # spawn: the parent has torch loaded (tracing); forking a threaded process is unsafe
        self.pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), max(1, (os.cpu_count() or 1) // jobs)),
        )

    def ship(self, name: str, trace) -> str:
        path = self.cache_dir / f"{name}.pkl"
        with atomic_open(path, "wb") as fh:
            pickle.dump(trace, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return str(path)

    def release(self, ref) -> None:
        Path(ref).unlink(missing_ok=True)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def wait_some(self, futures: set, timeout: float | None):
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return done

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)


class DaskRunner:
    """A Dask distributed cluster (``--scheduler tcp://host:port``): how a sweep leaves one machine."""

    def __init__(self, address, connect_timeout_s: float = 10.0):
        from dask.distributed import Client

        try:
            self.client = (
                address
                if not isinstance(address, str)
                else Client(address, timeout=f"{connect_timeout_s}s", set_as_default=False)
            )
        except (OSError, TimeoutError) as e:
            raise ConfigError(
                "--scheduler",
                address,
                "the address of a running Dask scheduler, "
                f"e.g. tcp://host:8786 (connecting failed: {type(e).__name__})",
            ) from None
        self._own = isinstance(address, str)
        self.jobs = max(
            1, sum(w.get("nthreads", 1) for w in self.client.scheduler_info(n_workers=-1)["workers"].values())
        )

    def ship(self, name: str, trace):
        return self.client.scatter(trace, broadcast=True, hash=False)

    def release(self, ref) -> None:
        ref.release()

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait_some(self, futures: set, timeout: float | None):
        from dask.distributed import wait as dwait

        try:
            done, _ = dwait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set()
        return set(done)

    def close(self) -> None:
        if self._own:
            self.client.close()


# ---- the sweep -----------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    total_points: int
    skipped_points: int
    computed_points: int
    failed_points: int
    quality_computed: int
    wall_s: float

    def line(self) -> str:
        rate = self.computed_points / self.wall_s if self.wall_s > 0 else 0.0
        return (
            f"{self.total_points} design points: {self.skipped_points} already done, "
            f"{self.computed_points} computed ({self.failed_points} failed validation), "
            f"{self.quality_computed} quality evaluations, {self.wall_s:.1f} s ({rate:.1f} points/s)"
        )


def _chunk_size(n: int, jobs: int) -> int:
    return max(1, min(MAX_CHUNK, math.ceil(n / (4 * jobs))))


def hardware_chunks(plan: SweepPlan, jobs: int) -> list[list[tuple[str, int]]]:
    """Pending points as chunks of whole hardware points: a chunk is a list of (recipe index in
    ``plan.recipes``, item index), every pending recipe of each of its hardware points together,
    in hardware-point order; about ``_chunk_size`` points each (one hardware point at least)."""
    by_hw: dict[str, list[tuple[int, int]]] = {}
    for ri, rp in enumerate(plan.recipes):
        for ii, row in enumerate(rp.rows):
            by_hw.setdefault(row["hw_key"], []).append((ri, ii))
    size = _chunk_size(plan.pending_points, jobs)
    chunks, cur = [], []
    for pts in by_hw.values():
        if cur and len(cur) + len(pts) > size:
            chunks.append(cur)
            cur = []
        cur = cur + pts
    if cur:
        chunks.append(cur)
    return chunks


def build_float_trace(spec: SweepSpec):
    from quantmodel.model.tracing import build_trace
    from workloads.presets import get_workload

    return build_trace(get_workload(spec.cost_workload))


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    jobs: int | None = None,
    scheduler=None,
    append: bool = False,
    progress: bool = True,
    connect_timeout_s: float = 10.0,
    flush_every_s: float = FLUSH_EVERY_S,
    pairs: set | None = None,
) -> SweepSummary:
    """Compute every missing design point of ``spec`` into the results folder ``out``.

    ``scheduler``: None (local process pool of ``jobs`` workers), a Dask scheduler address, or a
    ``dask.distributed.Client``. ``flush_every_s``: the most finished work a kill can lose.
    ``pairs``: compute only these (point index, recipe) combinations (:mod:`codesign.optimize`).
    """
    t0 = time.perf_counter()
    # connect first: an unreachable scheduler must fail before anything is written
    dask_runner = DaskRunner(scheduler, connect_timeout_s) if scheduler is not None else None
    with ResultStore.open(out, spec, append=append) as store:
        plan = plan_sweep(spec, store, pairs)
        _log.info(
            "%s: %d design points, %d in the store, %d to compute, %d quality runs",
            spec.name,
            plan.total_points,
            plan.done_points,
            plan.pending_points,
            len(plan.quality_pending),
        )
        summary = SweepSummary(plan.total_points, plan.done_points, 0, 0, 0, 0.0)
        if plan.pending_points == 0 and not plan.quality_pending:
            if dask_runner is not None:
                dask_runner.close()
            summary.wall_s = time.perf_counter() - t0
            return summary
        if dask_runner is not None:
            runner = dask_runner
        elif (jobs or os.cpu_count() or 1) == 1:
            runner = InlineRunner()
        else:
            runner = LocalRunner(jobs or os.cpu_count() or 1, store.root / ".traces")
        _SweepRun(spec, store, plan, runner, summary, progress, flush_every_s).run()
    summary.wall_s = time.perf_counter() - t0
    return summary


def _load_prep(path: Path) -> dict | None:
    """The cached quality preparation, or None: missing, or unreadable (then quarantined, and
    computed afresh). Any exception: a torn pickle can raise almost anything while loading."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            prep = pickle.load(fh)
        if not isinstance(prep, dict) or not {"stats", "reference"} <= set(prep):
            raise ValueError("not a quality preparation")
        return prep
    except Exception as e:
        quarantine(path, type(e).__name__)
        return None


class _SweepRun:
    """One execution of a sweep plan on a runner: the futures in flight, the finished rows waiting to
    be flushed to the store, the shipped traces still in use, and the progress bar."""

    def __init__(
        self,
        spec: SweepSpec,
        store: ResultStore,
        plan: SweepPlan,
        runner,
        summary: SweepSummary,
        progress: bool,
        flush_every_s: float,
    ):
        from tqdm import tqdm

        self.spec, self.store, self.plan, self.runner, self.summary = spec, store, plan, runner, summary
        self.flush_every_s = flush_every_s
        self.bar = tqdm(
            total=plan.pending_points,
            unit="pt",
            desc=f"sweep {spec.name}",
            file=sys.stderr,
            disable=not progress,
            smoothing=0.1,
            dynamic_ncols=True,
        )
        self.buffers: dict[str, list] = {POINTS: [], QUALITY: []}
        self.last_flush = time.monotonic()
        self.futures: dict = {}  # future -> (POINTS, rows-by-key, recipes) | (QUALITY, qkey, recipe) | ("prep", path, None)
        self.refs_left: dict[str, list] = {}  # shipped trace -> [its ref, chunks still running]

    def run(self) -> None:
        try:
            if self.plan.quality_pending:
                self.start_quality()
            # the float trace once; workers annotate it per recipe (and run the quality
            # evaluations meanwhile); then the chunks, each all recipes of its hardware point(s)
            if self.plan.recipes:
                self.start_points()
                self.collect(self.runner.wait_some(set(self.futures), timeout=0))
            while self.futures:
                self.collect(self.runner.wait_some(set(self.futures), timeout=self.flush_every_s))
            self.flush(force=True)
            self.bar.close()
            self.store.compact(POINTS)
            self.store.compact(QUALITY)
        finally:
            self.flush(force=True)  # whatever finished before an error or Ctrl-C is kept
            self.bar.close()
            self.runner.close()

    def start_quality(self) -> None:
        """Calibration and the float reference are shared by all recipes and kept across reruns: load
        them, or compute them first; the recipes' evaluations follow (:meth:`submit_quality`)."""
        from workloads.recipes import get_recipe

        spec = self.spec
        need_stats = any(get_recipe(r).scheme not in ("fp16", "dynamic") for _, r in self.plan.quality_pending)
        prep_path = self.store.root / QUALITY / f"prep-{quality_prep_key(spec)}-{int(need_stats)}.pkl"
        prep = _load_prep(prep_path)
        if prep is not None:
            self.submit_quality(prep)
        else:
            fut = self.runner.submit(prepare_quality, spec.quality_workload, spec.quality_options, need_stats)
            self.futures[fut] = ("prep", prep_path, None)

    def submit_quality(self, prep) -> None:
        ref = self.runner.ship("quality-prep", prep)
        for qkey, recipe in self.plan.quality_pending:
            fut = self.runner.submit(
                evaluate_quality, self.spec.quality_workload, recipe, self.spec.quality_options, ref
            )
            self.futures[fut] = (QUALITY, qkey, recipe)

    def start_points(self) -> None:
        """Ship the float trace once and submit the chunks, each all recipes of its hardware point(s)."""
        from workloads.recipes import get_recipe

        plan, runner = self.plan, self.runner
        float_ref = runner.ship(content_hash(["float", self.spec.cost_workload]), build_float_trace(self.spec))
        recipe_objs = {rp.recipe: get_recipe(rp.recipe) for rp in plan.recipes}
        chunks = hardware_chunks(plan, runner.jobs)
        self.refs_left["float"] = [float_ref, len(chunks)]
        for chunk in chunks:
            items, known, used = [], {}, set()
            for ri, ii in chunk:
                rp = plan.recipes[ri]
                key, hw_dict, prefetch = rp.items[ii]
                items.append((rp.recipe, key, hw_dict, prefetch))
                known[key] = rp.rows[ii]
                used.add(rp.recipe)
            fut = runner.submit(simulate_chunk, float_ref, {r: recipe_objs[r] for r in used}, items)
            self.futures[fut] = (POINTS, known, ["float"])

    def collect(self, done_futures) -> None:
        for fut in done_futures:
            what = self.futures.pop(fut)
            result = fut.result()  # a bug in a worker stops the sweep loudly; stored parts stay
            if what[0] == "prep":
                self.store.write_pickle(what[1], result)
                self.submit_quality(result)
            elif what[0] == QUALITY:
                _, qkey, recipe = what
                self.buffers[QUALITY].append(
                    {
                        "key": qkey,
                        "quality_key": qkey,
                        "recipe": recipe,
                        "quality_workload": self.spec.quality_workload,
                        **result,
                    }
                )
                self.summary.quality_computed += 1
                self.bar.set_postfix_str(
                    f"quality {self.summary.quality_computed}/{len(self.plan.quality_pending)} recipes"
                )
            else:
                self.collect_points(*what[1:], result)
        self.flush()

    def collect_points(self, known: dict, shipped: list, result: list) -> None:
        for row in result:
            self.buffers[POINTS].append({**known[row["key"]], **row})
            self.summary.failed_points += row["status"] == "failed"
        self.summary.computed_points += len(result)
        self.bar.update(len(result))
        for name in shipped:
            ref = self.refs_left[name]
            ref[1] -= 1
            if ref[1] == 0:
                self.runner.release(ref[0])

    def flush(self, force: bool = False) -> None:
        if force or time.monotonic() - self.last_flush >= self.flush_every_s:
            for kind, buf in self.buffers.items():
                if buf:
                    self.store.write_rows(buf, kind)
                    buf.clear()
            self.last_flush = time.monotonic()
