"""`stirscope verify`: verify the Identity headers of one SIP request, header values, or a batch.

Contracts (other tools depend on them): ``--sip FILE|-``; ``--identity VALUE ... --from HDR --to
HDR [--pai HDR] [--date HDR] [--request-uri URI]``; ``--batch FILE.jsonl``; ``--at``, ``--trust``
(repeatable), ``--certs``, ``--fetch``, ``--ca-bundle``, ``--json``. Exit 0 when verstat is
TN-Validation-Passed, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from analyzer.batch import run_batch
from analyzer.extract import ExtractError, request_from_headers, request_from_sip_bytes
from analyzer.sharedcache import check_cache_url
from analyzer.trustload import TrustLoadError
from analyzer.verifying import VerifierConfig, build_verifier
from shaken.policy import (
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_FRESHNESS_S,
    CrlMode,
    Originator,
    Policy,
    TnMatch,
)
from shaken.result import VerificationResult


class UsageError(Exception):
    """A bad option value: reported on stderr, exit 2."""


def add_verifier_options(parser: argparse.ArgumentParser) -> None:
    """Trust, certificate and policy options shared by verify, analyze, serve and listen."""
    group = parser.add_argument_group("trust and certificates")
    group.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="STI-CA trust anchors: PEM bundle, DER file or directory (repeatable; required)",
    )
    group.add_argument(
        "--certs",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="certificate mirror: DIR/<host>/<path> serves https://<host>/<path> (repeatable)",
    )
    group.add_argument(
        "--fetch", action="store_true", help="allow fetching x5u and CRLs over HTTPS"
    )
    group.add_argument("--ca-bundle", type=Path, metavar="PEM", help="TLS trust for fetching only")
    group.add_argument(
        "--unsafe-allow-private",
        action="store_true",
        help="allow fetching from loopback/private addresses (labs and tests only: SSRF risk)",
    )
    group.add_argument(
        "--cache",
        metavar="redis://HOST:PORT/DB",
        help="share fetched certificates and CRLs with other instances through Redis "
        "(optional: each instance keeps working alone when Redis is down)",
    )
    pol = parser.add_argument_group("policy")
    pol.add_argument(
        "--freshness",
        type=int,
        default=DEFAULT_FRESHNESS_S,
        metavar="S",
        help="Date/iat freshness window in seconds (default 60, RFC 8224)",
    )
    pol.add_argument(
        "--clock-skew",
        type=int,
        default=DEFAULT_CLOCK_SKEW_S,
        metavar="S",
        help="tolerated future skew of Date/iat in seconds (default 60)",
    )
    pol.add_argument(
        "--no-date-check",
        action="store_true",
        help="do not require a fresh SIP Date header (iat is still checked)",
    )
    pol.add_argument(
        "--originator",
        choices=[o.value for o in Originator],
        default=Originator.PAI_THEN_FROM.value,
        help="originating identity: P-Asserted-Identity then From, or From only",
    )
    pol.add_argument(
        "--tn-match",
        choices=[m.value for m in TnMatch],
        default=TnMatch.EXACT.value,
        help="TN comparison: exact canonical, or nanp (10 vs 11 digits)",
    )
    pol.add_argument(
        "--crl",
        choices=[m.value for m in CrlMode],
        default=CrlMode.SOFT.value,
        help="CRL unavailable: hard fail, soft fail (default) or do not check",
    )


def policy_from_args(args: argparse.Namespace) -> Policy:
    return Policy(
        freshness_s=args.freshness,
        clock_skew_s=args.clock_skew,
        check_date=not args.no_date_check,
        originator=Originator(args.originator),
        tn_match=TnMatch(args.tn_match),
        crl=CrlMode(args.crl),
    )


def config_from_args(args: argparse.Namespace) -> VerifierConfig:
    if not args.trust:
        raise UsageError(
            "no trust anchors: give --trust PEM|DIR (an empty trust store is an error)"
        )
    cache = getattr(args, "cache", None)
    if cache is not None:
        problem = check_cache_url(cache)
        if problem is not None:
            raise UsageError(f"--cache: {problem}")
    return VerifierConfig(
        trust=tuple(args.trust),
        certs_dirs=tuple(args.certs),
        fetch=args.fetch,
        ca_bundle=args.ca_bundle,
        unsafe_allow_private=args.unsafe_allow_private,
        policy=policy_from_args(args),
        cache=cache,
    )


def parse_at(text: str | None) -> datetime | None:
    """``--at``: epoch seconds or ISO 8601 (naive means UTC)."""
    if text is None:
        return None
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: not epoch seconds nor ISO 8601") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="verify SIP Identity headers (RFC 8224/8588) as of a given time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("input (one of)")
    src.add_argument("--sip", metavar="FILE", help="a SIP request (file or - for stdin)")
    src.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="VALUE",
        help="an Identity header value (repeatable)",
    )
    src.add_argument(
        "--batch",
        metavar="FILE.jsonl",
        help="JSON Lines of {identity, from, to, pai?, date?, request_uri?, at?}",
    )
    hdr = parser.add_argument_group("SIP header values (with --identity)")
    hdr.add_argument("--from", dest="from_", metavar="HDR", help="From header value")
    hdr.add_argument("--to", metavar="HDR", help="To header value")
    hdr.add_argument("--pai", metavar="HDR", help="P-Asserted-Identity header value")
    hdr.add_argument("--date", metavar="HDR", help="Date header value (RFC 1123)")
    hdr.add_argument("--request-uri", metavar="URI", help="Request-URI")
    parser.add_argument(
        "--at",
        metavar="EPOCH|ISO8601",
        help="verification time (default: now; for captures the call time)",
    )
    parser.add_argument("--json", action="store_true", help="JSON output")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes for --batch (default 1)",
    )
    parser.add_argument("-o", "--output", metavar="PATH", help="write results here (--batch)")
    add_verifier_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, TrustLoadError) as exc:
        print(f"stirscope verify: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    modes = [bool(args.sip), bool(args.identity), bool(args.batch)]
    if sum(modes) != 1:
        raise UsageError("give exactly one of --sip FILE, --identity VALUE or --batch FILE.jsonl")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    config = config_from_args(args)
    at = parse_at(args.at)
    if args.batch:
        return _run_batch(args, config, at)
    if args.identity:
        if not args.from_ or not args.to:
            raise UsageError("--identity needs --from and --to header values")
        try:
            request = request_from_headers(
                identities=args.identity,
                from_=args.from_,
                to=args.to,
                pai=args.pai,
                date=args.date,
                request_uri=args.request_uri,
            )
        except ExtractError as exc:
            raise UsageError(str(exc)) from exc
    else:
        data = _read_input(args.sip)
        try:
            request = request_from_sip_bytes(data)
        except ExtractError as exc:
            print(f"stirscope verify: {exc}", file=sys.stderr)
            return 1
    with build_verifier(config) as verifier:
        result = verifier.verify(request, at=at or datetime.now(UTC))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        write_text(result, sys.stdout)
    return 0 if result.passed else 1


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from exc


def _run_batch(args: argparse.Namespace, config: VerifierConfig, at: datetime | None) -> int:
    with contextlib.ExitStack() as stack:
        if args.batch == "-":
            lines: Iterator[str] = iter(sys.stdin)
        else:
            try:
                handle = open(args.batch, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
            except OSError as exc:
                raise UsageError(f"cannot read {args.batch}: {exc.strerror}") from exc
            lines = iter(stack.enter_context(handle))
        out: TextIO = sys.stdout
        if args.output:
            try:
                out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
        summary = run_batch(lines, out, config=config, default_at=at, workers=args.workers)
    print(summary.describe(), file=sys.stderr)
    return 0 if summary.failed == 0 and summary.errors == 0 else 1


def write_text(result: VerificationResult, out: TextIO) -> None:
    """A readable rendering of one verification result."""
    code = f" ({result.status_code} {result.reason_phrase})" if result.status_code else ""
    out.write(f"verstat: {result.verstat.value}{code}\n")
    out.write(f"at:      {result.at.astimezone(UTC).isoformat()}\n")
    for p in result.passports:
        state = "ignored" if p.ignored else ("VALID" if p.valid else f"INVALID {p.status_code}")
        out.write(f"\n[{p.index}] ppt={p.ppt or '-'} form={p.form}  {state}\n")
        if p.attest or p.origid:
            out.write(f"    attest={p.attest}  origid={p.origid}\n")
        if p.orig or p.dest:
            dest = ",".join(d.value for d in p.dest)
            out.write(f"    orig={p.orig}  dest={dest}  iat={p.iat}\n")
        if p.div:
            out.write(f"    div={p.div}\n")
        if p.x5u:
            out.write(f"    x5u={p.x5u}\n")
        if p.signer:
            s = p.signer
            trusted = "trusted" if s.chain_trusted else "UNTRUSTED"
            out.write(
                f"    signer: SPC {s.spc}  O={s.organization}  chain {trusted}, "
                f"revocation {s.revocation.value}\n"
            )
        for f in p.findings:
            code = f" [{f.status_code}]" if f.status_code else ""
            out.write(f"    - {f.severity.value}: {f.reason.value}{code}: {f.detail}\n")
    for f in result.findings:
        out.write(f"  request: {f.severity.value}: {f.reason.value}: {f.detail}\n")
