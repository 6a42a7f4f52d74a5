"""Everything that touches processes, sockets and hosts: MPI transport, pipeline runtime, emulation,
inventory, SSH provisioning, launch and the command-line interface."""
from __future__ import annotations

import os

_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def share_cores_between_local_ranks(environ=os.environ, cores: int | None = None) -> int | None:
    """Under mpirun, ranks that share a host split its cores between their BLAS thread pools: each
    gets cores // ranks-on-this-host threads (at least one), unless the user set a thread count.
    Four ranks on two cores with two BLAS threads each would oversubscribe the cores, and every
    thread holds packing buffers of its own (1-1.5 MiB a rank, beyond what its shard needs).
    Runs when `cluster` is first imported, before numpy loads BLAS (the `pisplit` entry point
    imports this package first). Returns the thread count set, or None."""
    local = str(environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", ""))
    if not local.isdigit() or int(local) < 2 or any(v in environ for v in _BLAS_THREAD_VARS):
        return None
    threads = max(1, (cores or os.cpu_count() or 1) // int(local))
    for var in _BLAS_THREAD_VARS:
        environ[var] = str(threads)
    return threads


share_cores_between_local_ranks()
