"""`stirscope analyze`: every call in packet captures, with attestation, signer and verdict.

Usage: ``stirscope analyze CAPTURE... [--trust PATH] [--certs DIR] [--fetch] [--at T]
[--format table|jsonl|csv|html|parquet] [-o PATH | --output-dir DIR] [--json]`` plus the
verifier options of ``stirscope verify``. CAPTURE is a pcap or pcapng file, gzip-compressed or
not, or ``-`` for stdin; several captures are merged in time order. Each INVITE is verified
as of its packet timestamp unless ``--at`` fixes the time. Trust anchors are required, as for
``verify``.

Outputs: ``table`` (default) prints a per-call table and a summary (calls, attestation mix,
verdicts, top signers, anomalies); ``jsonl`` one JSON object per call; ``csv`` the flat
fields; ``html`` a self-contained report with charts. Records go to ``-o PATH`` or stdout; the
summary then goes to stdout when ``-o`` is given, else to stderr. ``--json`` prints the
summary (counts, anomalies, evidence manifest) as JSON instead of text. An evidence manifest
is written to ``--manifest PATH``, or beside ``-o PATH`` as ``PATH.manifest.json``.

``--output-dir DIR`` writes the records as a dataset of part files instead of one stream:
``DIR/part-00000.jsonl``... (``--format jsonl``, the default there) or ``DIR/part-00000.parquet``...
(``--format parquet``, only with ``--output-dir``; needs pyarrow: ``stirscope[parquet]``), a
new part every 100,000 records; DIR must be new or empty. The summary goes to stdout; the
manifest (``--manifest``, ``--json``) lists the parts with their SHA-256 (``outputs``). With
``--cluster`` in partition mode each worker writes the calls it finished to its partition's
part (``part-<rank>``), this process those it tracked (``part-main-*``): DIR must be at the
same path on the workers (a shared directory), as the captures are. The parts' union is the
single-process record set, each part in emission order.

``--db URL`` also records the run in a results store (``sqlite:///PATH`` or a file path for
SQLite, ``postgresql://USER@HOST/DB`` for PostgreSQL), the one `stirscope serve` reads: a
completed job with every call, the anomalies and the evidence manifest. It works alongside
``--format``/``-o``; the schema is created or upgraded on first use.

Exit codes: 0 when the analysis ran to the end (failing calls and anomalies are results, not
errors; a damaged capture is analysed up to the damage); 2 on usage errors (no trust anchors,
bad option, unreadable input, a file that is not a capture, a results store that cannot be
opened, a bad ``--cluster`` value); 1 when the results store or the cluster fails during the
run (the job is then marked failed).

``--cluster local:N`` runs the analysis on a local Dask cluster of N worker processes;
``--cluster tcp://SCHEDULER:8786`` on a running ``dask.distributed`` cluster (workers need
stirscope installed and the capture, ``--trust`` and ``--certs`` paths at the same place).
``--cluster-mode`` says what the workers do. ``partition``: they read the captures (each file
cut at record boundaries into partitions of 4-32 MB, at least four per worker), track, verify
and render the calls only their partition sees, and this process tracks the calls whose Call-ID
spans partitions and merges all in capture order (when run-wide limits could make that differ
from one tracker, this process tracks every call and says why: ``merge_fallback``). ``verify``:
this process reads the captures and tracks the calls, the workers only verify. ``auto`` (the
default) is ``partition`` for 16 MB of input files or more, else ``verify``. Either way the
records are byte-identical to a single-process run: when the partitions cannot give exactly the
single-process result (SIP over TCP, captures that overlap in time, a damaged capture, workers
that cannot read the files), the run uses ``verify`` and says why on stderr and in the summary.
In ``verify`` mode small captures (up to a few hundred calls) never start the cluster. With
``local:N`` and ``-o``/stdout, the workers hand their rendered lines over through spill files
copied into the output by the kernel (``analyzer.spill``), not through the cluster's messages.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from analyzer.capture import anomaly_to_json
from analyzer.manifest import build_manifest
from analyzer.outputdir import (
    WRITTEN,
    DatasetWriter,
    OutputDirError,
    PartFile,
    PartOutput,
    write_empty,
)
from analyzer.outputdir import prepare as prepare_output
from analyzer.pcapfile import NotACaptureError
from analyzer.records import (
    CSV_FIELDS,
    CallRecord,
    Summary,
    csv_line,
    jsonl_line,
    signer_label,
)
from analyzer.report_html import render_html
from analyzer.run import AnalyzeJob, AnalyzeOptions, RunStats
from analyzer.spill import SpillOutput, spillable, write_rendered
from analyzer.trustload import TrustLoadError
from service.cmd_verify import UsageError, add_verifier_options, config_from_args, parse_at

if TYPE_CHECKING:  # the store (SQLAlchemy, Alembic) is imported only when --db is used
    from analyzer.storage import Heartbeat, Lease, RunWriter, Store

FORMATS = ("table", "jsonl", "csv", "html", "parquet")
CLUSTER_MODES = ("auto", "partition", "verify")
# Calls listed in the HTML report (all are counted in its summary and charts): a case-file
# attachment stays openable in a browser; JSONL has every call.
MAX_HTML_CALLS = 5000
# Seconds between progress-bar redraws on a TTY.
PROGRESS_INTERVAL_S = 0.25
# Worker processes by default: both cores of the reference machine (ARCHITECTURE.md 5).
DEFAULT_WORKERS = min(2, os.cpu_count() or 1)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="analyse packet captures: every call with attestation, signer and verdict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap/pcapng[.gz] or -")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="record format (default table; jsonl with --output-dir; parquet needs it)",
    )
    parser.add_argument("-o", "--output", metavar="PATH", help="write records here")
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write the records as part files DIR/part-*.jsonl|parquet (DIR new or empty)",
    )
    parser.add_argument("--json", action="store_true", help="summary as JSON")
    parser.add_argument(
        "--at",
        metavar="EPOCH|ISO8601",
        help="verify every call as of this time (default: each INVITE's packet time)",
    )
    parser.add_argument("--manifest", metavar="PATH", help="write the evidence manifest here")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="also record the run in this results store (sqlite:///PATH or postgresql://...)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"verification processes (default {DEFAULT_WORKERS}; 1 = in-process)",
    )
    parser.add_argument(
        "--cluster",
        metavar="local:N|tcp://HOST:PORT",
        help="analyse on a Dask cluster: N local worker processes, or a running scheduler",
    )
    parser.add_argument(
        "--cluster-mode",
        choices=CLUSTER_MODES,
        default="auto",
        help="with --cluster: workers read the captures (partition) or only verify the calls "
        "(verify); auto: partition for 16 MB of input or more",
    )
    parser.add_argument(
        "--verify-checksums",
        action="store_true",
        help="check IP/UDP/TCP checksums (report bad_checksum anomalies)",
    )
    add_verifier_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, TrustLoadError) as exc:
        print(f"stirscope analyze: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from analyzer.cluster import ClusterError  # light: dask is imported on use only

        if isinstance(exc, ClusterError):
            print(f"stirscope analyze: {exc}", file=sys.stderr)
            return 1
        if getattr(args, "db", None):
            from analyzer.storage import DatabaseError, StoreError

            if isinstance(exc, DatabaseError | StoreError):
                print(f"stirscope analyze: results store: {exc}", file=sys.stderr)
                return 1
        raise


def _output_dir(args: argparse.Namespace) -> PartOutput | None:
    """``--output-dir``: the format resolved (``args.format``) and the directory prepared;
    None without it."""
    if args.output_dir is None:
        if args.format == "parquet":
            raise UsageError("--format parquet needs --output-dir")
        args.format = args.format or "table"
        return None
    if args.output is not None:
        raise UsageError("-o and --output-dir exclude each other")
    args.format = args.format or "jsonl"
    try:
        return prepare_output(args.output_dir, args.format)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from exc


def _open_job(args: argparse.Namespace, output: PartOutput | None = None) -> AnalyzeJob:
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    pool = None
    if args.cluster is not None:
        from analyzer.cluster import DaskPoolFactory, parse_cluster

        if args.workers is not None:
            raise UsageError("--workers and --cluster exclude each other")
        # Once the cluster's client is up, what this process has built (the modules, Dask's
        # among them, the client and a local cluster's scheduler) lives as long as the run:
        # frozen out of the collector's reach, the full collections the merge's allocations
        # trigger do not walk it (measured: ~0.1 s of CPU on a 40,000-call run).
        try:
            pool = DaskPoolFactory(parse_cluster(args.cluster), on_connect=gc.freeze)
        except ValueError as exc:
            raise UsageError(f"--cluster: {exc}") from exc
    elif args.cluster_mode != "auto":
        raise UsageError("--cluster-mode needs --cluster")
    if args.captures.count("-") > 1:
        raise UsageError("stdin (-) can be given once")
    options = AnalyzeOptions(
        config=config_from_args(args),
        at_override=parse_at(args.at),
        workers=DEFAULT_WORKERS if args.workers is None else args.workers,
        verify_checksums=args.verify_checksums,
    )
    try:
        if pool is not None and _partitioned(args):
            from analyzer.cluster import PartitionedJob

            # The store needs every record in this process: then the workers do not write.
            writes = output if output is not None and not args.db else None
            return PartitionedJob(args.captures, options, pool, output=writes)
        return AnalyzeJob(args.captures, options, pool=pool)
    except NotACaptureError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def _partitioned(args: argparse.Namespace) -> bool:
    if args.cluster_mode == "auto":
        from analyzer.cluster import partitioned_by_default

        return partitioned_by_default(args.captures)
    return bool(args.cluster_mode == "partition")


def _cluster_json(args: argparse.Namespace, job: AnalyzeJob) -> dict[str, object] | None:
    """How the cluster was used (``--cluster`` runs only): mode, partitions, fallback."""
    if args.cluster is None:
        return None
    partitions = getattr(job, "partitions", 0)
    return {
        "address": args.cluster,
        "mode": "partition" if partitions else "verify",
        "partitions": partitions,
        "fallback": getattr(job, "fallback", None),
        "merge_fallback": getattr(job, "merge_fallback", None),
        "edge_calls": getattr(job, "edge_calls", 0),
    }


def _run(args: argparse.Namespace) -> int:
    output = _output_dir(args)
    job = _open_job(args, output)
    parts: list[PartFile] = []
    with contextlib.ExitStack() as stack:
        stack.callback(job.close)
        out: TextIO = sys.stdout
        if args.output:
            try:
                out = stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
            except OSError as exc:
                raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
        recorder = _Recorder.start(args, job, stack) if args.db else None
        sink = recorder.add if recorder is not None else None
        progress = _Progress(job) if sys.stderr.isatty() else None
        kept: list[CallRecord] = []
        if output is not None:
            parts = _write_parts(job, output, progress, sink)
        elif args.json and args.format == "table" and not args.output:
            for _digest, record in job.results(None, progress.update if progress else None):
                if sink is not None:  # the JSON summary replaces the table on stdout
                    assert isinstance(record, CallRecord)
                    sink(record)
        else:
            if sink is None and args.format != "html":
                _offer_spill(args, job, out)
            kept = _write(job, args.format, out, progress, sink)
        if progress is not None:
            progress.done()
        manifest = build_manifest(
            inputs=job.inputs(),
            trust=job.verifier.trust,
            config=job.options.config,
            at_override=job.options.at_override,
            summary=job.summary,
            stats=job.stats,
            output_format=args.format,
        )
        if output is not None:  # an addition: the other keys keep their shape
            manifest["outputs"] = [part.to_json(output.directory) for part in parts]
        anomalies = [anomaly_to_json(a) for a in job.anomalies]
        if args.format == "html":
            out.write(
                render_html(
                    summary=job.summary,
                    manifest=manifest,
                    records=kept,
                    anomalies=anomalies,
                    omitted_records=job.summary.calls - len(kept),
                    omitted_anomalies=job.stats.anomalies - len(anomalies),
                )
            )
        manifest_path = args.manifest or (f"{args.output}.manifest.json" if args.output else None)
        if manifest_path:
            _write_json(Path(manifest_path), manifest)
        if recorder is not None:
            recorder.finish(job, manifest, anomalies)
    records_on_stdout = not (args.output or args.output_dir) and args.format != "table"
    summary_out = sys.stderr if records_on_stdout else sys.stdout
    cluster = _cluster_json(args, job)
    if cluster is not None and cluster["fallback"]:
        print(
            f"stirscope analyze: --cluster: the workers did not read the captures "
            f"({cluster['fallback']}); this process read them, the workers verified",
            file=sys.stderr,
        )
    if args.json:
        document: dict[str, object] = {
            "summary": job.summary.to_json(),
            "anomalies": anomalies,
            "manifest": manifest,
        }
        if recorder is not None:
            document["store"] = {"url": recorder.store.url, "job": recorder.lease.job_id}
        if cluster is not None:
            document["cluster"] = cluster
        summary_out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        write_summary(job.summary, job.stats, manifest, anomalies, summary_out)
        if recorder is not None:
            summary_out.write(
                f"  stored:       job {recorder.lease.job_id} in {recorder.store.url}\n"
            )
        if cluster is not None:
            if not cluster["partitions"]:
                how = "workers verified" + (
                    f" (fallback: {cluster['fallback']})" if cluster["fallback"] else ""
                )
            elif cluster["merge_fallback"]:
                how = (
                    f"workers read {cluster['partitions']} partition(s), this process tracked "
                    f"every call ({cluster['merge_fallback']})"
                )
            else:
                how = (
                    f"workers read {cluster['partitions']} partition(s) and finished their "
                    f"calls; {cluster['edge_calls']} call(s) across partitions merged here"
                )
            summary_out.write(f"  cluster:      {cluster['address']}: {how}\n")
    return 0


def _write_json(path: Path, document: dict[str, object]) -> None:
    try:
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


def _offer_spill(args: argparse.Namespace, job: AnalyzeJob, out: TextIO) -> None:
    """A partitioned cluster run whose workers are on this machine may have them hand the
    rendered lines over through files (``analyzer.spill``) when ``out`` can take them; the
    files go beside the output file (the same disk), or to the system's temporary directory."""
    if args.cluster is None:
        return
    from analyzer.cluster import PartitionedJob

    if isinstance(job, PartitionedJob):
        job.spill_errors = spillable(out)
        job.spill_parent = os.path.dirname(os.path.abspath(args.output)) if args.output else None


def _write(
    job: AnalyzeJob,
    fmt: str,
    out: TextIO,
    progress: _Progress | None,
    sink: Callable[[CallRecord], None] | None = None,
) -> list[CallRecord]:
    """Stream the records in ``fmt`` (and each record to ``sink``); returns the records kept
    for an HTML report."""
    update = progress.update if progress else None
    kept: list[CallRecord] = []
    if fmt == "html":
        for record in job.records(update):
            if sink is not None:
                sink(record)
            if len(kept) < MAX_HTML_CALLS:
                kept.append(record)
        return kept
    if fmt == "csv":
        out.write(",".join(CSV_FIELDS) + "\n")
    render = {"jsonl": jsonl_line, "csv": csv_line, "table": table_line}[fmt]
    if fmt == "table":
        out.write(table_header())
    rows = 0
    if sink is not None:
        # The store needs the records themselves: render here rather than in the workers.
        for _digest, item in job.results(None, update):
            assert isinstance(item, CallRecord)
            sink(item)
            out.write(render(item))
            rows += 1
    else:

        def spill() -> SpillOutput | None:  # where the workers left lines (analyzer.spill)
            return cast("SpillOutput | None", getattr(job, "spill", None))

        rows = write_rendered(job.results(render, update), out, spill)
    if fmt == "table":
        out.write("(no calls)\n\n" if not rows else "\n")
    return kept


def _write_parts(
    job: AnalyzeJob,
    output: PartOutput,
    progress: _Progress | None,
    sink: Callable[[CallRecord], None] | None = None,
) -> list[PartFile]:
    """``--output-dir``: the records this process writes in parts, after the parts the workers
    wrote (partitioned cluster mode: their calls come back ``WRITTEN``, digest only); the
    list of every part. A Parquet part or the store needs the records, JSONL only the text."""
    update = progress.update if progress else None
    render = jsonl_line if output.fmt == "jsonl" and sink is None else None
    writer: DatasetWriter | None = None
    try:
        for _digest, item in job.results(render, update):
            if item == WRITTEN:
                continue
            if writer is None:  # the workers' decision is known once results come
                worker_parts = getattr(job, "worker_parts", None)
                writer = DatasetWriter(output, "part" if worker_parts is None else "part-main")
            if isinstance(item, CallRecord):
                if sink is not None:
                    sink(item)
                writer.add(item, jsonl_line(item))
            else:
                assert isinstance(item, str), "workers that write parts do not spill"
                writer.add(None, item)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    worker_parts = list(getattr(job, "worker_parts", None) or ())
    parts = [*worker_parts, *(writer.close() if writer is not None else [])]
    return parts or [write_empty(output)]


def dump_jsonl(record: CallRecord) -> str:
    """One JSONL line without its newline."""
    return jsonl_line(record).rstrip("\n")


_VERDICT_SHORT = {
    "TN-Validation-Passed": "passed",
    "TN-Validation-Failed": "FAILED",
    "No-TN-Validation": "none",
}


TABLE_COLUMNS = (
    ("start (UTC)", 23), ("call-id", 28), ("from", 12), ("to", 12), ("tr", 7), ("att", 3),
    ("verdict", 7), ("code/reason", 24), ("signer", 24), ("final", 5),
)  # fmt: skip


def _table_text(cells: list[str]) -> str:
    text = "  ".join(
        (c if len(c) <= w else c[: w - 1] + "~").ljust(w)
        for c, (_n, w) in zip(cells, TABLE_COLUMNS, strict=True)
    )
    return text.rstrip() + "\n"


def table_header() -> str:
    return _table_text([name for name, _ in TABLE_COLUMNS])


def table_line(r: CallRecord) -> str:
    """One row of the per-call terminal table."""
    code = f"{r.status_code or ''} {r.reason or r.error or ''}".strip()
    transport = f"hep/{r.transport}" if r.encapsulation == "hep" else r.transport
    signer = signer_label(r.signer_spc, r.signer_org) if (r.signer_spc or r.signer_org) else ""
    return _table_text(
        [
            r.start[:23].replace("T", " "), r.call_id, r.from_.tn or r.from_.raw or "",
            r.to.tn or r.to.raw or "", transport, r.attest or "-",
            _VERDICT_SHORT.get(r.verstat or "", "error"), code or "-", signer or "-",
            str(r.final_status or "-"),
        ]
    )  # fmt: skip


def by_count(counter: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first, ties by name (deterministic)."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def _counts(items: Iterable[tuple[str, int]]) -> str:
    text = ", ".join(f"{k} {v}" for k, v in items)
    return text or "-"


def write_summary(
    summary: Summary,
    stats: RunStats,
    manifest: dict[str, object],
    anomalies: list[dict[str, object]],
    out: TextIO,
) -> None:
    """The terminal summary: calls, attestation mix, verdicts, top signers, anomalies."""
    inputs = manifest.get("inputs")
    listed = inputs if isinstance(inputs, list) else []
    size = sum(int(i.get("size", 0)) for i in listed if isinstance(i, dict))
    t = stats.tracker
    out.write(
        f"{summary.calls} calls in {len(listed)} capture(s), {size:,} bytes; "
        f"{stats.sip_messages} SIP messages, {t.invites} INVITEs "
        f"({t.retransmissions} retransmitted)\n"
    )
    out.write(f"  verdicts:     {_counts(by_count(summary.verstat))}\n")
    out.write(f"  attestation:  {_counts(sorted(summary.attest.items()))}\n")
    out.write(f"  top signers:  {_counts(by_count(summary.signers)[:5])}\n")
    out.write(f"  failures:     {_counts(by_count(summary.reasons)[:6])}\n")
    out.write(f"  SIP final:    {_counts(by_count(summary.final_status))}\n")
    out.write(f"  transports:   {_counts(by_count(summary.transports))}\n")
    out.write(f"  anomalies:    {_counts(by_count(summary.anomalies))}\n")
    tls = summary.anomalies.get("tls_flow", 0)
    if tls:
        out.write(f"                {tls} TLS flow(s) seen: SIP over TLS cannot be decrypted\n")
    for a in anomalies[:10]:
        out.write(f"    frame {a.get('frame')}: {a.get('kind')}: {a.get('detail')}\n")
    if len(anomalies) > 10 or stats.anomalies > len(anomalies):
        out.write(f"    ... {stats.anomalies - min(10, len(anomalies))} more\n")
    unmatched = sum(t.unmatched.values())
    if unmatched or t.late_messages:
        out.write(
            f"  not in calls: {_counts(sorted(t.unmatched.items()))}; late {t.late_messages}\n"
        )
    for item in listed:
        if isinstance(item, dict):
            out.write(f"  input:        {item.get('name')} sha256 {item.get('sha256')}\n")
    trust = manifest.get("trust_store")
    if isinstance(trust, dict):
        out.write(f"  trust store:  sha256 {trust.get('fingerprint_sha256')}\n")
    when = manifest.get("verification_time")
    if isinstance(when, dict):
        mode = "each INVITE's packet time" if when.get("at") is None else when.get("at")
        out.write(f"  verified as of {mode}\n")


class _Progress:
    """A one-line progress bar on stderr (only used when stderr is a TTY)."""

    def __init__(self, job: AnalyzeJob) -> None:
        self.job = job
        self.last = 0.0

    def update(self, calls: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        read, total = self.job.bytes_read, self.job.total_bytes
        share = f" {100 * read / total:5.1f}%" if total else ""
        sys.stderr.write(f"\ranalyze:{share} {read / 1e6:,.1f} MB, {calls:,} calls ")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


class _Recorder:
    """``--db``: the run recorded as a job of the results store, written as it goes.

    The job is created ``running`` under a lease of this process, renewed by a heartbeat
    thread (a stretch of capture without calls must not look like a dead run); calls go in
    batches; the end writes the run's anomalies, summary, manifest and input hashes and marks
    the job done. An error or Ctrl-C marks it failed or interrupted. ARCHITECTURE.md 2.
    """

    def __init__(self, store: Store, lease: Lease, writer: RunWriter, beat: Heartbeat) -> None:
        self.store = store
        self.lease = lease
        self.writer = writer
        self.beat = beat
        self.finished = False

    @classmethod
    def start(
        cls, args: argparse.Namespace, job: AnalyzeJob, stack: contextlib.ExitStack
    ) -> _Recorder:
        from analyzer.storage import DatabaseError, InputSpec, Store, StoreError

        try:
            store = Store.open(args.db)
        except StoreError as exc:
            raise UsageError(f"--db: {exc}") from exc
        stack.callback(store.close)
        try:
            store.migrate()
        except (StoreError, DatabaseError) as exc:
            raise UsageError(f"--db: {exc}") from exc
        options = {
            "command": "analyze",
            "configuration": job.options.config.to_json(),
            "at": job.options.at_override.isoformat() if job.options.at_override else None,
            "verify_checksums": job.options.verify_checksums,
        }
        inputs = [
            InputSpec(name, size) for name, size in zip(args.captures, job.sizes, strict=True)
        ]
        lease = store.begin_job(
            inputs, options, owner=f"{socket.gethostname()}/{os.getpid()}",
            total_bytes=job.total_bytes,
        )  # fmt: skip
        recorder = cls(
            store,
            lease,
            store.writer(lease, background=True),
            store.keep_alive(lease, lambda: job.bytes_read),
        )
        stack.push(recorder._exit)
        recorder.beat.start()
        return recorder

    def add(self, record: CallRecord) -> None:
        self.writer.add(record)

    def finish(
        self, job: AnalyzeJob, manifest: dict[str, object], anomalies: list[dict[str, object]]
    ) -> None:
        from analyzer.storage import InputSpec

        self.writer.close()
        self.writer.add_anomalies(anomalies)
        self.beat.stop()
        self.store.complete(
            self.lease,
            summary=job.summary.to_json(),
            manifest=manifest,
            inputs=[InputSpec(i.name, i.size, i.sha256) for i in job.inputs()],
            progress_bytes=job.bytes_read,
        )
        self.finished = True

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: object,
    ) -> bool:
        from analyzer.storage import DatabaseError, JobState, LeaseLost, StoreError

        self.beat.stop()
        self.writer.abort()
        if self.finished:
            return False
        interrupted = exc is not None and not isinstance(exc, Exception)  # Ctrl-C, exit
        error = f"{type(exc).__name__}: {exc}" if exc is not None else "ended before completion"
        state = JobState.INTERRUPTED if interrupted else JobState.FAILED
        with contextlib.suppress(LeaseLost, StoreError, DatabaseError):
            self.store.fail(self.lease, error, state=state)
        return False
