"""`codesign validate`: the cost model against its independent references, one row per component
(model value, reference, source, ratio, band). Exit code 1 when a component falls outside its band."""

from __future__ import annotations

from codesign.cli import jsonout


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="hold hwsim's cost model against CACTI, published NPUs, "
        "memory datasheets and SCALE-Sim; exit 1 if a component is outside its band",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def run(args) -> int:
    from hwsim.validate import validate

    rows = validate()
    if args.json:
        print(jsonout.dumps([r.to_dict() for r in rows], indent=1))
    else:
        head = ("component", "model", "reference", "unit", "ratio", "band", "ok", "source")
        table = [
            (
                r.component,
                _fmt(r.model),
                _fmt(r.reference),
                r.unit,
                f"{r.ratio:.3f}",
                f"[{r.band[0]:g}, {r.band[1]:g}]",
                "ok" if r.ok else "OUT",
                r.source,
            )
            for r in rows
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
        for line in [head, *table]:
            print("  ".join(str(x).ljust(w) for x, w in zip(line[:-1], widths[:-1])) + "  " + line[-1])
        bad = sum(not r.ok for r in rows)
        print(f"{len(rows)} components, {len(rows) - bad} within their band, {bad} outside")
    return 1 if any(not r.ok for r in rows) else 0
