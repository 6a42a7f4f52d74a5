"""pisplit's benchmarks, one module each, run through the scripts/bench_* wrappers (which set up the
venv) or directly as `python -m bench.NAME` from the repository root. They measure side by side and
print what they measured; tests/cluster/test_bench.py runs each briefly. Not part of the installed
package: the wheel holds layers, partitioners and cluster.

    bench.forward   one-process forward pass, conv GFLOPS vs numpy.matmul    (scripts/bench_forward)
    bench.planner   planning time, predicted fps of the planners             (scripts/bench_planner)
    bench.splits    single layers split over 1 and 2 MPI ranks, every kind   (scripts/bench_splits)
"""
