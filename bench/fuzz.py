"""Reader fuzzing (scripts/bench_fuzz): every file pisplit reads, mutated from a valid one with hypothesis
(tests/cluster/fuzz_readers.py: structured JSON edits, INI line edits, byte and array edits), read through
the CLI in this process; plans too (read by `launch --dry-run`), and the encoded link messages of the
link codecs (cluster.link_codecs: a packed frame with bytes overwritten anywhere, header and message
lengths included, decoded as a receiving rank does). Counts per reader: cases, read successfully,
refused in one line naming the file (the link, for messages), and contract breaks (a traceback, a
hang, an error line that does not name the file), with the first few breaks shown. Exit status 1 if any.

Options: --cases N per reader (default 10000), --readers a,b (default all: see --list), --json
"""
import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.cluster.fuzz_readers import READERS, Reader, _json_of, mutated_json, run_cli, write_case  # noqa: E402

LINK_CODECS = ("int8+zstd", "zstd", "int8", "fp16")  # each case's packed frame, sent through one of these


def _plan_file(folder: Path) -> Path:
    """A two-stage lenet5 plan on two Pis of an inventory (the mutated plan is read by `launch --dry-run`)."""
    from layers import zoo_model
    from tests.cluster.pipeline_plans import hand_plan

    (folder / "inventory.ini").write_text("[pis]\npi-0 ansible_host=10.9.0.10 device=rpi4\npi-1 ansible_host=10.9.0.11 device=rpi4\n"
                                         "[all:vars]\nworkdir=/home/pi/pisplit\n")
    return hand_plan(zoo_model("lenet5"), [(0, 4, [0], "single"), (4, 9, [1], "single")]).save(folder / "plan.json")


ALL_READERS = {**READERS, "plan": Reader("plan", _plan_file, lambda p: mutated_json(_json_of(p)),
                                         lambda p: ["launch", str(p), "--inventory", str(p.with_name("inventory.ini")), "--dry-run"]),
               "link-message": None}  # in process: fuzz_link_messages


def fuzz_link_messages(cases: int) -> dict:
    """Packed frames of lenet5's cut after node 3 (each codec of LINK_CODECS) with 1-6 bytes overwritten
    (anywhere in the used buffer: frame header, message lengths, messages), unpacked as a receiving rank
    does: each must decode to the right shapes or raise one PisplitError line naming the link."""
    import signal

    from cluster.link_codecs import EncodedFrameCodec
    from layers import zoo_model
    from layers.errors import PisplitError

    graph = zoo_model("lenet5")
    names = graph.cut_tensors(3)
    rng = np.random.default_rng(0)
    tensors = {t: rng.standard_normal(graph.shapes[t]).astype(np.float32) for t in names}
    packed = {}
    for codec_name in LINK_CODECS:
        codec = EncodedFrameCodec(graph, names, codec_name, f"stage 0 -> stage 1 ({codec_name})")
        buf = codec.pack(7, tensors).copy()
        packed[codec_name] = (codec, buf)
    counts: collections.Counter = collections.Counter()
    breaks: list = []
    t0 = time.perf_counter()

    def alarm(signum, frame):
        raise TimeoutError("still decoding after 10 s")

    @settings(max_examples=cases, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(LINK_CODECS), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
    def case(codec_name, edits):
        codec, good = packed[codec_name]
        buf = good.copy()
        raw = buf.view(np.uint8)
        for where, value in edits:
            raw[int(where * raw.size)] = value
        counts["cases"] += 1
        old = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(10)
        why = None
        try:
            out = codec.unpack(buf)
            if [tuple(out[t].shape) for t in names] != [tuple(graph.shapes[t]) for t in names]:
                why = f"{codec_name}: decoded shapes {[out[t].shape for t in names]}"
            else:
                counts["read"] += 1
        except PisplitError as exc:
            text = str(exc)
            if "\n" in text or not text.startswith(f"link {codec.label}, frame "):
                why = f"{codec_name}: error not one line naming the link: {text[:300]!r}"
            else:
                counts["refused"] += 1
        except BaseException as exc:  # noqa: BLE001 - what the benchmark reports
            why = f"{codec_name}: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        if why:
            counts["broken"] += 1
            if len(breaks) < 3:
                breaks.append(why)

    case()
    return {"reader": "link-message", **{k: counts[k] for k in ("cases", "read", "refused", "broken")},
            "seconds": round(time.perf_counter() - t0, 1), "breaks": breaks}


def fuzz(name: str, cases: int) -> dict:
    if name == "link-message":
        return fuzz_link_messages(cases)
    reader = ALL_READERS[name]
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
    ap.add_argument("--readers", default=",".join(ALL_READERS))
    ap.add_argument("--list", action="store_true", help="list the readers and exit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(ALL_READERS))
        return 0
    names = [n for n in args.readers.split(",") if n]
    unknown = [n for n in names if n not in ALL_READERS]
    if unknown or args.cases < 1:
        sys.exit(f"bench_fuzz: unknown reader(s) {', '.join(unknown)} (known: {', '.join(ALL_READERS)})" if unknown else "bench_fuzz: --cases must be >= 1")
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
