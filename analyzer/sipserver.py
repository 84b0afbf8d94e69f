"""The SIP verification server's decisions, sans-IO: request bytes in, response bytes out.

Theory of operation. ``SipServerCore.receive(data, at=...)`` parses one message and returns a
`Decision`: a response to send now (OPTIONS, errors, a cached answer), a `VerificationJob` to
run through a verifier (INVITE), or nothing (ACK, unanswerable input, counted by reason). The
caller runs the job wherever it likes (the asyncio server on its loop when the certificate is
cached, else in a thread pool; tests call the verifier inline) and hands the result to
``complete``, which builds the answer (a caller with no room for a verification passes
``shed=True`` and a new INVITE is answered 503 straight away, ``Action.SHED``, read from its
bytes without the parse when their head is plain, `_shed_plain`):

* default policy: ``302 Moved Temporarily`` with a Contact carrying the original Request-URI,
  the P-Asserted-Identity values with ``verstat`` added (3GPP TS 24.229 section 7.2A.20), the
  same PAI and From values with ``verstat`` as URI headers of that Contact (RFC 3261 section
  19.1.5: the redirected request takes them), and one ``Reason: STIR`` header per failed
  PASSporT (RFC 9410 sections 4-6);
* ``reject=True``: a failed verification is answered with its RFC 8224 status code instead
  (403/428/436/437/438, RFC 8224 section 6.2.2).

Server transactions (RFC 3261 section 17.2.3) are keyed on the top Via branch, its sent-by
and the method (CANCEL is matched to the INVITE; an ACK, which never gets a response, is
absorbed from its request line without a parse); the final answer is kept for 64*T1
so a retransmission gets the same bytes without a second verification. The table is bounded
and expires entries in the injected time (``at``), never the clock; its entries are plain
tuples, which the cyclic garbage collector does not walk (``_Transaction``). Not thread-safe:
one owner (the event loop) calls it; only ``Verifier.verify`` runs elsewhere.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from analyzer.extract import request_from_message
from analyzer.sipanswer import (
    SERVER_HEADER,
    VerificationRecord,
    encode_response,
    phrase_of,
    record_of,
    stir_reasons,
    uri_header,
    with_verstat,
    without_tag,
)
from shaken.result import VerificationResult, Verstat
from shaken.verifier import VerificationRequest
from sip import Request, Response, SipParseError, parse_message
from sip.build import (
    ResponseFields,
    fields_response_bytes,
    plain_head,
    plain_tag,
    plain_top_via,
    plain_via,
    response_fields,
    to_is_tagged,
    to_tag_of,
)
from sip.defects import SipReason
from sip.fields import cseq_parts
from sip.limits import MAX_MESSAGE_BYTES

# RFC 3261 section 17.1.1.1: T1 = 500 ms; an INVITE server transaction that sent a non-2xx
# final answer waits 64*T1 for the ACK (Timer H), a non-INVITE one absorbs retransmissions for
# 64*T1 (Timer J). Both bound how long a retransmission can still arrive.
TRANSACTION_TTL_S = 64 * 0.5
# Transactions remembered at once. Sized for ~2,000 calls/s over the 32 s window; at ~1 kB per
# stored answer that is at most ~64 MB. Beyond it the oldest are evicted (counted).
MAX_TRANSACTIONS = 65_536
# x5u URLs remembered as "seen" (a certificate cache behind them is warm): a cold one makes
# the server send 100 Trying first (RFC 3261 section 17.2.1). 253 hosts served all US SHAKEN
# certificates over three years (martinisecurity reports); a few thousand URLs is ample.
MAX_KNOWN_X5U = 4_096
# RFC 3261 section 20.33: Retry-After in seconds on a 503 when shedding load. A few seconds
# lets a short burst drain before the SBC retries this server.
DEFAULT_RETRY_AFTER_S = 5
# Identities decorated with verstat, remembered: callers and trunks repeat (the same PAI on
# every call of a trunk), and decorating is a URI parse and rebuild. A plain dict cleared when
# full keeps it bounded without LRU bookkeeping on the hot path.
MAX_VERSTAT_MEMO = 4_096
# RFC 3261 section 16.6 step 8 / section 20.42: the magic cookie of RFC 3261 branches.
MAGIC_COOKIE = "z9hG4bK"
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "OPTIONS")
# Methods this server recognises but does not allow (RFC 3261 section 8.2.1: 405 with Allow);
# anything else is unknown and gets 501 (RFC 3261 section 21.5.2). RFC 3261, 3262 (PRACK),
# 3311 (UPDATE), 3428 (MESSAGE), 3515 (REFER), 3903 (PUBLISH), 6086 (INFO), 6665.
KNOWN_METHODS = frozenset(
    {
        "REGISTER",
        "BYE",
        "PRACK",
        "UPDATE",
        "INFO",
        "MESSAGE",
        "REFER",
        "PUBLISH",
        "SUBSCRIBE",
        "NOTIFY",
    }
)
# Truncation and Content-Length problems that make a request a 400 (RFC 3261 section 18.3:
# a datagram that ends before its body, or before the blank line ending its headers).
_TRUNCATION_DEFECTS = frozenset(
    {
        SipReason.MISSING_HEADER_TERMINATOR,
        SipReason.CONTENT_LENGTH_EXCEEDS_DATA,
        SipReason.INVALID_CONTENT_LENGTH,
        SipReason.CONFLICTING_CONTENT_LENGTH,
    }
)
# An ACK is absorbed from its request line alone (see ``receive``): the method as the first
# token, the version as the last; the line is searched for within the longest request line a
# parse would accept anyway.
_ACK_PREFIX = b"ACK "
_ACK_VERSION = b" SIP/2.0"
_MAX_ACK_LINE = 8 * 1024
# A new INVITE the caller has no room for is answered 503 from its bytes when their head is
# plain (`_shed_plain`): under overload a 503 must cost a fraction of a verification.
_INVITE_PREFIX = b"INVITE "
# What a CRLF keep-alive datagram is made of (RFC 5626 section 3.5.1 style), and its bytes.
_BLANK = b"\r\n\t \x00"
_BLANK_BYTES = frozenset(_BLANK)
_INFO_URL = re.compile(r";\s*info\s*=\s*<([^>]*)>", re.IGNORECASE)
_URI_SCHEMES = frozenset({"sip", "sips", "tel"})
# A Request-URI opening with one of those schemes: ``Request.uri`` can only give that scheme
# (its parse reads the scheme up to the first colon), so the URI need not be parsed for the
# check of RFC 3261 section 8.2.2.1.
_URI_SCHEME_PREFIX = re.compile(r"(?:sips?|tel):", re.IGNORECASE)


class Action(StrEnum):
    """What the server does with one received message."""

    REPLY = "reply"  # send ``response`` (built now)
    VERIFY = "verify"  # verify ``job``, then ``complete``; send ``response`` (100) first if set
    RETRANSMIT = "retransmit"  # resend ``response`` (the stored answer); None: still pending
    ABSORB = "absorb"  # an ACK: nothing to send
    SHED = "shed"  # an INVITE the caller has no room for: send ``response`` (503, stored)
    DROP = "drop"  # not answerable: nothing to send, ``drop`` says why


class DropReason(StrEnum):
    """Why a message got no response (each one is counted, never silent)."""

    UNPARSEABLE = "unparseable"  # not a SIP message at all
    TOO_LARGE = "too_large"  # over the size limit and no header block to answer from
    UNANSWERABLE = "unanswerable"  # without the Via/CSeq a response needs, or a bare CR in them
    STRAY_RESPONSE = "stray_response"  # a response: this server never sends requests
    KEEPALIVE = "keepalive"  # CRLF keep-alive datagram (RFC 5626 section 3.5.1 style)


@dataclass(frozen=True, slots=True)
class VerificationJob:
    """An INVITE waiting for the verifier: the parsed request and the verification time (the
    arrival time). ``verification_request()`` extracts what the verifier needs, where the
    verifier runs. RFC 8224 section 6.2."""

    key: tuple[str, str, str]
    request: Request
    at: datetime
    x5u: tuple[str, ...]
    cold: bool  # some x5u not seen before: a certificate fetch may follow

    def verification_request(self) -> VerificationRequest:
        """The verifier's input: identities, parties and Date (RFC 8224 sections 6.2, 8)."""
        return request_from_message(self.request)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``receive``: what to send and what to do next."""

    action: Action
    response: bytes | None = None
    status: int | None = None
    method: str | None = None
    job: VerificationJob | None = None
    drop: DropReason | None = None


# Every ACK gets the same decision (a frozen value): one less object per call.
_ABSORBED_ACK = Decision(Action.ABSORB, method="ACK")


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to a verified INVITE, and what it answered (for the record of it)."""

    response: bytes
    status: int
    job: VerificationJob
    result: VerificationResult

    @property
    def record(self) -> VerificationRecord:
        """The JSONL record of this answer (built on demand: not every server writes one)."""
        return record_of(self.job.request, self.job.at, self.result, self.status)


# A server transaction as remembered: (expiry time, the last response sent or None, state).
# A plain tuple of numbers and bytes, replaced rather than changed: the cyclic garbage
# collector stops tracking such a tuple after its first look at it, so a table of tens of
# thousands of transactions (``MAX_TRANSACTIONS``) is not walked by each full collection. As
# objects of a class they were: at 4,500 INVITE/s a collection walked ~65,000 of them and
# held the loop for ~20 ms, long enough for the UDP backlog to pass the shedding threshold.
_Transaction = tuple[float, bytes | None, int]
# Its states: answer pending; pending and CANCELled (the answer will be 487); answered.
_PENDING = 0
_CANCELLED = 1
_FINAL = 2


@dataclass(slots=True)
class ServerStats:
    """Counters of everything the core decided (plain numbers; metrics mirror them)."""

    requests: Counter[str] = field(default_factory=Counter)  # by method
    responses: Counter[int] = field(default_factory=Counter)  # by status
    drops: Counter[str] = field(default_factory=Counter)  # by DropReason
    verstat: Counter[str] = field(default_factory=Counter)
    retransmissions: int = 0
    acks: int = 0
    evictions: int = 0


def _now(at: datetime) -> float:
    return at.timestamp()


class SipServerCore:
    """Decisions of the SIP verification server (sans-IO; see the module docstring).

    ``reject``: answer failed verifications with their RFC 8224 code instead of a 302.
    RFC 3261 sections 8.2, 17.2 and 21; RFC 8224 section 6.2.2; RFC 9410.
    """

    def __init__(
        self,
        *,
        reject: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        transaction_ttl_s: float = TRANSACTION_TTL_S,
        max_transactions: int = MAX_TRANSACTIONS,
        retry_after_s: int = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        if max_transactions < 1 or transaction_ttl_s <= 0 or max_message_bytes < 1:
            raise ValueError("limits must be positive")
        self.reject = reject
        self.max_message_bytes = max_message_bytes
        self.transaction_ttl_s = transaction_ttl_s
        self.max_transactions = max_transactions
        self.retry_after_s = retry_after_s
        self.stats = ServerStats()
        self._transactions: OrderedDict[tuple[str, str, str], _Transaction] = OrderedDict()
        self._known_x5u: OrderedDict[str, None] = OrderedDict()
        self._verstat_memo: dict[tuple[str, str, Verstat], tuple[str, str]] = {}

    # -- receiving -------------------------------------------------------------------------

    @property
    def transactions(self) -> int:
        """Transactions currently remembered (bounded by ``max_transactions``)."""
        return len(self._transactions)

    def receive(self, data: bytes, *, at: datetime, shed: bool = False) -> Decision:
        """Decide what to do with one datagram or framed stream message arriving at ``at``.
        ``shed``: the caller has no room for a verification now; a new INVITE is then
        answered 503 at once (``Action.SHED``) instead of becoming a job, which an overloaded
        server would only throw away.

        RFC 3261 sections 8.2, 17.2.3 and 18.3.
        """
        self._expire(_now(at))
        if len(data) > self.max_message_bytes:
            return self._too_large(data)
        if shed and data.startswith(_INVITE_PREFIX):
            decision = self._shed_plain(data, at)
            if decision is not None:
                return decision
        if data.startswith(_ACK_PREFIX) and self._is_ack_line(data):
            # An ACK never gets a response (RFC 3261 section 17.2.1: it confirms a non-2xx
            # answer, or matches nothing): parsing it would be work for nothing. It is every
            # other datagram a busy server receives.
            return self._absorb("ACK")
        if (not data or data[0] in _BLANK_BYTES) and not data.strip(_BLANK):
            # Only a datagram opening with a blank can be all blanks: the others are not
            # copied by ``strip`` to find out.
            return self._dropped(DropReason.KEEPALIVE)
        try:
            message = parse_message(data)
        except SipParseError:
            return self._dropped(DropReason.UNPARSEABLE)
        return self._message(message, at, shed)

    def _shed_plain(self, data: bytes, at: datetime) -> Decision | None:
        """The decision ``_request`` makes for a new INVITE with ``shed`` (503, stored) or a
        retransmitted one, read from the bytes without the parse when their head is plain
        (`plain_head`) and the request one the server answers 503 (or from its transaction):
        its top Via, From and To of the plain shapes, the branch an RFC 3261 one, To without a
        tag, CSeq method INVITE, a sip/sips/tel Request-URI, no Require. None for anything
        else, with nothing counted: then the request is parsed. The same bytes as the parse
        and ``_shed_response`` give (tested against them). RFC 3261 sections 8.2, 17.2.3 and
        21.5.4."""
        head = plain_head(data)
        if head is None or head.method != "INVITE" or head.require:
            return None
        fields = head.fields
        if _cseq_method(fields.cseq) != "INVITE" or not _URI_SCHEME_PREFIX.match(head.uri_text):
            return None
        top = plain_via(fields.via[0])
        if top is None:
            return None
        branch, sent_by = top
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            return None
        to, from_ = fields.to, fields.from_
        if to is None or from_ is None:  # never: `plain_head` found one of each
            return None
        to_plain, to_tag = plain_tag(to)
        from_plain, from_tag = plain_tag(from_)
        if not (to_plain and from_plain) or to_tag is not None:
            return None
        stats = self.stats
        stats.requests["INVITE"] += 1
        key = (branch, sent_by.lower(), "INVITE")
        known = self._transactions.get(key)
        if known is not None:
            stats.retransmissions += 1
            return Decision(Action.RETRANSMIT, known[1], None, "INVITE")
        stats.responses[503] += 1
        tagged = f"{to};tag={to_tag_of(fields.call_id, from_tag, branch)}"
        extra = [("Retry-After", str(self.retry_after_s)), ("Server", SERVER_HEADER)]
        response = fields_response_bytes(fields, tagged, 503, "Service Unavailable", extra)
        return self._remember(key, at, Decision(Action.SHED, response, 503, "INVITE"))

    def receive_message(
        self, message: Request | Response, *, at: datetime, shed: bool = False
    ) -> Decision:
        """``receive`` for a message already parsed (a TCP framer's output).

        RFC 3261 sections 8.2 and 17.2.3.
        """
        self._expire(_now(at))
        return self._message(message, at, shed)

    @staticmethod
    def _is_ack_line(data: bytes) -> bool:
        """Whether ``data`` opens with an ACK request line (``ACK <uri> SIP/2.0``)."""
        end = data.find(b"\n", 0, _MAX_ACK_LINE)
        return end > 0 and data[:end].rstrip().endswith(_ACK_VERSION)

    def _absorb(self, method: str) -> Decision:
        self.stats.requests[method] += 1
        self.stats.acks += 1
        return _ABSORBED_ACK

    def _message(self, message: Request | Response, at: datetime, shed: bool) -> Decision:
        if isinstance(message, Response):
            return self._dropped(DropReason.STRAY_RESPONSE)
        return self._request(message, at, shed)

    def _dropped(self, reason: DropReason, method: str | None = None) -> Decision:
        self.stats.drops[reason.value] += 1
        return Decision(Action.DROP, method=method, drop=reason)

    def _reply(
        self, request: Request, status: int, phrase: str, extra: Sequence[tuple[str, str]] = ()
    ) -> Decision:
        data = self._build(request, status, phrase, extra)
        return Decision(Action.REPLY, data, status, request.method)

    def _build(
        self, request: Request, status: int, phrase: str, extra: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        self.stats.responses[status] += 1
        return encode_response(request, status, phrase, [*extra, ("Server", SERVER_HEADER)])

    def _too_large(self, data: bytes) -> Decision:
        """Over the limit: 513 when the header block is within it (RFC 3261 section 21.5.13)."""
        end = data.find(b"\r\n\r\n", 0, self.max_message_bytes)
        if end < 0:
            return self._dropped(DropReason.TOO_LARGE)
        try:
            message = parse_message(data[: end + 4])
        except SipParseError:
            return self._dropped(DropReason.TOO_LARGE)
        if not isinstance(message, Request) or not self._answerable(
            message, _cseq_method(response_fields(message).cseq)
        ):
            return self._dropped(DropReason.TOO_LARGE)
        if message.method == "ACK":
            return self._absorb("ACK")
        self.stats.requests[message.method] += 1
        return self._reply(message, 513, "Message Too Large")

    @staticmethod
    def _answerable(request: Request, cseq_method: str | None) -> bool:
        """A response needs the top Via (to be routed and matched) and CSeq (RFC 3261 8.2.6);
        ``cseq_method`` is `_cseq_method` of its CSeq. A plain top Via is known to parse
        without parsing it (`plain_top_via`). And no header line may hold a line break of its
        own: the parse keeps a bare CR inside the value, and a response copies From, To and
        the others (the 302 the P-Asserted-Identity too), so it could not be written without
        splitting a header (RFC 3261 section 7.3.1: CRLF ends a line)."""
        has_via = plain_top_via(request) is not None or bool(request.via)
        if not has_via or cseq_method is None:
            return False
        raw = request.raw
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            end = len(raw)
        return raw.count(b"\r", 0, end) == raw.count(b"\r\n", 0, end)

    @staticmethod
    def _key(request: Request, method: str) -> tuple[str, str, str]:
        """Server transaction key (RFC 3261 section 17.2.3); for branches without the magic
        cookie (RFC 2543 clients) the Call-ID, From tag and CSeq number stand in."""
        top = plain_top_via(request)
        if top is not None:
            found, sent_by = top
        else:
            via = request.via[0]
            found, sent_by = via.branch, via.sent_by
        branch = found or ""
        if not branch.startswith(MAGIC_COOKIE):
            from_tag = request.from_.tag if request.from_ else ""
            seq = request.cseq.number if request.cseq else 0
            branch = f"2543|{request.call_id}|{from_tag}|{seq}|{branch}"
        return (branch, sent_by.lower(), method)

    def _request(self, request: Request, at: datetime, shed: bool = False) -> Decision:
        method = request.method
        self.stats.requests[method] += 1
        fields = response_fields(request)
        cseq = _cseq_method(fields.cseq)
        if not self._answerable(request, cseq):
            return self._dropped(DropReason.UNANSWERABLE, method)
        if method == "ACK":
            # Absorbed: it confirms our non-2xx answer (RFC 3261 section 17.2.1) or matches
            # nothing at all; an ACK never gets a response.
            self.stats.acks += 1
            return _ABSORBED_ACK
        key = self._key(request, method)
        known = self._transactions.get(key)
        if known is not None:
            self.stats.retransmissions += 1
            return Decision(Action.RETRANSMIT, known[1], None, method)
        bad = self._malformed(request, fields, cseq)
        if bad is not None:
            return self._remember(key, at, self._reply(request, *bad))
        if method == "CANCEL":
            return self._remember(key, at, self._cancel(request))
        if to_is_tagged(request):
            # An in-dialog request: this server never creates dialogs (RFC 3261 section 12.2.2).
            return self._remember(
                key, at, self._reply(request, 481, "Call/Transaction Does Not Exist")
            )
        unsupported = self._unsupported_extensions(request)
        if unsupported:
            return self._remember(
                key, at, self._reply(request, 420, "Bad Extension", [("Unsupported", unsupported)])
            )
        if method == "OPTIONS":
            return self._remember(key, at, self._reply(request, 200, "OK", self._capabilities()))
        if method == "INVITE":
            if shed:
                data = self._shed_response(request)
                return self._remember(key, at, Decision(Action.SHED, data, 503, method))
            return self._invite(request, key, at)
        if method in KNOWN_METHODS:
            allow = [("Allow", ", ".join(ALLOWED_METHODS))]
            return self._remember(key, at, self._reply(request, 405, "Method Not Allowed", allow))
        return self._remember(key, at, self._reply(request, 501, "Not Implemented"))

    def _malformed(
        self, request: Request, fields: ResponseFields, cseq: str | None
    ) -> tuple[int, str] | None:
        """A status for a request that parsed but cannot be served (RFC 3261 section 8.2);
        ``fields`` are `response_fields` of ``request``, ``cseq`` is `_cseq_method` of them."""
        for defect in request.parse_defects:
            if defect.code is SipReason.UNSUPPORTED_VERSION:
                return 505, "Version Not Supported"  # section 21.5.7
            if defect.code in _TRUNCATION_DEFECTS:
                return 400, "Bad Request"  # section 18.3: truncated or bad Content-Length
        # The headers a response cannot do without (Max-Forwards is tolerated: it only
        # matters to proxies): Via, From, To, Call-ID and CSeq.
        if not fields.complete:
            return 400, "Bad Request"  # section 8.1.1
        if cseq is None or cseq != request.method:
            return 400, "Bad Request"  # section 8.2.6 / 20.16: CSeq method must match
        if request.method not in ("ACK", "CANCEL") and not _URI_SCHEME_PREFIX.match(
            request.uri_text
        ):
            uri = request.uri
            if uri is None or uri.scheme not in _URI_SCHEMES:
                return 416, "Unsupported URI Scheme"  # section 8.2.2.1
        return None

    @staticmethod
    def _unsupported_extensions(request: Request) -> str:
        """Option tags in Require: this server supports none (RFC 3261 section 8.2.2.3)."""
        headers = request.headers
        if "require" not in headers:  # the common case, without splitting every header
            return ""
        tags = [v.strip() for v in headers.values("require") if v.strip()]
        return ", ".join(tags)

    @staticmethod
    def _capabilities() -> list[tuple[str, str]]:
        """What OPTIONS answers (RFC 3261 section 11.2)."""
        return [("Allow", ", ".join(ALLOWED_METHODS)), ("Accept", "application/sdp")]

    def _cancel(self, request: Request) -> Decision:
        """CANCEL: 200 when the INVITE transaction exists (a pending one then ends with 487),
        481 otherwise. RFC 3261 section 9.2."""
        key = self._key(request, "INVITE")
        invite = self._transactions.get(key)
        if invite is None:
            return self._reply(request, 481, "Call/Transaction Does Not Exist")
        expires, response, state = invite
        if state != _FINAL:
            self._transactions[key] = (expires, response, _CANCELLED)  # keeps its place
        return self._reply(request, 200, "OK")

    def _remember(self, key: tuple[str, str, str], at: datetime, decision: Decision) -> Decision:
        self._store(key, (_now(at) + self.transaction_ttl_s, decision.response, _FINAL))
        return decision

    def _store(self, key: tuple[str, str, str], entry: _Transaction) -> None:
        self._transactions[key] = entry
        self._transactions.move_to_end(key)
        while len(self._transactions) > self.max_transactions:
            self._transactions.popitem(last=False)
            self.stats.evictions += 1

    def _expire(self, now: float) -> None:
        # Entries are stored in arrival order with the same TTL, so the oldest expire first.
        table = self._transactions
        while table:
            key, entry = next(iter(table.items()))
            if entry[0] > now:
                break
            del table[key]

    # -- INVITE ----------------------------------------------------------------------------

    def _invite(self, request: Request, key: tuple[str, str, str], at: datetime) -> Decision:
        x5u = tuple(dict.fromkeys(_info_urls(request)))
        known = self._known_x5u
        cold = False
        for url in x5u:  # a loop, not ``any`` over a generator: there is mostly one
            if url not in known:
                cold = True
                break
        job = VerificationJob(key, request, at, x5u, cold)
        trying = None
        if cold:
            # A certificate fetch may follow: tell the client the request is being worked on
            # (RFC 3261 section 17.2.1) so it stops retransmitting.
            trying = self._build(request, 100, "Trying")
        self._store(key, (_now(at) + self.transaction_ttl_s, trying, _PENDING))
        return Decision(Action.VERIFY, trying, 100 if trying else None, "INVITE", job)

    def trying(self, job: VerificationJob) -> bytes | None:
        """A 100 Trying for a job still pending with nothing sent yet (the caller's timer:
        RFC 3261 section 17.2.1 asks for it when the answer takes over 200 ms), else None."""
        entry = self._transactions.get(job.key)
        if entry is None or entry[2] == _FINAL or entry[1] is not None:
            return None
        trying = self._build(job.request, 100, "Trying")
        self._transactions[job.key] = (entry[0], trying, entry[2])  # keeps its place
        return trying

    def complete(self, job: VerificationJob, result: VerificationResult) -> Completion:
        """The final answer to a verified INVITE (stored for retransmissions) and its record.

        RFC 8224 section 6.2.2, RFC 9410, 3GPP TS 24.229 section 7.2A.20.
        """
        for url in job.x5u:
            self._known_x5u[url] = None
            self._known_x5u.move_to_end(url)
        while len(self._known_x5u) > MAX_KNOWN_X5U:
            self._known_x5u.popitem(last=False)
        self.stats.verstat[result.verstat.value] += 1
        entry = self._transactions.get(job.key)
        if entry is not None and entry[2] == _CANCELLED:
            status, data = 487, self._build(job.request, 487, "Request Terminated")
        else:
            status, data = self._answer(job.request, result)
        self._finish(job, data, entry)
        return Completion(data, status, job, result)

    def shed(self, job: VerificationJob) -> bytes:
        """503 with Retry-After for a job the server has no room for (RFC 3261 section 21.5.4
        and 20.33); stored, so retransmissions get the same answer without verifying."""
        data = self._shed_response(job.request)
        self._finish(job, data, self._transactions.get(job.key))
        return data

    def _shed_response(self, request: Request) -> bytes:
        return self._build(
            request, 503, "Service Unavailable", [("Retry-After", str(self.retry_after_s))]
        )

    def fail(self, job: VerificationJob) -> bytes:
        """500 when the verifier itself broke (a bug, never a verdict; RFC 3261 21.5.1)."""
        data = self._build(job.request, 500, "Server Internal Error")
        self._finish(job, data, self._transactions.get(job.key))
        return data

    def _finish(self, job: VerificationJob, data: bytes, entry: _Transaction | None) -> None:
        """Store the final answer in the job's transaction (``entry``, as just looked up)."""
        if entry is None:  # evicted while pending: remember the answer again
            self._store(job.key, (_now(job.at) + self.transaction_ttl_s, data, _FINAL))
        else:
            self._transactions[job.key] = (entry[0], data, _FINAL)  # keeps its place

    def _answer(self, request: Request, result: VerificationResult) -> tuple[int, bytes]:
        reasons = stir_reasons(result)
        code = result.status_code
        if self.reject and code is not None and not result.passed:
            text = result.reason_phrase or phrase_of(code)
            return code, self._build(request, code, text, reasons)
        verstat = result.verstat
        headers = request.headers
        pai = [
            self._decorate("P-Asserted-Identity", value, verstat)
            for value in headers.values("p-asserted-identity")
        ]
        redirected = [escaped for _, escaped in pai]
        from_value = response_fields(request).from_
        if from_value is not None:
            redirected.append(self._decorate("From", without_tag(from_value), verstat)[1])
        target = request.uri_text.strip().strip("<>")
        if redirected and "?" not in target:
            target = f"{target}?{'&'.join(redirected)}"
        answer = [("Contact", f"<{target}>")]
        answer.extend(("P-Asserted-Identity", value) for value, _ in pai)
        answer.extend(reasons)
        return 302, self._build(request, 302, "Moved Temporarily", answer)

    def _decorate(self, name: str, value: str, verstat: Verstat) -> tuple[str, str]:
        """``value`` with ``verstat`` (`with_verstat`) and as the URI header ``name=...`` of a
        Contact (`uri_header`), remembered (bounded; cleared when full)."""
        key = (name, value, verstat)
        found = self._verstat_memo.get(key)
        if found is None:
            decorated = with_verstat(value, verstat)
            found = (decorated, uri_header(name, decorated))
            if len(self._verstat_memo) >= MAX_VERSTAT_MEMO:
                self._verstat_memo.clear()
            self._verstat_memo[key] = found
        return found


def _cseq_method(value: str | None) -> str | None:
    """``request.cseq.method`` for ``value``, the request's first CSeq (`response_fields`),
    None where ``request.cseq`` is None, without building the `CSeq` (the server needs only
    the method; ``cseq_parts`` is the grammar ``parse_cseq_checked`` reads). RFC 3261
    section 20.16."""
    parts = None if value is None else cseq_parts(value)
    return None if parts is None else parts[1]


def _info_urls(request: Request) -> list[str]:
    """The ``info`` URLs of every Identity value, in order (RFC 8224 section 4.1). A match
    opens with ``;``, so each value is searched from its first one on: the regex no longer
    tries every character of the PASSporT before it (some 400)."""
    urls: list[str] = []
    for header in request.identity_headers:
        value = header.value
        start = value.find(";")
        if start >= 0:
            urls += [url.strip() for url in _INFO_URL.findall(value, start)]
    return urls


def verify_inline(
    core: SipServerCore,
    data: bytes,
    *,
    at: datetime,
    verify: Callable[[VerificationRequest, datetime], VerificationResult],
) -> tuple[Decision, Completion | None]:
    """``receive`` and, for an INVITE, verify on the spot and ``complete`` (tests, benches).

    RFC 3261 section 8.2.
    """
    decision = core.receive(data, at=at)
    if decision.action is Action.VERIFY and decision.job is not None:
        job = decision.job
        return decision, core.complete(job, verify(job.verification_request(), job.at))
    return decision, None
