"""Pareto fronts: the fast sweep-line mask equals the definition (brute force over all pairs)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.pareto import pareto_front, pareto_mask
from workloads.errors import ConfigError


def brute_force(vals: np.ndarray) -> np.ndarray:
    n = len(vals)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if np.isnan(vals[i]).any():
            keep[i] = False
            continue
        for j in range(n):
            if j != i and not np.isnan(vals[j]).any() and np.all(vals[j] <= vals[i]) and np.any(vals[j] < vals[i]):
                keep[i] = False
                break
    return keep


values = st.one_of(st.integers(0, 4).map(float), st.just(float("nan")))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values, values, values), min_size=0, max_size=30))
def test_mask_matches_definition(rows):
    # small integer values force many exact ties and duplicates, the cases a sort-based front gets wrong
    df = pd.DataFrame(rows, columns=["lat", "q", "e"], dtype=float)
    mask = pareto_mask(df, {"lat": "min", "q": "max", "e": "min"})
    signed = df[["lat", "q", "e"]].to_numpy() * np.array([1.0, -1.0, 1.0])
    assert mask.tolist() == brute_force(signed).tolist()


def test_front_of_known_points():
    df = pd.DataFrame({"latency_s": [1.0, 2.0, 3.0, 2.0, 1.0], "quality": [0.5, 0.9, 0.95, 0.8, 0.5]})
    front = pareto_front(df, {"latency_s": "min", "quality": "max"})
    # (2.0, 0.8) is dominated by (2.0, 0.9); the two identical (1.0, 0.5) points both stay
    assert sorted(front.index.tolist()) == [0, 1, 2, 4]
    assert front["latency_s"].tolist() == [1.0, 1.0, 2.0, 3.0]


def test_bad_objective_is_refused():
    df = pd.DataFrame({"a": [1.0]})
    with pytest.raises(ConfigError):
        pareto_mask(df, {"b": "min"})
    with pytest.raises(ConfigError):
        pareto_mask(df, {"a": "smallest"})
