"""Pareto fronts over the results table: which design points no other point beats on every objective.

A point ``a`` dominates ``b`` when it is at least as good on every objective and strictly better on
one. Rows with a missing (NaN) objective are never on the front. Exact ties are all kept, so two
identical points are both Pareto-optimal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workloads.errors import ConfigError

SENSES = ("min", "max")


def pareto_mask(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``df``; ``objectives`` maps column -> min|max."""
    if not objectives:
        raise ConfigError("objectives", objectives, "at least one column -> min|max")
    for col, sense in objectives.items():
        if col not in df.columns:
            raise ConfigError("objective", col, "a column of the results: " + ", ".join(map(str, df.columns)))
        if sense not in SENSES:
            raise ConfigError(f"objective.{col}", sense, " or ".join(SENSES))
    vals = np.column_stack(
        [df[c].to_numpy(dtype=float) * (1.0 if s == "min" else -1.0) for c, s in objectives.items()]
    )  # [n, d], all minimised
    valid = ~np.isnan(vals).any(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(valid)
    if not len(idx):
        return mask
    pts = vals[idx]
    # sort by the first objective so a dominator always comes before what it dominates
    order = np.lexsort(pts.T[::-1])
    pts = pts[order]
    keep = np.ones(len(pts), dtype=bool)
    for i in range(len(pts)):
        if not keep[i]:
            continue
        later = slice(i + 1, None)
        dominated = np.all(pts[i] <= pts[later], axis=1) & np.any(pts[i] < pts[later], axis=1)
        keep[later] &= ~dominated
    mask[idx[order[keep]]] = True
    return mask


def pareto_front(df: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """The non-dominated rows, sorted by the first objective."""
    front = df[pareto_mask(df, objectives)]
    first = next(iter(objectives))
    return front.sort_values(first, ascending=objectives[first] == "min")
