"""How a local Dask cluster's worker processes start, kept light for the command line.

``--cluster local:N`` forks its workers from a server process (``LOCAL_START_METHOD``) rather
than spawning each, which would import Python, Dask and stirscope again. ``start_worker_server``
starts that server early, preloaded with the worker's code, so it imports on the other core
while the command line imports its own modules and plans the work. This module imports only
the standard library: ``stirscope analyze`` calls it before it imports anything heavy.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver

# Forked from a server process that has imported Python and the stirscope modules once, rather
# than spawned, each importing everything again (measured: two workers start with 0.6 s of CPU
# instead of 1.4 s).
LOCAL_START_METHOD = "forkserver"
# What that server imports before it forks the first worker: Dask's worker and the task code
# (``analyzer.cluster`` imports the whole worker side), so a forked worker has nothing left to
# import.
WORKER_PRELOAD = ("distributed", "analyzer.cluster")


def start_worker_server() -> None:
    """Start the server process a local cluster forks its workers from, now and in the
    background, importing ``WORKER_PRELOAD``. Otherwise it starts when the first worker is asked
    for, imports only Dask, and each worker imports the task code on its first task.

    Once running, the server is reused for the life of this process (Dask's own preload list,
    set later, then has no effect). Idempotent; a no-op where the start method does not exist
    (Windows)."""
    try:
        context = multiprocessing.get_context(LOCAL_START_METHOD)
    except ValueError:  # pragma: no cover - no forkserver on this platform
        return
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    forkserver.ensure_running()
