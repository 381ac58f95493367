"""The one way every ``--json`` output is written: JSON has no spelling for NaN or infinity, and
Python's ``json`` would print the non-standard tokens ``NaN`` / ``Infinity`` that strict parsers
(``jq``, JavaScript's ``JSON.parse``) reject. A NaN becomes ``null``; an infinity the string
``"inf"`` or ``"-inf"`` (a dB figure of an exact match is +inf); the schemas say where either may
occur, and any other place fails schema validation instead of passing unnoticed."""

from __future__ import annotations

import json
import math


def json_safe(x):
    """``x`` with every non-finite float replaced as the module says (dicts, lists and tuples walked)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (``allow_nan=False``: nothing non-standard gets through)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
