"""docs/api.md, generated from :mod:`codesign.api`'s signatures and docstrings so the page cannot
drift from the code (a test compares them). Regenerate: ``python -m codesign.apidoc > docs/api.md``."""

from __future__ import annotations

import inspect
import textwrap

from codesign import api

HEADER = """# Python API

`codesign.api` is what scripts and notebooks call: one function per step of the flow, the same
functions the `codesign` commands use. Names or objects are accepted alike (a workload preset name or a
`Workload`, a recipe name or a `Recipe`, a hardware preset or an `HWConfig`, a spec name, file or mapping).

```python
from codesign import api

tr = api.trace("opensora-v1.0-16x512x512", "tsq-tsw-w8a8")
res = api.simulate(tr, "edge-npu", prefetch="early")
print(api.summary(res, "edge-npu"))
api.sweep("default", "out/results")
df = api.load_results("out/results")
api.report("out/results", "out/report")
```

This page is generated from the docstrings (`python -m codesign.apidoc > docs/api.md`).
"""


def functions() -> list:
    """The public functions of codesign.api in source order."""
    fns = [f for name, f in vars(api).items() if inspect.isfunction(f) and not name.startswith("_")]
    return sorted((f for f in fns if f.__module__ == api.__name__), key=lambda f: f.__code__.co_firstlineno)


def render() -> str:
    parts = [HEADER]
    for f in functions():
        sig = str(inspect.signature(f)).replace("'", "")
        doc = textwrap.dedent(inspect.getdoc(f) or "").strip()
        parts.append(f"## `api.{f.__name__}`\n\n```python\n{f.__name__}{sig}\n```\n\n{doc}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
