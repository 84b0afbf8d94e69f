"""Verification of an analyze run on a Dask cluster (``stirscope analyze --cluster``).

Theory of operation. The main process keeps what must be sequential: reading the merged
captures in time order, call tracking (a call may span two files) and the replay flags. The
finished calls go, in chunks, to a ``dask.distributed`` cluster instead of the local process
pool (``analyzer.run.ChunkPool``); results are collected in submission order, so the records
are byte-identical to a single-process run whatever the cluster does. A task is a pure
function of its chunk: when a worker dies, Dask runs the chunk again elsewhere and the record
is still written once.

Each worker builds one verifier per configuration (``_verifier``) and keeps it for the life
of the worker process, so its certificate cache (and, with ``--cache``, the shared Redis
cache) fetches each x5u once per worker at most. Workers need the stirscope package and the
configured trust/mirror paths at the same place as the client.

``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes, shut down with
the pool; ``tcp://HOST:PORT`` (or ``tls://``) connects to a running scheduler. The cluster is
started only when a run has more calls than ``analyzer.run.INLINE_CALLS``.
ARCHITECTURE.md section 2 (analyzer pipeline); issue 8.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from analyzer.run import Flagged, PendingChunk, Render, Result, assess_chunk
from analyzer.verifying import VerifierConfig, build_verifier
from shaken.verifier import Verifier

# Seconds to wait for a remote scheduler before giving up (Dask's default is 30 s; a wrong
# address should fail quickly on the command line).
CONNECT_TIMEOUT_S = 10.0
# Largest local cluster we start: a sanity bound on a typo (local:2000), not a resource limit.
MAX_LOCAL_WORKERS = 256
# A local cluster listens on loopback only: its scheduler runs whatever task it is sent.
LOCAL_HOST = "127.0.0.1"
# Schemes of dask.distributed's network transports a scheduler address may use.
SCHEDULER_SCHEMES = frozenset({"tcp", "tls"})


class ClusterError(Exception):
    """The cluster could not be started or reached (after the run began: exit 1)."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Where to run: ``local_workers`` worker processes on this machine, or a scheduler."""

    local_workers: int | None = None
    scheduler: str | None = None

    def describe(self) -> str:
        return f"local:{self.local_workers}" if self.scheduler is None else self.scheduler


def parse_cluster(text: str) -> ClusterSpec:
    """``local:N`` or ``tcp://HOST:PORT``/``tls://HOST:PORT``; ``ValueError`` otherwise."""
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or not 1 <= int(count) <= MAX_LOCAL_WORKERS:
            raise ValueError(f"local:N needs N from 1 to {MAX_LOCAL_WORKERS}, got {text!r}")
        return ClusterSpec(local_workers=int(count))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad scheduler address {text!r}: {exc}") from exc
    if parts.scheme not in SCHEDULER_SCHEMES or not parts.hostname or port is None:
        raise ValueError(f"expected local:N or tcp://HOST:PORT, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"a scheduler address is scheme://HOST:PORT only, got {text!r}")
    return ClusterSpec(scheduler=f"{parts.scheme}://{parts.netloc}")


# -- worker side ------------------------------------------------------------------------------

_VERIFIERS: dict[VerifierConfig, Verifier] = {}
_VERIFIERS_LOCK = threading.Lock()


def _verifier(config: VerifierConfig) -> Verifier:
    """This worker's verifier for ``config``, built on first use and kept."""
    with _VERIFIERS_LOCK:
        verifier = _VERIFIERS.get(config)
        if verifier is None:
            verifier = _VERIFIERS[config] = build_verifier(config)
        return verifier


def verify_chunk(
    config: VerifierConfig,
    calls: list[Flagged],
    at_override: datetime | None,
    render: Render | None,
) -> list[Result]:
    """The Dask task: verify and render one chunk with this worker's verifier."""
    return assess_chunk(_verifier(config), calls, at_override, render)


# -- client side ------------------------------------------------------------------------------


class DaskChunkPool:
    """A ``ChunkPool`` over a Dask client (and the local cluster it owns, if any)."""

    def __init__(self, config: VerifierConfig, client: Any, cluster: Any = None) -> None:
        # ``client`` is a ``distributed.Client`` (dask's API is only partly typed).
        self._config = config
        self._client = client
        self._cluster = cluster
        self.submitted = 0
        # Dask scatters large arguments itself; the configuration is small and sent each time.
        self.slots = max(1, sum(client.nthreads().values()))

    def submit(
        self, chunk: list[Flagged], at_override: datetime | None, render: Render | None
    ) -> PendingChunk:
        self.submitted += 1
        # pure=False: two equal chunks (a capture given twice) are still two tasks.
        future: PendingChunk = self._client.submit(
            verify_chunk, self._config, chunk, at_override, render, pure=False
        )
        return future

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


class DaskPoolFactory:
    """``PoolFactory`` for ``AnalyzeJob``: connects (or starts the local cluster) when called.

    ``last`` is the pool of the latest run (for tests and progress reports).
    """

    def __init__(self, spec: ClusterSpec, *, processes: bool = True) -> None:
        self.spec = spec
        self.processes = processes
        self.last: DaskChunkPool | None = None

    def __call__(self, config: VerifierConfig) -> DaskChunkPool:
        try:  # imported on use: dask costs ~0.5 s of CLI start-up; its API is partly typed
            distributed: Any = importlib.import_module("distributed")
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise ClusterError(f"dask.distributed is not installed: {exc}") from exc
        cluster: Any = None
        try:
            if self.spec.scheduler is None:
                # In-process workers (tests) talk over Dask's inproc transport: no host.
                where = {"host": LOCAL_HOST} if self.processes else {}
                cluster = distributed.LocalCluster(
                    n_workers=self.spec.local_workers,
                    threads_per_worker=1,
                    processes=self.processes,
                    # No dashboard (it needs bokeh); the scheduler's HTTP endpoint (health,
                    # metrics) on a free port, not 8787, which another cluster may hold.
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard": False, "dashboard_address": f"{LOCAL_HOST}:0"},
                    **where,
                )
                client = distributed.Client(cluster)
            else:
                client = distributed.Client(self.spec.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            raise ClusterError(f"cluster {self.spec.describe()}: {exc}") from exc
        self.last = DaskChunkPool(config, client, cluster)
        return self.last
