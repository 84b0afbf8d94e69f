"""``stirscope cert inspect FILE... [--json]``: what a STIR certificate says, defects included.

Exit codes: 0 every file read and every certificate parsed; 1 some certificate could not be
parsed; 2 a file is missing or unreadable. ``--json`` prints JSON Lines, one object per
certificate (with ``file`` and ``index``); a certificate that cannot be loaded becomes an
object with an ``error`` instead of crashing the command.

RFC 8226 section 9; STANDARDS.md section 7.2 and section 9.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shaken.certs import StirCertificate, parse_certificates

EXIT_OK = 0
EXIT_PARSE_ERROR = 1
EXIT_UNREADABLE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cert", help="inspect STIR/SHAKEN certificates")
    cert_sub = parser.add_subparsers(dest="cert_command", metavar="ACTION")
    inspect = cert_sub.add_parser(
        "inspect", help="print subject, SPC, TNAuthList, key, CRL URLs and profile findings"
    )
    inspect.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PEM bundle or DER")
    inspect.add_argument("--json", action="store_true", help="JSON Lines, one per certificate")
    inspect.set_defaults(run=run_inspect)
    parser.set_defaults(run=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_UNREADABLE


def _text_record(cert: StirCertificate) -> list[str]:
    tnal = cert.tn_auth_list
    lines = [
        f"  subject:     {cert.subject}",
        f"  issuer:      {cert.issuer}",
        f"  serial:      {cert.serial}",
        f"  validity:    {cert.not_before.isoformat()} .. {cert.not_after.isoformat()}",
        f"  spc:         {cert.spc or '-'}",
    ]
    if tnal is None:
        lines.append("  tnauthlist:  " + (cert.tnauthlist_error or "absent"))
    else:
        ranges = ", ".join(f"{r.start}+{r.count}" for r in tnal.ranges) or "-"
        lines.append(
            f"  tnauthlist:  spcs={','.join(tnal.spcs) or '-'} ranges={ranges} "
            f"tns={','.join(tnal.tns) or '-'} critical={cert.tnauthlist_critical}"
        )
        if tnal.other:
            lines.append(f"               other={', '.join(tnal.other)}")
    lines += [
        f"  key:         {cert.key_type}",
        f"  is_ca:       {cert.is_ca}",
        f"  crl_urls:    {', '.join(cert.crl_urls) or '-'}",
        f"  policies:    {', '.join(cert.policies) or '-'}",
        f"  sha256:      {cert.fingerprint_sha256}",
    ]
    if cert.profile_findings:
        lines.append("  profile findings:")
        lines += [f"    [{f.severity}] {f.code}: {f.detail}" for f in cert.profile_findings]
    else:
        lines.append("  profile findings: none")
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    """Inspect each file; see the module docstring for output and exit codes."""
    status = EXIT_OK
    for file in args.files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            print(f"stirscope cert: cannot read {file}: {exc.strerror}", file=sys.stderr)
            status = EXIT_UNREADABLE
            continue
        bundle = parse_certificates(data)
        if not bundle.entries:
            if status == EXIT_OK:
                status = EXIT_PARSE_ERROR
            record = {"file": str(file), "index": 0, "error": "; ".join(bundle.problems)}
            print(json.dumps(record) if args.json else f"{file}: {record['error']}")
            continue
        for problem in bundle.problems:
            if not args.json:
                print(f"{file}: note: {problem}")
        for entry in bundle.entries:
            if entry.cert is None:
                if status == EXIT_OK:
                    status = EXIT_PARSE_ERROR
                if args.json:
                    print(
                        json.dumps({"file": str(file), "index": entry.index, "error": entry.error})
                    )
                else:
                    print(f"{file} [{entry.index}]: ERROR {entry.error}")
                continue
            if args.json:
                print(json.dumps({"file": str(file), "index": entry.index, **entry.cert.to_json()}))
            else:
                print(f"{file} [{entry.index}]")
                print("\n".join(_text_record(entry.cert)))
    return status
