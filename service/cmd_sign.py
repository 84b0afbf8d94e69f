"""``stirscope sign``: act as an STI-AS and print a signed Identity header value.

Reads the private key file and (by default) the wall clock and a random origid: the I/O and
the clock live here, the signing core (``shaken.signing``) is pure. Exit codes: 0 printed,
2 bad key file or bad argument (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shaken.signing import div_payload, identity_header_value, shaken_payload, sign_passport

EXIT_OK = 0
EXIT_USAGE = 2
# A PEM private key is a few hundred bytes; refuse to slurp anything absurd.
MAX_KEY_FILE_BYTES = 64 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sign`` subcommand."""
    parser = subparsers.add_parser(
        "sign",
        help="sign a SHAKEN (or div) PASSporT and print the Identity header value",
        description=(
            "Sign a PASSporT with an EC P-256 private key (deterministic ECDSA, RFC 6979) and "
            'print the Identity header value <token>;info=<x5u>;alg=ES256;ppt="...".'
        ),
    )
    parser.add_argument("--key", required=True, type=Path, help="PEM private key (P-256)")
    parser.add_argument("--x5u", required=True, help="https URL of the signing certificate")
    parser.add_argument("--attest", choices=("A", "B", "C"), help="attestation (ppt shaken)")
    parser.add_argument("--orig", required=True, help="calling TN, canonical (digits only)")
    parser.add_argument(
        "--dest", required=True, action="append", help="called TN (repeat for several)"
    )
    parser.add_argument("--origid", help="origination identifier (default: random UUID4)")
    parser.add_argument("--iat", type=int, help="NumericDate (default: now)")
    parser.add_argument("--ppt", choices=("shaken", "div"), default="shaken")
    parser.add_argument("--div", help="diverting TN (previous destination) for --ppt div")
    parser.add_argument(
        "--json", action="store_true", help="print token, header value and claims as JSON"
    )
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"stirscope sign: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"key file {path} is too large to be a PEM key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path} is not an EC P-256 key (ES256 requires P-256)")
    return key


def run(args: argparse.Namespace) -> int:
    """Build, sign and print. RFC 8224 section 6.1 (authentication service)."""
    try:
        key = _load_key(args.key)
    except ValueError as exc:
        return _fail(str(exc))
    iat = args.iat if args.iat is not None else int(time.time())
    try:
        if args.ppt == "shaken":
            if args.attest is None:
                return _fail("--attest A|B|C is required for --ppt shaken")
            if args.div is not None:
                return _fail("--div is only valid with --ppt div")
            origid = args.origid if args.origid is not None else str(uuid.uuid4())
            payload = shaken_payload(
                attest=args.attest, orig_tn=args.orig, dest_tns=args.dest, iat=iat, origid=origid
            )
        else:
            if args.div is None:
                return _fail("--ppt div needs --div TN (the previous destination)")
            payload = div_payload(orig_tn=args.orig, dest_tns=args.dest, div_tn=args.div, iat=iat)
        token = sign_passport(key, x5u=args.x5u, payload=payload, ppt=args.ppt)
        value = identity_header_value(token, x5u=args.x5u, ppt=args.ppt)
    except ValueError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"identity": value, "token": token, "claims": payload}, indent=2))
    else:
        print(value)
    return EXIT_OK
