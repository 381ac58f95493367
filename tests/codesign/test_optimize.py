"""`codesign optimize`: a multi-objective Optuna search over a spec's space into the sweep's results
folder: every trial stored once under the sweep's own point key, a rerun resumes from the store, the
reported front is the non-dominated set of the feasible trials, constraints on quality columns
respected, Dask gives the same points; hypervolume and Pareto helpers exact on small cases; bad
objectives and constraints as one line, exit 2."""

import itertools

import pytest
import yaml

from codesign.cli import main
from codesign.optimize import Constraint, hypervolume, optimize, pareto_front
from codesign.spec import load_spec
from codesign.store import load_results
from workloads.errors import ConfigError

SPEC = {
    "name": "opt-test",
    "cost_workload": "stdit-tiny",
    "recipes": ["static-w8a8", "asq-w8a8", "dynamic-w8a8"],
    "hardware": {
        "base": "edge-npu",
        "sampling": "random",
        "samples": 10,
        "seed": 0,
        "axes": {
            "mac.arrays": [1, 2, 4],
            "clock.freq_hz": {"min": 6.0e8, "max": 1.2e9, "scale": "log"},
            "sram.weight_buffer_bytes": [524288, 2097152],
            "vector.online_reduction": [True, False],
        },
    },
}


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "opt.yaml"
    p.write_text(yaml.safe_dump(SPEC))
    return p


@pytest.fixture(scope="module")
def searched(spec_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("res") / "r"
    spec = load_spec(spec_path)
    # the default sampler (GP): 16 trials in batches of 4, so the last batch comes from the model, not
    # from its 10 random start-up trials
    s = optimize(spec, out, ["latency_s", "energy_j"], trials=16, batch=4, jobs=1, progress=False, seed=3)
    return spec, out, s


def test_trials_stored_once_and_front_is_non_dominated(searched):
    spec, out, s = searched
    df = load_results(out)
    assert s.trials == 16 and s.computed == len(df) == df["key"].nunique() <= 16
    ok = df[df["status"] == "ok"]
    assert s.failed == (df["status"] == "failed").sum() and s.feasible == len(ok)
    pts = ok[["latency_s", "energy_j"]].values.tolist()
    front_keys = {r["key"] for r in s.pareto}
    want = {ok["key"].iloc[i] for i in pareto_front(pts)}
    assert front_keys == want and front_keys
    assert all(r["recipe"] in spec.recipes for r in s.pareto)


def test_rerun_resumes_from_the_store(searched):
    spec, out, s = searched
    again = optimize(spec, out, ["latency_s", "energy_j"], trials=16, batch=4, jobs=1, progress=False, seed=3)
    assert again.computed == 0 and [r["key"] for r in again.pareto] == [r["key"] for r in s.pareto]


def test_dask_cluster_gives_the_same_points(searched, tmp_path):
    from dask.distributed import Client, LocalCluster

    spec, _, s = searched
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, Client(cluster) as client:
        d = optimize(
            spec,
            tmp_path / "d",
            ["latency_s", "energy_j"],
            trials=16,
            batch=4,
            scheduler=client,
            progress=False,
            seed=3,
        )
    assert [(r["key"], r["latency_s"]) for r in d.pareto] == [(r["key"], r["latency_s"]) for r in s.pareto]
    assert d.history == s.history  # every trial, the model's included, not only the front


def test_default_sampler_is_the_gp_and_a_seed_fixes_its_trials(searched, tmp_path):
    """Same seed in a fresh folder: the same 16 trials (so a killed search resumes); another seed:
    other trials."""
    import inspect

    from codesign import api

    spec, _, s = searched
    assert inspect.signature(optimize).parameters["sampler"].default == "gp"
    assert inspect.signature(api.optimize).parameters["sampler"].default == "gp"
    kw = dict(trials=16, batch=4, jobs=1, progress=False)
    again = optimize(spec, tmp_path / "a", ["latency_s", "energy_j"], seed=3, **kw)
    assert again.history == s.history and again.computed == s.computed
    other = optimize(spec, tmp_path / "b", ["latency_s", "energy_j"], seed=4, **kw)
    assert other.history != s.history


def test_ordered_number_lists_are_ordinal_others_categorical():
    """``mac.arrays: [1, 2, 4]`` and ``tech.node_nm: [7, 5, 4]`` are scales (an integer index the
    model can interpolate); two values, strings or an unordered list stay categorical."""
    import optuna

    from codesign.optimize import suggest_point
    from codesign.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "name": "ord",
            "cost_workload": "stdit-tiny",
            "recipes": ["asq-w8a8"],
            "hardware": {
                "base": "edge-npu",
                "axes": {
                    "mac.arrays": [1, 2, 4],
                    "tech.node_nm": [7, 5, 4],
                    "sram.weight_buffer_bytes": [2097152, 524288, 8388608],
                    "mac.rows": [32, 64],
                    "flash.part": ["ufs3.1", "ufs4.0"],
                },
            },
        }
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    point, recipe = suggest_point(trial, spec, 0)
    kinds = {k: type(d).__name__ for k, d in trial.distributions.items()}
    assert kinds == {
        "mac.arrays": "IntDistribution",
        "tech.node_nm": "IntDistribution",
        "sram.weight_buffer_bytes": "CategoricalDistribution",
        "mac.rows": "CategoricalDistribution",
        "flash.part": "CategoricalDistribution",
        "recipe": "CategoricalDistribution",
    }
    chosen = dict(point.overrides)
    assert chosen["mac.arrays"] == [1, 2, 4][trial.params["mac.arrays"]] and recipe == "asq-w8a8"


def test_quality_constraint_is_respected(spec_path, tmp_path):
    from codesign.store import load_quality
    from workloads.presets import PRESET_DIR

    tiny = yaml.safe_load((PRESET_DIR / "stdit-tiny.yaml").read_text())
    tiny["num_steps"] = 3  # quality in seconds
    (tmp_path / "tiny3.yaml").write_text(yaml.safe_dump(tiny))
    spec_q = yaml.safe_load(spec_path.read_text())
    spec_q["quality"] = {
        "workload": str(tmp_path / "tiny3.yaml"),
        "options": {"backend": "fakequant", "num_prompts": 1},
    }
    p = tmp_path / "q.yaml"
    p.write_text(yaml.safe_dump(spec_q))
    spec, out = load_spec(p), tmp_path / "r"
    kw = dict(trials=8, batch=4, jobs=1, progress=False)
    optimize(spec, out, ["latency_s", "energy_j"], [Constraint.parse("q.sqnr_db>=-1e9")], **kw)  # quality once
    sqnr = dict(zip(load_quality(out)["recipe"], load_quality(out)["q.sqnr_db"]))
    assert set(sqnr) == set(spec.recipes)
    best = max(sqnr, key=sqnr.get)
    kw.update(trials=16, seed=1)  # other points, among them the best recipe's
    s = optimize(spec, out, ["latency_s", "energy_j"], [Constraint.parse(f"q.sqnr_db>={sqnr[best]}")], **kw)
    df = load_results(out)
    assert set(df["recipe"]) - {best}  # other recipes were tried, and are infeasible
    assert s.pareto and {r["recipe"] for r in s.pareto} == {best}


def test_hypervolume_and_front_exact_on_small_cases():
    def brute(points, ref):  # unit cells of an integer lattice dominated by some point
        cells = itertools.product(*(range(r) for r in ref))
        return sum(any(all(p[i] <= c[i] for i in range(len(ref))) for p in points) for c in cells)

    cases = [
        ([(1, 3), (2, 2), (3, 1)], (4, 4)),
        ([(0, 2, 1), (1, 1, 1), (2, 0, 0), (3, 3, 3)], (4, 4, 4)),
        ([(5, 5)], (4, 4)),
        ([(1, 1, 2), (1, 1, 2)], (3, 3, 3)),
    ]
    for pts, ref in cases:
        assert hypervolume(pts, list(ref)) == brute(pts, ref)
    assert pareto_front([(1, 3), (2, 2), (2, 3), (3, 1), (1, 3)]) == [0, 1, 3, 4]


@pytest.mark.parametrize(
    "extra,field",
    [
        (["--objectives", "latency_s,nope"], "objectives"),
        (["--objectives", ""], "objectives"),
        (["--constraint", "q.sqnr_db>40"], "constraint"),
        (["--constraint", "q.sqnr_db>=40"], "constraint"),  # this spec computes no quality
        (["--constraint", "nope<=3"], "constraint"),
        (["--sampler", "cmaes"], "sampler"),
        (["--trials", "0"], "trials"),
    ],
)
def test_bad_arguments_one_line(spec_path, tmp_path, capsys, extra, field):
    assert main(["optimize", str(spec_path), "--out", str(tmp_path / "o"), "--jobs", "1", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not any((tmp_path / "o" / "points").glob("*.parquet")) if (tmp_path / "o").exists() else True


def test_constraint_parse():
    c = Constraint.parse(" area_mm2 <= 4.5 ")
    assert (c.column, c.op, c.value) == ("area_mm2", "<=", 4.5)
    assert c.violation(4.0) < 0 < c.violation(5.0) and c.violation(float("nan")) > 0
    with pytest.raises(ConfigError):
        Constraint.parse("area_mm2 == 3")


def test_nominal_clock_points_are_found_not_failed(tmp_path):
    """The search looks each asked point up by its content key; the sweep stores the hardware resolved
    (a `nominal` clock as the node's clock), so the search must key it the same way or every such
    point reads as failed."""
    from codesign.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "name": "nominal",
            "cost_workload": "stdit-tiny",
            "recipes": ["asq-w8a8"],
            "hardware": {"base": "edge-npu", "axes": {"clock.freq_hz": ["nominal"], "mac.rows": [32, 64]}},
        }
    )
    s = optimize(spec, tmp_path / "o", ["latency_s"], trials=3, batch=3, jobs=1, progress=False, sampler="random")
    assert s.failed == 0 and s.feasible == 3


def test_json_front_values_carry_their_units(searched):
    """Each reported value says its unit: an objective its store column's, a range axis the hardware
    column's, a list axis ``index`` (its value is a position in the spec's list)."""
    _, _, s = searched
    out = s.to_json(["latency_s", "energy_j"])
    assert out["pareto"] and len(out["pareto"]) == len(s.pareto)
    for entry, row in zip(out["pareto"], s.pareto):
        assert entry["objectives"] == {
            "latency_s": {"value": row["latency_s"], "unit": "s"},
            "energy_j": {"value": row["energy_j"], "unit": "J"},
        }
        hw = entry["hardware"]
        assert hw["clock.freq_hz"] == {"value": row["clock.freq_hz"], "unit": "Hz"}
        assert 6.0e8 <= hw["clock.freq_hz"]["value"] <= 1.2e9
        for axis in ("mac.arrays", "sram.weight_buffer_bytes", "vector.online_reduction"):
            assert hw[axis]["unit"] == "index" and hw[axis]["value"] == row[axis]
