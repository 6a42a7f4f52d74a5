"""pisplit's benchmarks, one module each, run through the scripts/bench_* wrappers (which set up the
venv) or as `python -m bench.NAME` (the wheel ships this package too). They measure side by side and
print what they measured; tests/cluster/test_bench*.py run each briefly.

    bench.codecs        link codecs on real-looking activations                  (scripts/bench_codecs)
    bench.edgent        Edgent: exit x cut per bandwidth and requirement, dynamic (scripts/bench_edgent)
    bench.emulate       emulated clusters, dp and paper plans, one-device fidelity (scripts/bench_emulate)
    bench.exits         early exits and DDNN on emulated Pis                     (scripts/bench_exits)
    bench.forward       one-process forward pass, conv GFLOPS vs numpy.matmul    (scripts/bench_forward)
    bench.fuzz          every reader fed mutated files                           (scripts/bench_fuzz)
    bench.int8          int8 against float32, engines and emulated clusters      (scripts/bench_int8)
    bench.latency       single-frame latency plans against one emulated device   (scripts/bench_latency)
    bench.link_codecs   codecs chosen on plans, edge + host                       (scripts/bench_link_codecs)
    bench.litert        numpy and litert engines against plain LiteRT             (scripts/bench_litert)
    bench.netns         paced emulation against the network-namespace cluster    (scripts/bench_netns)
    bench.pipeline      real pipelines on this machine, no emulation             (scripts/bench_pipeline)
    bench.planner       planning time, predicted fps of the planners             (scripts/bench_planner)
    bench.resilience    lost, stalled and slow devices: recovery, frames kept     (scripts/bench_resilience)
    bench.soak          a long stream: each rank's memory slope                  (scripts/bench_soak)
    bench.splits        single layers split over 1 and 2 MPI ranks, every kind   (scripts/bench_splits)
    bench.transformers  ViT and friends: heads, tokens, fc splits                 (scripts/bench_transformers)
"""


def cluster_config(text: str) -> tuple[str, str, float]:
    """A benchmark's cluster 'DEVICES@LINK' -> (devices, first device kind, link bit/s):
    'rpi3:4@94mbit' -> ('rpi3:4', 'rpi3', 94e6); the link defaults to 94mbit."""
    from cluster.emulation import parse_link

    devices, _, link = text.partition("@")
    return devices, devices.split(":")[0], parse_link(link or "94mbit")
