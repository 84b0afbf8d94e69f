"""`stirscope traceback`: turn analysed calls into pre-filled traceback candidates.

Usage: ``stirscope traceback CAPTURE... | --from-results CALLS.jsonl [--network NAME]
[--peers FILE] [--providers FILE] [--watch FILE] [--select RULES] [--timezone TZ]
[--format jsonl|csv|json|html] [-o PATH]`` plus, with captures, the verifier options and
``--at`` of ``stirscope analyze`` (each INVITE is verified as of its packet time unless
``--at`` fixes it). ``--from-results`` reads the JSONL `stirscope analyze --format jsonl` wrote
(``-`` for stdin); the verdicts recorded there are used as they are.

One candidate per selected call (``--select``, default
``failed,c-attest,unsigned-from-signing-peers,replay``, plus ``watch`` with ``--watch``;
alternatives separated by commas, ``+`` joins rules that must all match; ``all`` selects every
call), with hops from our network outward, our own hop's pre-filled answer, the incident data
(numbers in E.164, UTC time to the millisecond, local time in ``--timezone``, an IANA zone,
default UTC), the attested origin data, possible replays, campaigns and limitations. Every
candidate has ``review_required: true``; traceback outcomes are left for people. Output is
deterministic for the same inputs and files. The schema is schemas/traceback-candidate.schema.json.

Formats: ``jsonl`` (default) one candidate per line; ``json`` one document with the run, a
summary, the campaigns and the candidates; ``csv`` the incident-data columns a traceback portal
asks for; ``html`` a report with the campaign summary. A one-line summary goes to stderr (to
stdout with ``-o``).

Exit codes: 0 when the run completed (zero candidates included); 2 on usage errors (bad option,
unreadable input, a malformed peers/providers/watch-list row or call record, named by line).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from analyzer.pcapfile import NotACaptureError
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.traceback import TracebackResult, TracebackSettings, canonical, make_candidates
from analyzer.traceback_campaign import DEFAULT_MIN_CALLS
from analyzer.traceback_directory import (
    DirectoryError,
    PeerMap,
    ProviderDirectory,
    WatchList,
)
from analyzer.traceback_facts import CallFacts
from analyzer.traceback_report import csv_text, json_document, jsonl_line, render_traceback_html
from analyzer.traceback_select import DEFAULT_RULES, Rule, Selection, SelectionError
from analyzer.trustload import TrustLoadError
from analyzer.version import __version__
from service.cmd_verify import UsageError, add_verifier_options, config_from_args, parse_at

FORMATS = ("jsonl", "csv", "json", "html")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "traceback",
        help="pre-fill traceback candidates (hops, evidence, provider names) from analysed calls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("captures", nargs="*", metavar="CAPTURE", help="pcap/pcapng[.gz] or -")
    parser.add_argument(
        "--from-results", metavar="CALLS.jsonl", help="call records from `stirscope analyze`"
    )
    parser.add_argument("--network", metavar="NAME", help="our network's name (hop 0)")
    parser.add_argument("--peers", metavar="FILE", help="peers CSV: ingress -> provider")
    parser.add_argument("--providers", metavar="FILE", help="providers CSV: SPC/OCN -> name")
    parser.add_argument("--watch", metavar="FILE", help="watch list: numbers, spc:X, origid:X")
    parser.add_argument("--select", metavar="RULES", help=f"selection (default {DEFAULT_RULES})")
    parser.add_argument(
        "--timezone", default="UTC", metavar="TZ", help="IANA zone for local times (default UTC)"
    )
    parser.add_argument(
        "--campaign-min",
        type=int,
        default=DEFAULT_MIN_CALLS,
        metavar="N",
        help=f"calls that make a campaign (default {DEFAULT_MIN_CALLS})",
    )
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="output format")
    parser.add_argument("-o", "--output", metavar="PATH", help="write candidates here")
    parser.add_argument(
        "--at", metavar="EPOCH|ISO8601", help="verify every call as of this time (captures)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="verification processes (captures)"
    )
    add_verifier_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, TrustLoadError, DirectoryError, SelectionError) as exc:
        print(f"stirscope traceback: {exc}", file=sys.stderr)
        return 2


def _selection(args: argparse.Namespace, watch: WatchList | None) -> Selection:
    text = args.select or (DEFAULT_RULES + (",watch" if watch is not None else ""))
    selection = Selection.parse(text)
    if Rule.WATCH in selection.rules and watch is None:
        raise UsageError("--select watch needs --watch FILE")
    return selection


def _check(args: argparse.Namespace) -> None:
    try:
        ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(f"--timezone {args.timezone!r}: not an IANA time zone") from exc
    if args.campaign_min < 1:
        raise UsageError("--campaign-min must be at least 1")


def _read_results(path: str) -> tuple[list[CallFacts], dict[str, object]]:
    """Call records from `analyze --format jsonl`; a bad line is a usage error naming it."""
    digest = hashlib.sha256()
    size = 0
    facts: list[CallFacts] = []
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    with contextlib.closing(stream) if path != "-" else contextlib.nullcontext(stream):
        for number, raw in enumerate(stream, start=1):
            digest.update(raw)
            size += len(raw)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                facts.append(CallFacts.from_json(obj))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
                raise UsageError(f"{path} line {number}: not a call record ({exc})") from exc
    return facts, {"name": path, "size": size, "sha256": digest.hexdigest()}


def _from_captures(args: argparse.Namespace) -> tuple[Iterator[CallFacts], AnalyzeJob]:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.captures.count("-") > 1:
        raise UsageError("stdin (-) can be given once")
    options = AnalyzeOptions(
        config=config_from_args(args), at_override=parse_at(args.at), workers=args.workers
    )
    try:
        job = AnalyzeJob(args.captures, options)
    except NotACaptureError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return (CallFacts.from_json(r.to_json()) for r in job.records()), job


def _run(args: argparse.Namespace) -> int:
    if bool(args.captures) == bool(args.from_results):
        raise UsageError("give CAPTURE... or --from-results CALLS.jsonl (one of them)")
    peers = PeerMap.load(args.peers) if args.peers else None
    providers = ProviderDirectory.load(args.providers) if args.providers else None
    watch = WatchList.load(args.watch) if args.watch else None
    selection = _selection(args, watch)
    _check(args)
    verifier: dict[str, object] | None = None
    if args.from_results:
        facts, info = _read_results(args.from_results)
        inputs = [info]
        kind, policy = "call_records", "recorded"
    else:
        stream, job = _from_captures(args)
        facts = list(stream)
        inputs = [i.to_json() for i in job.inputs()]
        kind = "capture"
        policy = "fixed" if job.options.at_override else "packet_timestamp"
        verifier = {
            "configuration": job.options.config.to_json(),
            "trust_store_sha256": job.verifier.trust.fingerprint,
            "at": args.at,
        }
    files = {
        name: (f.source.to_json() if f is not None and f.source is not None else None)
        for name, f in (("peers", peers), ("providers", providers), ("watch", watch))
    }
    config = {
        "verifier": verifier,
        "network": args.network,
        "time_zone": args.timezone,
        "select": str(selection),
        "campaign_min": args.campaign_min,
        "freshness_s": args.freshness,
        "files": {k: (v or {}).get("sha256") for k, v in files.items()},
    }
    settings = TracebackSettings(
        network=args.network,
        peers=peers,
        providers=providers,
        time_zone=args.timezone,
        freshness_s=args.freshness,
        tool_version=__version__,
        config_sha256=hashlib.sha256(canonical(config).encode()).hexdigest(),
        reference_time_policy=policy,
        evidence_kind=kind,
        inputs=tuple(inputs),
    )
    result = make_candidates(
        facts, settings, selection, watch=watch, min_campaign_calls=args.campaign_min
    )
    run_info = {
        "tool": {"name": "stirscope", "version": __version__},
        "inputs": inputs,
        "files": files,
        "configuration": config,
        "config_sha256": settings.config_sha256,
    }
    _write(args, result, run_info)
    return 0


def _write(args: argparse.Namespace, result: TracebackResult, run_info: dict[str, Any]) -> None:
    summary = result.summary()
    if args.format == "jsonl":
        text = "".join(jsonl_line(c) for c in result.candidates)
    elif args.format == "csv":
        text = csv_text(result.candidates)
    elif args.format == "json":
        text = json_document(result.candidates, result.campaigns, summary, run_info)
    else:
        text = render_traceback_html(result.candidates, result.campaigns, summary, run_info)
    out: TextIO = sys.stdout
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
    else:
        out.write(text)
    line = (
        f"traceback: {summary['calls']} calls, {summary['candidates']} candidates, "
        f"{summary['campaigns']} campaigns (review required before submission)\n"
    )
    (sys.stdout if args.output else sys.stderr).write(line)
