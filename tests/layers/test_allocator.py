"""The allocator policy of pipeline ranks and profiling: freed frame buffers stay in the process."""
from __future__ import annotations

import platform
import resource

import numpy as np

from layers.allocator import reuse_freed_memory
from tests.conftest import require


def test_freed_frame_buffers_are_reused_without_page_faults():
    require(platform.system() == "Linux" and platform.libc_ver()[0] == "glibc", "glibc's mallopt is Linux/glibc only")
    assert reuse_freed_memory() and reuse_freed_memory()  # idempotent
    sizes = np.random.default_rng(0).integers(1 << 20, 24 << 20, 12) // 4  # float32 buffers of 1-24 MiB
    assert len(set(sizes.tolist())) > 1

    def frame():  # each node's output lives until the next node has run, as in Graph.execute
        held = []
        for n in sizes:
            held.append(np.ones(n, np.float32))
            if len(held) > 2:
                held.pop(0)

    frame()  # the first frame grows the heap
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    frame()
    frame()
    # glibc's default (a fresh mmap per buffer, unmapped when freed) faults ~8000 pages in here
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 500
