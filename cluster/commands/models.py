"""`pisplit models`: list the zoo."""
from __future__ import annotations

from rich.table import Table

from layers.zoo import ZOO

from ..output import console, human_count, print_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=run)


def run(args) -> int:
    rows = []
    for name, entry in ZOO.items():
        g = entry.build()
        t = g.totals()
        rows.append({"name": name, "description": entry.description, "inputs": {k: list(v) for k, v in g.inputs.items()},
                     "nodes": t["nodes"], "params": t["params"], "flops": t["flops"], "weight_bytes": t["weight_bytes"]})
    if args.json:
        print_json({"models": rows})
        return 0
    table = Table(title="pisplit model zoo (seeded weights, nothing downloaded)")
    for col, just in [("model", "left"), ("input", "left"), ("nodes", "right"), ("params", "right"), ("FLOPs", "right"), ("about", "left")]:
        table.add_column(col, justify=just)
    for r in rows:
        shape = ", ".join("x".join(map(str, v)) for v in r["inputs"].values())
        table.add_row(r["name"], shape, str(r["nodes"]), human_count(r["params"]), human_count(r["flops"]), r["description"])
    console.print(table)
    return 0
