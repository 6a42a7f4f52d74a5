"""int8 against float32 (scripts/bench_int8, issue 12): for every model of the corpus (scripts/build_corpus,
in ${XDG_CACHE_HOME:-~/.cache}/pisplit-corpus), one `pisplit bench MODEL --json` (numpy engine, litert
engine, one plain LiteRT interpreter on the file; one thread each), then int8 vs float32 speed on the
litert engine for each architecture with both forms; and the planner's prediction of 4 x Raspberry
Pi 3B+ at 94 Mbit/s (`pisplit plan ... --devices rpi3:4 --link 94mbit`) for float32 and int8
MobileNetV2 and ResNet50 on both engines: predicted throughput and the bytes a frame sends between
stages (int8 links carry a quarter of float32's); then the same clusters emulated (`pisplit emulate ...
--devices rpi3:4 --link 94mbit`, time-dilated devices and paced links on this machine): measured throughput,
its ratio to the plan's prediction, the bytes a frame sent, memory (the rank furthest above its baseline, and
the plan's largest prediction) and int8 over float32 measured throughput. The first table's last column is
the numpy engine's agreement with the plain LiteRT interpreter on the file: the largest |numpy - LiteRT| over
the largest |LiteRT| on seeded inputs ('equal' when every value is the same), e.g. a dynamic-range model,
whose hybrid layers the numpy engine runs with LiteRT's own arithmetic (issue 12: within 1e-4), and a
full-integer one, whose int8 kernels compute XNNPACK's arithmetic by default (issue 12: 'equal'; with
PISPLIT_INT8_ARITHMETIC=reference, TFLite's reference kernels': measured 0.0078-0.5 of the largest output).

Usage: scripts/bench_int8 [--models a,b] [--plan-models a,b] [--repeat N] [--devices rpi3:4] [--link 94mbit]
                          [--emulate-models a,b|none] [--emulate-engines litert,numpy] [--emulate-frames N]
                          [--forms float32,int8,int8_float_io] [--agreement-seeds N] [--processes N]

--processes N times the litert engine and the plain interpreter in N fresh processes per model (the first
also times numpy) and reports the median of the per-process litert/plain ratios: one interpreter's speed
depends on where its memory landed, so for a small memory-bound model one process's pair is one draw
(torch_lstm: two plain interpreters on the same file, each against a third, measured 0.78-1.41 apart),
and on which of the two was built first; the extra processes alternate that (an even N balances it).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pisplit-corpus"
PLANNED = ("mobilenet_v2", "resnet50")


def pisplit(args: list[str], skip: list | None = None) -> dict | None:
    """One `pisplit ... --json` in a child process; its JSON document. With `skip`, a failure (a model
    an engine cannot run) is noted there and gives None instead of ending the benchmark."""
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *args, "--json"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TERM": "dumb", "NO_COLOR": "1"})
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        if skip is None:
            sys.exit(f"bench_int8: pisplit {' '.join(args)} failed: {message}")
        skip.append(f"{args[1]}: {message}")
        return None
    return json.loads(proc.stdout)


def agreement(path: Path, seeds: int) -> str:
    """The numpy engine against the plain LiteRT interpreter on the file (in a child process, as each model's
    bench runs): 'equal', the relative error, or why it could not be measured."""
    code = ("import json, sys, numpy as np\n"
            "from pathlib import Path\n"
            "from layers.tflite import import_tflite\n"
            "from layers.engine import make_engine\n"
            "from layers.tflite_engine import make_interpreter\n"
            "path, seeds = Path(sys.argv[1]), int(sys.argv[2])\n"
            "graph = import_tflite(path)\n"
            "engine = make_engine(graph, 'numpy')\n"
            "it = make_interpreter(path.read_bytes(), 1)\n"
            "it.allocate_tensors()\n"
            "worst, equal = 0.0, True\n"
            "for seed in range(seeds):\n"
            "    feeds = graph.random_input(seed)\n"
            "    for d, x in zip(it.get_input_details(), feeds.values()):\n"
            "        it.set_tensor(d['index'], np.asarray(x, d['dtype']))\n"
            "    it.invoke()\n"
            "    got = engine.run(feeds)\n"
            "    for t, d in zip(graph.outputs, it.get_output_details()):\n"
            "        w = it.get_tensor(d['index']).astype(np.float64)\n"
            "        g = np.asarray(got[t], np.float64).reshape(w.shape)\n"
            "        equal = equal and np.array_equal(g, w)\n"
            "        worst = max(worst, float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))\n"
            "print(json.dumps({'equal': bool(equal), 'rel_error': worst}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(seeds)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return "n/a"
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return "equal" if doc["equal"] else f"{doc['rel_error']:.2g}"


def litert_and_plain(path: str, repeat: int, plain_first: bool) -> dict:
    """One process timing the litert engine against the plain interpreter as `pisplit bench` does (its
    time_engines), with the plain interpreter built first when `plain_first` (pisplit bench builds it
    last): {'litert': row, 'plain litert': row}."""
    code = ("import json, sys\n"
            "from layers import load_model\n"
            "from layers.engine import make_engine\n"
            "from cluster.commands.bench import PlainInterpreter, plain_litert_model, time_engines\n"
            "spec, repeat, plain_first = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'\n"
            "graph = load_model(spec)\n"
            "for node in graph.nodes:\n"
            "    graph.node_weights(node)\n"
            "feeds = graph.random_input(0)\n"
            "def plain():\n"
            "    return PlainInterpreter(plain_litert_model(spec, graph, True), graph, 1)\n"
            "if plain_first:\n"
            "    p = plain()\n"
            "    e = make_engine(graph, 'litert', 1)\n"
            "else:\n"
            "    e = make_engine(graph, 'litert', 1)\n"
            "    p = plain()\n"
            "rows = time_engines([e, p], feeds, repeat)\n"
            "print(json.dumps({'litert': rows[0], 'plain litert': rows[1]}))\n")
    proc = subprocess.run([sys.executable, "-c", code, path, str(repeat), "1" if plain_first else "0"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        sys.exit(f"bench_int8: litert against plain LiteRT on {path} failed: "
                 f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def more_processes(doc: dict, path: str, args) -> dict:
    """The model's bench doc with its litert and plain rows over `args.processes` processes: the median
    of their medians, the best of their bests, and doc['litert_over_plain'], the median of each process's
    plain/litert median ratio (one process: its own ratio). The extra processes build the plain interpreter
    first, last, first, ... (`pisplit bench` builds it last): which of two interpreters is built first
    moves a memory-bound model's ratio (torch_lstm: the same file in both, first built against second,
    0.87 median over 14 processes), so an even --processes has as many of each."""
    rows = [{row["engine"]: row for row in doc["rows"]}]
    for k in range(args.processes - 1):
        rows.append(litert_and_plain(path, args.repeat, plain_first=k % 2 == 0))
    doc["litert_over_plain"] = statistics.median(r["plain litert"]["median_ms"] / r["litert"]["median_ms"] for r in rows)
    for row in doc["rows"]:
        if row["engine"] in ("litert", "plain litert"):
            row["median_ms"] = statistics.median(r[row["engine"]]["median_ms"] for r in rows)
            row["best_ms"] = min(r[row["engine"]]["best_ms"] for r in rows)
    return doc


def family(name: str) -> tuple[str, str]:
    """('mobilenet_v2', 'int8_float_io') from 'mobilenet_v2_int8_float_io'."""
    for form in ("int8_float_io", "int8", "dynamic_range", "float32", "float16"):
        if name.endswith("_" + form):
            return name[: -len(form) - 1], form
    return name, "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_int8", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="corpus model names without .tflite (default: every model in the corpus; 'none': skip)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--devices", default="rpi3:4")
    ap.add_argument("--link", default="94mbit")
    ap.add_argument("--plan-models", default=",".join(PLANNED), help="architectures planned in float32 and int8 ('none': skip)")
    ap.add_argument("--emulate-models", default=",".join(PLANNED), help="architectures emulated in float32 and int8 ('none': skip)")
    ap.add_argument("--emulate-engines", default="litert", help="engines of the emulated runs (default litert, what a Pi runs)")
    ap.add_argument("--emulate-frames", type=int, default=24, help="frames through each emulated cluster (default 24)")
    ap.add_argument("--forms", default="float32,int8,int8_float_io", help="forms of each architecture planned and emulated")
    ap.add_argument("--agreement-seeds", type=int, default=2, help="seeded inputs of the numpy-vs-LiteRT agreement (0: skip)")
    ap.add_argument("--processes", type=int, default=1,
                    help="fresh processes timing litert against the plain interpreter per model; the median ratio (default 1)")
    args = ap.parse_args(argv)
    if args.processes < 1:
        sys.exit(f"bench_int8: --processes {args.processes}: must be at least 1")
    if not CORPUS.is_dir():
        sys.exit(f"bench_int8: no corpus in {CORPUS} (bash scripts/build_corpus builds it)")
    names = [] if args.models == "none" else args.models.split(",") if args.models else sorted(p.stem for p in CORPUS.glob("*.tflite"))
    docs, skipped = {}, []
    for name in names:
        print(f"bench_int8: {name}", file=sys.stderr, flush=True)
        # litert first: `pisplit bench` times its engines in turns, in an order reversed every round, and the
        # plain interpreter last; with numpy first, litert always ran straight after another engine's frames
        # and the plain interpreter after its own every other round (torch_lstm: litert/plain medians of six
        # processes 0.74 with numpy,litert, 0.87 with litert,numpy, 0.89 with litert alone)
        doc = pisplit(["bench", str(CORPUS / f"{name}.tflite"), "--repeat", str(args.repeat), "--threads", "1",
                       "--engine", "litert,numpy"], skipped)
        if doc is not None:
            docs[name] = more_processes(doc, str(CORPUS / f"{name}.tflite"), args)

    print(f"one thread each, {args.repeat} passes taking turns, ms per frame: median (best)"
          + (f"; litert and plain LiteRT in {args.processes} processes: median ms, median of the ratios" if args.processes > 1 else ""))
    print(f"{'model':30} {'numpy':>17} {'litert':>15} {'plain LiteRT':>15} {'litert/plain':>13} {'numpy/litert':>13} "
          f"{'numpy vs LiteRT':>16}")
    for name, d in docs.items():
        r = {row["engine"]: row for row in d["rows"]}
        ms = {k: f"{v['median_ms']:.1f} ({v['best_ms']:.1f})" for k, v in r.items()}
        agree = agreement(CORPUS / f"{name}.tflite", args.agreement_seeds) if args.agreement_seeds > 0 else "-"
        print(f"{name:30} {ms['numpy']:>17} {ms['litert']:>15} {ms['plain litert']:>15} "
              f"{d['litert_over_plain']:13.3f} {r['numpy']['median_ms'] / r['litert']['median_ms']:13.2f} "
              f"{agree:>16}", flush=True)

    for note in skipped:
        print(f"not benchmarked: {note}")

    print("\nint8 (and dynamic-range) vs float32 on each engine (float32 time / int8 time, from the medians)")
    print(f"{'architecture':16} {'form':16} {'litert float32':>15} {'litert int8':>12} {'litert speedup':>15} {'numpy speedup':>14}")
    for name, d in docs.items():
        arch, form = family(name)
        ref = docs.get(f"{arch}_float32")
        if not (form.startswith("int8") or form == "dynamic_range") or ref is None:
            continue
        r = {row["engine"]: row["median_ms"] for row in d["rows"]}
        f = {row["engine"]: row["median_ms"] for row in ref["rows"]}
        print(f"{arch:16} {form:16} {f['litert']:15.1f} {r['litert']:12.1f} {f['litert'] / r['litert']:15.2f} {f['numpy'] / r['numpy']:14.2f}")

    print(f"\npredicted by the planner: {args.devices} at {args.link} (dp, throughput)")
    print(f"{'model':30} {'engine':7} {'frames/s':>9} {'latency ms':>11} {'stages':>7} {'link bytes/frame':>17} {'MiB/device':>11} "
          f"{'int8/float32 fps':>17}")
    for arch in [] if args.plan_models == "none" else args.plan_models.split(","):
        for engine in ("numpy", "litert"):
            base = None
            for form in args.forms.split(","):
                path = CORPUS / f"{arch}_{form}.tflite"
                if not path.exists():
                    continue
                plan = pisplit(["plan", str(path), "--devices", args.devices, "--link", args.link, "--engine", engine])
                fps = plan["predicted_throughput_fps"]
                sent = sum(s["send_bytes"] for s in plan["stages"])
                memory = max((int(v) for s in plan["stages"] for v in s["predicted"]["memory_bytes"].values()), default=0) / 2 ** 20
                base = fps if form == "float32" else base
                ratio = f"{fps / base:17.2f}" if base and form != "float32" else f"{'':17}"
                print(f"{arch + '_' + form:30} {engine:7} {fps:9.2f} {plan['predicted_latency_s'] * 1e3:11.1f} {len(plan['stages']):7d} "
                      f"{sent:17d} {memory:11.1f} {ratio}")
    emulate(args)
    return 0


def emulate(args) -> None:
    """The planned clusters emulated on this machine: per architecture and engine, float32 then int8."""
    archs = [] if args.emulate_models == "none" else args.emulate_models.split(",")
    if not archs:
        return
    print(f"\nemulated by pisplit emulate: {args.devices} at {args.link}, {args.emulate_frames} frames (dp, throughput)")
    print(f"{'model':30} {'engine':7} {'frames/s':>9} {'predicted':>10} {'measured/pred':>14} {'p50 ms':>8} {'stages':>7} "
          f"{'link bytes/frame':>17} {'MiB (max rank)':>15} {'MiB predicted':>14} {'int8/float32 fps':>17}")
    skipped: list = []
    for arch in archs:
        for engine in args.emulate_engines.split(","):
            base = None
            for form in args.forms.split(","):
                path = CORPUS / f"{arch}_{form}.tflite"
                if not path.exists():
                    continue
                doc = pisplit(["emulate", str(path), "--devices", args.devices, "--link", args.link, "--engine", engine,
                               "--frames", str(args.emulate_frames), "--single-frames", "4"], skipped)
                if doc is None:
                    continue
                fps = doc["throughput_fps"]
                sent = sum(s["send_bytes"] for s in doc["stages"])
                base = fps if form == "float32" else base
                ratio = f"{fps / base:17.2f}" if base and form != "float32" else f"{'':17}"
                # memory: the rank furthest above its own baseline, and the plan's largest prediction
                measured = max(r["memory_above_baseline_bytes"] for r in doc["ranks"]) / 2 ** 20
                predicted = max(r["memory_predicted_bytes"] for r in doc["ranks"]) / 2 ** 20
                print(f"{arch + '_' + form:30} {engine:7} {fps:9.2f} {doc['predicted_fps']:10.2f} {doc['measured_over_predicted']:14.2f} "
                      f"{doc['latency_ms']['p50']:8.1f} {len(doc['stages']):7d} {sent:17d} {measured:15.1f} {predicted:14.1f} {ratio}", flush=True)
    for note in skipped:
        print(f"not emulated: {note}")


if __name__ == "__main__":
    sys.exit(main())
