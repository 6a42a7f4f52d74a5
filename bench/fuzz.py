"""Reader fuzzing (scripts/bench_fuzz): every file pisplit reads, mutated from a valid one with hypothesis
(tests/cluster/fuzz_readers.py: structured JSON edits, INI line edits, byte and array edits), read through
the CLI in this process. Counts per reader: cases, read successfully, refused in one line naming the
file, and contract breaks (a traceback, a hang, an error line that does not name the file), with the
first few breaks shown. Exit status 1 if any.

Options: --cases N per reader (default 10000), --readers a,b (default all: see --list), --json
"""
import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.cluster.fuzz_readers import READERS, run_cli, write_case  # noqa: E402


def fuzz(name: str, cases: int) -> dict:
    reader = READERS[name]
    counts: collections.Counter = collections.Counter()
    breaks: list = []
    with tempfile.TemporaryDirectory(prefix="pisplit-fuzz-") as tmp:
        base = reader.make(Path(tmp))
        t0 = time.perf_counter()

        @settings(max_examples=cases, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(reader.mutations(base))
        def case(content):
            outcome = run_cli(reader.argv(write_case(reader, base, content)))
            why = outcome.problem(reader.names(base))
            counts["cases"] += 1
            counts["broken" if why else "read" if outcome.status == 0 else "refused"] += 1
            if why and len(breaks) < 3:
                breaks.append(why[-800:])

        case()
        seconds = time.perf_counter() - t0
    return {"reader": name, **{k: counts[k] for k in ("cases", "read", "refused", "broken")}, "seconds": round(seconds, 1), "breaks": breaks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_fuzz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--list", action="store_true", help="list the readers and exit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(READERS))
        return 0
    names = [n for n in args.readers.split(",") if n]
    unknown = [n for n in names if n not in READERS]
    if unknown or args.cases < 1:
        sys.exit(f"bench_fuzz: unknown reader(s) {', '.join(unknown)} (known: {', '.join(READERS)})" if unknown else "bench_fuzz: --cases must be >= 1")
    rows = []
    for name in names:
        print(f"{name}: {args.cases} cases ...", file=sys.stderr, flush=True)
        rows.append(fuzz(name, args.cases))
    if args.json:
        print(json.dumps({"readers": rows}, indent=1))
    else:
        print(f"{'reader':18} {'cases':>6} {'read':>6} {'refused':>8} {'broken':>7} {'seconds':>8}")
        for r in rows:
            print(f"{r['reader']:18} {r['cases']:>6} {r['read']:>6} {r['refused']:>8} {r['broken']:>7} {r['seconds']:>8}")
            for b in r["breaks"]:
                print(f"  BROKEN: {b}")
    return 1 if any(r["broken"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
