"""An analyze run on a Dask cluster (``stirscope analyze --cluster``): workers read the captures
(partitioned mode) or verify the calls (verification mode).

Theory of operation. Partitioned mode (``PartitionedJob``, the default when it applies) cuts
the captures into partitions (``analyzer.partition``: one per file, large files at verified
record boundaries) and has the workers scan them (``analyzer.partscan``: capture reading, link
layer, IP reassembly, SIP key scan), keeping the scans. Then the workers track the calls
(``analyzer.parttrack``): in a cheap first pass each returns its partition's Call-IDs (hashed)
and message times; this process finds the Call-IDs seen in more than one partition and replays
the tracker's clock; in the second pass each worker tracks, verifies and renders the calls only
its partition sees, and returns them finished, each with its place in the single run's
emission order, plus the messages of the shared Call-IDs. This process tracks only those (the
calls spanning partitions and files), flags replays in emission order for the calls that can
be replays, has them verified (``DaskChunkPool``) and merges everything by emission order: the
records, their order, replay flags and every count are those of a single run. When the
partitions cannot stand in for one reader (SIP over TCP, files overlapping in time, a cut that
loses state), or a worker cannot read the files, the run says why and falls back to
verification mode, before any record is written (``fallback``); when the workers' tracking
could differ from one tracker's (times going backwards, run-wide limits that could bind), this
process tracks every call from the scans instead, and says why (``merge_fallback``).

Verification mode (``--cluster-mode verify``, and small inputs) is the run of
``analyzer.run.AnalyzeJob`` with the cluster as its chunk pool: the main process scans, the
workers verify. Either way results are collected in submission order, so the records are
byte-identical to a single-process run whatever the cluster does, and a task is a pure
function of its input: when a worker dies, Dask runs it again elsewhere.

Each worker builds one verifier per configuration (``_verifier``) and keeps it for the life
of the worker process, so its certificate cache (and, with ``--cache``, the shared Redis
cache) fetches each x5u once per worker at most. Workers need the stirscope package, the
configured trust/mirror paths and (partitioned mode) the capture paths at the same place as
the client; with an output directory (``analyzer.outputdir``) partitioned-mode workers write
the calls they finish to their partitions' parts there, so it too must be at the same path.

``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes on loopback,
shut down with the run; ``tcp://HOST:PORT`` (or ``tls://``) connects to a running scheduler.
ARCHITECTURE.md section 2 (analyzer pipeline); issue 8.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib
import os
import pickle
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

from analyzer import partition, run
from analyzer.anomaly import Anomaly
from analyzer.calls import Call, TrackerStats
from analyzer.capture import AnyAnomaly, ObservedMessage
from analyzer.clusterstart import LOCAL_START_METHOD, start_worker_server
from analyzer.outputdir import PartFile, PartOutput, remove_parts
from analyzer.partition import PartitionSpec, plan_partitions
from analyzer.partscan import (
    PartitionScan,
    ScanSummary,
    first_report,
    frame_offsets,
    merged_items,
    order_partitions,
    scan_partition,
    summary_of,
)
from analyzer.parttrack import (
    RANK_SHIFT,
    EdgeTracker,
    EmitKey,
    Entry,
    PartEdge,
    PartKeys,
    PartTrack,
    Tracking,
    TrackPlan,
    binding_limit,
    edge_of,
    entries_of,
    may_bind,
    partition_keys,
    plan_tracking,
    sum_stats,
    track_partition,
)
from analyzer.run import (
    AnalyzeJob,
    AnalyzeOptions,
    Flagged,
    HashingReader,
    PendingChunk,
    Render,
    Result,
    assess_chunk,
)
from analyzer.spill import SpillOutput
from analyzer.traceback_replay import ReplayDetector
from analyzer.verifying import VerifierConfig, build_verifier
from shaken.verifier import Verifier

# Seconds to wait for a remote scheduler before giving up (Dask's default is 30 s; a wrong
# address should fail quickly on the command line).
CONNECT_TIMEOUT_S = 10.0
# Largest local cluster we start: a sanity bound on a typo (local:2000), not a resource limit.
MAX_LOCAL_WORKERS = 256
# A local cluster listens on loopback only: its scheduler runs whatever task it is sent.
LOCAL_HOST = "127.0.0.1"
# Dask settings of a local cluster (its scheduler, nannies and workers, and the client), read
# when each starts: the periodic work Dask does for its dashboard and diagnostics, which a
# local cluster without a dashboard never shows, is turned off or made rare, as it takes CPU
# from the tasks on a machine whose every core runs a worker (measured: a 40,000-call run
# 5-8% faster on local:1 and local:2). The workers' statistical profiler (a thread sampling
# the task's stack every 10 ms, each time taking the interpreter lock from it), the GIL
# contention monitor (every 1 ms, where gilknocker is installed), the event loops' tick (every
# 20 ms; it warns of a blocked loop, now at 1 s granularity), the host metrics (every
# 500 ms) and the workers' memory check (every 100 ms: pause, spill and terminate still
# apply, checked every 500 ms). A remote cluster keeps its operator's settings.
LOCAL_CLUSTER_CONFIG: dict[str, object] = {
    "distributed.worker.multiprocessing-method": LOCAL_START_METHOD,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
}
# Schemes of dask.distributed's network transports a scheduler address may use.
SCHEDULER_SCHEMES = frozenset({"tcp", "tls"})
# Chunks of calls per Dask task, in ``analyzer.run.CHUNK_CALLS`` (see ``DaskChunkPool``).
DASK_CHUNK_FACTOR = 4
# Least input for which ``--cluster-mode auto`` has the workers read: below it the main process
# scans in a fraction of a second (~100 MB/s), less than a worker takes to start and import.
MIN_PARTITIONED_BYTES = 16 << 20
# Results the output holds back behind a call this process still has to verify before it
# verifies that call's partial chunk itself (bounded memory, no wait for a chunk to fill).
MAX_WAITING_RESULTS = 1024
# Read size of the thread hashing the inputs in partitioned mode (the scan's own block size).
HASH_BLOCK = 1 << 20


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
    """Verify and render one chunk with this worker's verifier."""
    return assess_chunk(_verifier(config), calls, at_override, render)


def verify_pickled(
    config: VerifierConfig, chunk: bytes, at_override: datetime | None, render: Render | None
) -> bytes:
    """The Dask task: ``verify_chunk`` on a pickled chunk, results pickled (see
    ``DaskChunkPool``)."""
    results = verify_chunk(config, pickle.loads(chunk), at_override, render)
    return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)


def track_task(
    config: VerifierConfig,
    scan: PartitionScan,
    plan: TrackPlan,
    at_override: datetime | None,
    render: Render | None,
    output: PartOutput | None = None,
    spill: SpillOutput | None = None,
) -> PartTrack:
    """The Dask task of phase two: ``track_partition`` with this worker's verifier (and, with
    ``output``, the partition's finished calls written to its part here, unrendered; with
    ``spill``, their rendered lines to its spill file)."""
    verifier = _verifier(config)
    if output is not None:
        render = spill = None
    return track_partition(
        scan,
        plan,
        lambda calls: assess_chunk(verifier, calls, at_override, render),
        output,
        spill,  # with ``render`` only: ``PartitionedJob._spill_output``
    )


class _PickledChunk:
    """A submitted chunk whose results arrive pickled (a ``PendingChunk``)."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def result(self) -> list[Result]:
        results: list[Result] = pickle.loads(self._future.result())
        return results


# -- client side ------------------------------------------------------------------------------


class DaskChunkPool:
    """A ``ChunkPool`` over a Dask client; ``close`` is its owner's (the factory's)."""

    def __init__(
        self, config: VerifierConfig, client: Any, close: Callable[[], None] | None = None
    ) -> None:
        # ``client`` is a ``distributed.Client`` (dask's API is only partly typed).
        self._config = config
        self._client = client
        self._close = close or client.close
        self.submitted = 0
        # Dask scatters large arguments itself; the configuration is small and sent each time.
        self.slots = max(1, sum(client.nthreads().values()))
        # Each Dask task costs the client and an in-process scheduler ~3 ms of the main
        # process (measured: 10,000 calls in chunks of 64 took 0.45 s more main CPU than in
        # chunks of 256), more than a local process pool: larger chunks than it takes.
        self.chunk_calls = run.CHUNK_CALLS * DASK_CHUNK_FACTOR

    def submit(
        self, chunk: list[Flagged], at_override: datetime | None, render: Render | None
    ) -> PendingChunk:
        self.submitted += 1
        # One pickle each way: Dask serializes the items of a list argument or result one by
        # one, with framing per item (most of its cost in the main process, measured).
        blob = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
        # pure=False: two equal chunks (a capture given twice) are still two tasks.
        future = self._client.submit(
            verify_pickled, self._config, blob, at_override, render, pure=False
        )
        return _PickledChunk(future)

    def close(self) -> None:
        self._close()


class DaskPoolFactory:
    """``PoolFactory`` for ``AnalyzeJob``, and the run's connection to the cluster: connects
    (or starts the local cluster) on first use, once; ``close`` ends both.

    ``last`` is the pool of the latest run (for tests and progress reports); ``on_connect``
    is called once the client is up (the command line freezes its start-up's objects then).
    """

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        processes: bool = True,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.processes = processes
        self.on_connect = on_connect
        self.last: DaskChunkPool | None = None
        self._client: Any = None
        self._cluster: Any = None
        if spec.scheduler is None and processes:
            start_worker_server()

    def __call__(self, config: VerifierConfig) -> DaskChunkPool:
        self.last = DaskChunkPool(config, self.client(), self.close)
        return self.last

    def client(self) -> Any:
        """The ``distributed.Client``, connected on first use (``ClusterError`` if it cannot)."""
        if self._client is None:
            self._client, self._cluster = self._connect()
        return self._client

    def close(self) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def _connect(self) -> tuple[Any, Any]:
        distributed = _distributed()
        cluster: Any = None
        try:
            if self.spec.scheduler is None:
                # In-process workers (tests) talk over Dask's inproc transport: no host.
                where = {"host": LOCAL_HOST} if self.processes else {}
                dask: Any = importlib.import_module("dask")
                with dask.config.set(LOCAL_CLUSTER_CONFIG):
                    cluster = self._local_cluster(distributed, where)
                    client = distributed.Client(cluster)
            else:
                client = distributed.Client(self.spec.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            raise ClusterError(f"cluster {self.spec.describe()}: {exc}") from exc
        if self.on_connect is not None:
            self.on_connect()
        return client, cluster

    def _local_cluster(self, distributed: Any, where: dict[str, str]) -> Any:
        return distributed.LocalCluster(
            n_workers=self.spec.local_workers,
            threads_per_worker=1,
            processes=self.processes,
            # No dashboard (it needs bokeh); the scheduler's HTTP endpoint (health,
            # metrics) on a free port, not 8787, which another cluster may hold.
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": f"{LOCAL_HOST}:0"},
            **where,
        )


def _distributed() -> Any:
    try:  # imported on use: dask costs ~0.5 s of CLI start-up; its API is partly typed
        return importlib.import_module("distributed")
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ClusterError(f"dask.distributed is not installed: {exc}") from exc


# -- partitioned mode ---------------------------------------------------------------------------


def partitioned_by_default(names: Sequence[str]) -> bool:
    """Whether ``--cluster-mode auto`` has the workers read ``names``: files (workers cannot
    read this process's stdin) of ``MIN_PARTITIONED_BYTES`` or more in all."""
    if "-" in names:
        return False
    try:
        return sum(os.stat(name).st_size for name in names) >= MIN_PARTITIONED_BYTES
    except OSError:
        return False  # reported as a usage error when the job opens the inputs


class PartitionedJob(AnalyzeJob):
    """``AnalyzeJob`` whose scan runs on the cluster's workers (module docstring), falling
    back to the scan in this process when the partitions cannot stand in for it.

    After the run, ``partitions`` is how many were scanned (0 on fallback) and ``fallback``
    why the workers did not read the captures (None when they did); ``merge_fallback`` why
    this process tracked every call from the scans rather than the workers tracking their
    partitions' own calls (``analyzer.parttrack``; None when they did, or did not read), and
    ``edge_calls`` how many calls this process flagged and had verified itself.
    With ``output`` (``--output-dir``) the workers write the calls they finish to their
    partitions' parts (``analyzer.outputdir``) and send back only their digests, marked
    ``WRITTEN``; ``worker_parts`` then lists those parts (None when the workers did not write:
    fallback, merge fallback, or no ``output``), set before the first result.
    With ``spill_errors`` (the output stream can take spilled lines: ``analyzer.spill``) and
    workers on this machine, the workers write the rendered lines of the calls they finish to
    spill files in a temporary directory under ``spill_parent`` (default: the system's) and
    send back their places; ``spill`` then says where (None when they did not), and
    ``close`` removes the directory.
    ``partition_bytes`` sets the partition size (default
    ``analyzer.partition.balanced_partition_bytes``), ``cuts`` where to cut given inputs instead
    (nominal offsets per input index, see ``plan_partitions``).
    """

    def __init__(
        self,
        inputs: Sequence[str],
        options: AnalyzeOptions,
        factory: DaskPoolFactory,
        *,
        partition_bytes: int | None = None,
        cuts: Mapping[int, Sequence[int]] | None = None,
        output: PartOutput | None = None,
        spill_errors: str | None = None,
        spill_parent: str | None = None,
    ) -> None:
        super().__init__(inputs, options, pool=factory)
        self.factory = factory
        self.names = list(inputs)
        self.partition_bytes = partition_bytes
        self.cuts = cuts
        self.partitions = 0
        self.fallback: str | None = None
        self.merge_fallback: str | None = None
        self.edge_calls = 0
        self.output = output
        self.worker_parts: list[PartFile] | None = None
        self.spill_errors = spill_errors
        self.spill_parent = spill_parent
        self.spill: SpillOutput | None = None
        self._ready: _Scanned | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                self.factory.close()
            finally:
                if self.spill is not None:  # what a reader still has open stays readable
                    shutil.rmtree(self.spill.directory, ignore_errors=True)

    def _spill_output(self, render: Render | None) -> SpillOutput | None:
        """Where the workers spill their rendered lines (module ``analyzer.spill``): only
        workers on this machine see this process's files; None when they send them."""
        if (
            self.spill_errors is None
            or render is None
            or self.output is not None
            or self.factory.spec.scheduler is not None
        ):
            return None
        try:
            directory = tempfile.mkdtemp(prefix=".stirscope-spill-", dir=self.spill_parent)
        except OSError:
            return None  # the lines travel as before
        self.spill = SpillOutput(directory, self.spill_errors)
        return self.spill

    def _results(
        self, render: Render | None, progress: Callable[[int], None] | None
    ) -> Iterator[Result]:
        ready = self._scan()
        if isinstance(ready, str):
            self.fallback = ready
            yield from super()._results(render, progress)
            return
        self._ready = ready
        self.partitions = len(ready.specs)
        hasher = _InputHasher(self.readers)
        hasher.start()
        complete = False
        try:
            tracked = self._track(ready, render)
            if isinstance(tracked, str):
                self.merge_fallback = tracked
                yield from super()._results(render, progress)  # _items: the scans merged here
            else:
                if self.output is not None:
                    self.worker_parts = tracked.parts
                yield from self._merged(tracked, render, progress)
            complete = True
        finally:
            hasher.finish(complete)

    def _items(self) -> Iterator[ObservedMessage | AnyAnomaly]:
        ready = self._ready
        if ready is None:
            yield from super()._items()
            return
        futures = ready.futures

        def fetch(index: int) -> PartitionScan:
            future, futures[index] = futures[index], None  # its data is released once read
            assert future is not None
            scan: PartitionScan = future.result()
            return scan

        offsets = frame_offsets(ready.specs, ready.summaries)
        yield from merged_items(ready.specs, ready.order, offsets, fetch)
        self._scan_counts(ready)

    def _scan_counts(self, ready: _Scanned) -> None:
        self.stats.segments = sum(s.segments for s in ready.summaries)
        self.stats.sip_messages = sum(s.messages for s in ready.summaries)

    # -- the workers track their partitions' own calls (analyzer.parttrack) ---------------------

    def _track(self, ready: _Scanned, render: Render | None) -> _Tracked | str:
        """Phases one and two submitted to the workers; or why the result could differ from
        a single run (nothing is written before this returns). Only a run with as many
        INVITEs as a run-wide limit needs every partition tracked before it can tell, and a run
        whose workers write the records (``output``): a worker that cannot write its part must
        be known before this process writes any (the run then tracks every call here)."""
        client = self.factory.client()
        specs, order = ready.specs, ready.order
        submitted: list[Any] = []
        try:
            wanted = {ready.keys[index]: index for index in order}
            submitted += wanted
            found: dict[int, PartKeys] = {}
            for done in _distributed().as_completed(list(wanted)):
                found[wanted[done]] = pickle.loads(done.result())
            offsets = frame_offsets(specs, ready.summaries)
            sources = [spec.source_file for spec in specs]
            tracking = plan_tracking(order, offsets, sources, found)
            if isinstance(tracking, str):
                return tracking
            at, config, output = self.options.at_override, self.options.config, self.output
            spill = self._spill_output(render)
            # Dask runs tasks submitted within its FIFO window (100 ms) in no set order (here
            # last first), while this process takes the results in emission order: the tracks
            # get priorities in that order, and each partition's results, taken off its worker
            # as soon as its track ends, priorities above every track, so this process merges
            # and writes alongside the workers instead of after the last track.
            last = len(order)
            tracks = {
                index: client.submit(
                    track_task,
                    config,
                    ready.futures[index],
                    tracking.plans[index],
                    at,
                    render,
                    output,
                    spill,
                    pure=False,
                    priority=last - rank,
                )
                for rank, index in enumerate(order)
            }
            edges = {
                index: client.submit(
                    edge_of, tracks[index], pure=False, priority=2 * last - rank + 1
                )
                for rank, index in enumerate(order)
            }
            entries = {
                index: client.submit(
                    entries_of, tracks[index], pure=False, priority=2 * last - rank + 1
                )
                for rank, index in enumerate(order)
            }
            submitted += [*tracks.values(), *edges.values(), *entries.values()]
            tracked = _Tracked(order, edges, entries, EdgeTracker(tracking.checks))
            if output is not None or may_bind(tracking, tracked.main.tracker):
                reason = tracked.track_all(tracking)
                if reason is not None:
                    client.cancel(submitted)
                    self._unwrite(tracked.parts)
                    return reason
        except (OSError, ImportError) as exc:  # a worker lost its scan, cannot write its part
            if output is not None:
                self._unwrite_all(len(order), submitted)
            client.cancel(submitted)
            return f"a worker could not track its partition: {exc}"
        for index in order:
            ready.futures[index] = ready.keys[index] = None  # released once tracked
        return tracked

    def _unwrite(self, parts: list[PartFile]) -> None:
        """The workers' parts removed: this process writes every call after all."""
        if self.output is not None:
            remove_parts(self.output, [part.name for part in parts])

    def _unwrite_all(self, partitions: int, submitted: list[Any]) -> None:
        """After a failed phase two: every part a worker may have written removed, once the
        tasks are over (a task still running could write its part after the removal)."""
        assert self.output is not None
        # Cancelling does not stop a running task: wait for every one (the failed ones end
        # too, their errors already known) before removing what they wrote.
        _distributed().wait(submitted)
        names = [self.output.part_name("part", rank) for rank in range(partitions)]
        remove_parts(self.output, names)

    def _merged(
        self, tracked: _Tracked, render: Render | None, progress: Callable[[int], None] | None
    ) -> Iterator[Result]:
        results = self._verified(self._in_order(tracked), render)
        for done, result in enumerate(results, 1):
            yield result
            if progress is not None and done % run.CHUNK_CALLS == 0:
                progress(done)

    def _in_order(self, tracked: _Tracked) -> Iterator[Result | Call]:
        """Every call in the single run's emission order: the workers' entries and this
        process's calls merged by emission key, partition after partition (an entry is never
        keyed before its own partition, so a partition's turn releases what comes before
        the next one). The anomalies are counted on the way, in capture order."""
        assert self._ready is not None
        specs = self._ready.specs
        heap: list[tuple[EmitKey, int, Result | Call]] = []
        tie = 0
        reported: dict[int, set[str]] = {}
        tails: dict[int, list[Anomaly]] = {}
        stats: list[TrackerStats] = []
        for rank, index in enumerate(tracked.order):
            edge = tracked.edge(index)
            source = specs[index].source_file
            seen = reported.setdefault(source, set())
            for anomaly in edge.anomalies:
                if first_report(anomaly, seen):
                    self._anomaly(anomaly)
            tails.setdefault(source, []).extend(edge.tail)
            stats.append(edge.stats)
            entries: list[Entry] = [*tracked.own(rank, edge), *tracked.entries_of(index)]
            for key, value in entries:
                heapq.heappush(heap, (key, tie, value))
                tie += 1
            limit = (rank + 1) << RANK_SHIFT
            while heap and heap[0][0][0] < limit:
                yield heapq.heappop(heap)[2]
        for key, call in tracked.rest():
            heapq.heappush(heap, (key, tie, call))
            tie += 1
        for source in sorted(tails):
            for anomaly in tails[source]:
                self._anomaly(anomaly)
        self.stats.tracker = sum_stats([*stats, tracked.main.tracker.stats])
        self._scan_counts(self._ready)
        while heap:
            yield heapq.heappop(heap)[2]

    def _verified(
        self, ordered: Iterator[Result | Call], render: Render | None
    ) -> Iterator[Result]:
        """The results in order: the workers' as they come, the calls left to this process
        flagged here in emission order (RFC 8224 section 12.1) and verified by the pool in
        full chunks (a partial chunk the output waits for is verified here)."""
        at = self.options.at_override
        detector = ReplayDetector(self.options.config.policy.freshness_s)
        pool: run.ChunkPool | None = None
        slots: deque[Result | _Waiting] = deque()
        batch = _Batch()
        in_flight = 0

        def head_ready(final: bool) -> Result | None:
            nonlocal batch, in_flight
            head = slots[0]
            if not isinstance(head, _Waiting):
                return head
            waiting = head.batch
            if waiting.results is None:
                if waiting.future is None:
                    if not final and len(slots) < MAX_WAITING_RESULTS:
                        return None
                    waiting.results = assess_chunk(self.verifier, waiting.calls, at, render)
                    if waiting is batch:
                        batch = _Batch()
                else:
                    if not final and in_flight < pool_window and len(slots) < MAX_WAITING_RESULTS:
                        return None
                    waiting.results = waiting.future.result()
                    in_flight -= 1
            return waiting.results[head.index]

        pool_window = 1
        for value in ordered:
            if isinstance(value, Call):
                self.edge_calls += 1
                invite = value.primary.invite
                values = invite.keys.identity_values
                flag = detector.observe(value.call_id, invite.ts_ns, values) if values else None
                slots.append(_Waiting(batch, len(batch.calls)))
                batch.calls.append((value, flag))
                if pool is None:
                    assert self._pool_factory is not None
                    pool = self._pool_factory(self.options.config)
                    pool_window = max(1, pool.slots) * run.WINDOW_PER_WORKER
                if len(batch.calls) >= pool.chunk_calls:
                    batch.future = pool.submit(batch.calls, at, render)
                    in_flight += 1
                    batch = _Batch()
            else:
                slots.append(value)
            while slots:
                result = head_ready(False)
                if result is None:
                    break
                slots.popleft()
                yield result
        while slots:
            result = head_ready(True)
            assert result is not None
            slots.popleft()
            yield result

    def _placements(self, client: Any, count: int) -> list[dict[str, Any]]:
        """Where each of ``count`` scans is asked to run. A partition's track runs where its
        scan is kept, so the scans decide how the tracks (the larger part of the work) are
        shared out. On a local cluster, whose workers are alike, partition ``i`` goes to worker
        ``i mod N`` and each worker takes its own in order: left to Dask, a worker that asked
        for its next task early got a second scan while the other idled (10 of 18 partitions
        on one of two workers, which then tracked for a second alone). Elsewhere workers may
        differ, and Dask's dynamic placement stays (as it does for a worker that leaves)."""
        if self.factory.spec.scheduler is not None:
            return [{} for _ in range(count)]
        workers = sorted(client.nthreads())  # the workers' addresses (and their threads)
        if not workers:
            return [{} for _ in range(count)]
        return [
            {
                "workers": [workers[index % len(workers)]],
                "allow_other_workers": True,
                "priority": 2 * (count - index),  # its keys, just after it: one more
            }
            for index in range(count)
        ]

    def _scan(self) -> str | _Scanned:
        """The partitions scanned on the workers (their data left there) and their order, or
        why they cannot be used."""
        if "-" in self.names:
            return "stdin cannot be read by the workers"
        client = self.factory.client()
        try:
            size = self.partition_bytes
            if size is None:
                sizes = [os.stat(name).st_size for name in self.names]
                slots = sum(client.nthreads().values())
                size = partition.balanced_partition_bytes(sizes, slots)
            specs = plan_partitions(self.names, size, self.cuts)
        except OSError as exc:
            return f"cannot plan partitions: {exc}"
        verify = self.options.verify_checksums
        placements = self._placements(client, len(specs))
        futures: list[Any] = [
            client.submit(scan_partition, spec, verify, pure=False, **placement)
            for spec, placement in zip(specs, placements, strict=True)
        ]
        pending = {
            client.submit(summary_of, future, pure=False): index
            for index, future in enumerate(futures)
        }
        # Phase one's keys right behind each scan, on the worker that holds it (ahead of that
        # worker's next scan where the scans are placed): the last scan is followed by its
        # keys alone, not by every partition's, nor by a round trip through this process.
        keys = [
            client.submit(
                partition_keys, future, pure=False, priority=placement.get("priority", -1) + 1
            )
            for future, placement in zip(futures, placements, strict=True)
        ]
        found: dict[int, ScanSummary] = {}
        reason: str | None = None
        try:
            for done in _distributed().as_completed(list(pending)):
                summary: ScanSummary = done.result()
                found[pending[done]] = summary
                if summary.unsafe is not None:
                    reason = summary.unsafe  # no need to wait for the other partitions
                    break
        except OSError as exc:  # a worker without the capture files, typically
            reason = f"a worker could not read the captures: {exc}"
        summaries = [found[index] for index in range(len(specs))] if reason is None else []
        order: list[int] = []
        if reason is None:
            order, reason = order_partitions(specs, summaries)
        if reason is not None:
            client.cancel([*futures, *pending, *keys])
            return reason
        return _Scanned(specs, futures, summaries, order, keys)


@dataclass(slots=True)
class _Scanned:
    """The partitions scanned on the workers (``futures``: their scans, left there until
    needed), their summaries and their order."""

    specs: list[PartitionSpec]
    futures: list[Any]
    summaries: list[ScanSummary]
    order: list[int]
    keys: list[Any]  # each partition's ``partition_keys`` (pickled), submitted with its scan


class _Tracked:
    """Phase two submitted: each partition's edge and entries (futures, fetched in order)
    and this process's tracker of the shared calls, run as the partitions come, or over all
    of them first (``track_all``) when a run-wide limit must be checked before writing."""

    def __init__(
        self, order: list[int], edges: dict[int, Any], entries: dict[int, Any], main: EdgeTracker
    ) -> None:
        self.order = order
        self.main = main
        self._edges = edges
        self._entries = entries
        self._fetched: dict[int, PartEdge] = {}
        self.parts: list[PartFile] = []
        self._own: list[tuple[EmitKey, Call]] | None = None
        self._mine = 0

    def edge(self, index: int) -> PartEdge:
        found = self._fetched.pop(index, None)
        if found is None:
            found = cast(PartEdge, pickle.loads(self._edges.pop(index).result()))
        return found

    def entries_of(self, index: int) -> list[Entry]:
        entries: list[Entry] = pickle.loads(self._entries.pop(index).result())
        return entries

    def track_all(self, tracking: Tracking) -> str | None:
        """Every partition's edge fetched and tracked; why the run-wide limits could make
        the result differ from one tracker's (None when they cannot)."""
        for index in self.order:
            self._fetched[index] = cast(PartEdge, pickle.loads(self._edges.pop(index).result()))
        own: list[tuple[EmitKey, Call]] = []
        for rank, index in enumerate(self.order):
            own += self.main.partition(rank, self._fetched[index].messages)
        own += self.main.finish()
        self._own = own
        edges = [self._fetched[index] for index in self.order]
        self.parts = [edge.part for edge in edges if edge.part is not None]
        return binding_limit(tracking, edges, self.main.tracker)

    def own(self, rank: int, edge: PartEdge) -> list[tuple[EmitKey, Call]]:
        """This process's calls emitted before the end of partition ``rank`` (``edge``)."""
        if self._own is None:
            return self.main.partition(rank, edge.messages)
        limit, start = (rank + 1) << RANK_SHIFT, self._mine
        while self._mine < len(self._own) and self._own[self._mine][0][0] < limit:
            self._mine += 1
        return self._own[start : self._mine]

    def rest(self) -> list[tuple[EmitKey, Call]]:
        """This process's calls emitted at the end of input."""
        return self.main.finish() if self._own is None else self._own[self._mine :]


@dataclass(slots=True)
class _Batch:
    """Calls left to this process, verified together (by the pool once full)."""

    calls: list[Flagged] = field(default_factory=list)
    future: PendingChunk | None = None
    results: list[Result] | None = None


@dataclass(frozen=True, slots=True)
class _Waiting:
    """The place in the output of a call of ``batch``."""

    batch: _Batch
    index: int


class _InputHasher(threading.Thread):
    """Reads every input to its end through its ``HashingReader`` (the manifest's SHA-256 and
    size) while the main process tracks calls; file reads and hashlib release the GIL. It
    runs at the lowest scheduling priority (``_background_priority``): the hash is needed only
    at the end, and at normal priority it took its ~0.4 s of CPU per 600 MB from the workers
    sharing the cores; idle, it fills the gaps (the phase change, a worker's last round)."""

    def __init__(self, readers: Sequence[HashingReader]) -> None:
        super().__init__(name="stirscope-input-hash", daemon=True)
        self._readers = readers
        self._stop_reading = threading.Event()

    def run(self) -> None:
        _background_priority()
        for reader in self._readers:
            while not self._stop_reading.is_set() and reader.read(HASH_BLOCK):
                pass

    def finish(self, complete: bool) -> None:
        """Wait for the end of the inputs (``complete``), or stop reading them early."""
        if not complete:
            self._stop_reading.set()
        self.join()


def _background_priority() -> None:
    """Run the calling thread only when a CPU would otherwise idle (Linux ``SCHED_IDLE``, per
    thread); elsewhere, or where refused, it keeps its priority."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
