"""``stirscope sip parse FILE|-``: show how a SIP message parses (start line, headers, defects).

Exit codes: 0 parsed, 1 parse error (one line on stderr), 2 the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sip import Request, Response, SipParseError, parse_message


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("sip", help="SIP message tools")
    sip_sub = parser.add_subparsers(dest="sip_command", metavar="SIP_COMMAND")
    parse = sip_sub.add_parser("parse", help="parse one SIP message and print it")
    parse.add_argument("file", help="file holding one SIP message, or - for stdin")
    parse.add_argument("--strict", action="store_true", help="fail on any violation")
    parse.add_argument("--json", action="store_true", help="print JSON instead of text")
    parse.set_defaults(run=run_parse)
    parser.set_defaults(run=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def message_to_json(message: Request | Response) -> dict[str, object]:
    """The parsed message as plain JSON values (stable keys)."""
    out: dict[str, object] = {"start_line": message.start_line}
    if isinstance(message, Request):
        out.update(kind="request", method=message.method, uri=message.uri_text)
        out["version"] = message.version
    else:
        out.update(kind="response", status=message.status, reason=message.reason)
        out["version"] = message.version
    out["headers"] = [
        {
            "name": h.name,
            "canonical_name": h.canonical_name,
            "value": h.value,
            "offset": h.offset,
        }
        for h in message.headers
    ]
    out["body_length"] = len(message.body)
    out["identity"] = list(message.identity_values)
    out["defects"] = [d.to_json() for d in message.defects]
    return out


def run_parse(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"stirscope sip parse: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        message = parse_message(data, strict=args.strict)
    except SipParseError as exc:
        print(f"stirscope sip parse: {args.file}: parse error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(message_to_json(message), indent=2, ensure_ascii=False))
        return 0
    print(message.start_line)
    width = max((len(h.canonical_name) for h in message.headers), default=0)
    for header in message.headers:
        print(f"  {header.canonical_name:<{width}}  {header.value}")
    print(f"body: {len(message.body)} bytes")
    if message.defects:
        print("defects:")
        for defect in message.defects:
            kind = "violation" if defect.violation else "note"
            where = f" @{defect.offset}" if defect.offset is not None else ""
            print(f"  {defect.code.value} ({kind}){where} {defect.detail}".rstrip())
    else:
        print("defects: none")
    return 0
