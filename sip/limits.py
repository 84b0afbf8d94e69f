"""Size limits of the SIP layer: every bound on input, with where the number comes from."""

from __future__ import annotations

# Largest message we accept, datagram or stream: the largest UDP payload (65,535 octets, the
# bound RFC 3261 section 18.1.1 works under for datagrams). INVITEs carrying several Identity
# headers are 2-6 kB (asterisk/asterisk#956 saw > 4,000 bytes of headers), far below this.
MAX_MESSAGE_BYTES = 65_535

# Longest single header line (after unfolding). RFC 3261 sets no limit; 1,024 is too small for
# real traffic (Twilio's X-Twilio-CallToken overflowed a 1,024-byte cap, livekit/sip#789), so we
# use the 8 KiB that common HTTP servers allow per header line (nginx large_client_header_buffers).
MAX_HEADER_LINE_BYTES = 8_192

# Longest request or status line; same 8 KiB reasoning as header lines (Request-URIs with long
# user parts and parameters, RFC 4475 section 3.1.1.6 "longreq").
MAX_START_LINE_BYTES = 8_192

# Most header fields in one message. RFC 3261 sets no limit; real INVITEs carry 15-40 and the
# RFC 4475 section 3.1.1.6 "longreq" torture message 44 (34 of them Via). Local policy.
MAX_HEADER_COUNT = 256

# CSeq sequence numbers MUST be less than 2**31 (RFC 3261 section 8.1.1.5).
MAX_CSEQ = 2**31 - 1

# Max-Forwards is an integer in the range 0-255 (RFC 3261 section 20.22).
MAX_MAX_FORWARDS = 255

# National special numbers (N11 service codes such as 911, European 112, vertical service codes
# such as *67) are short; numbers of at most this many digits are left as dialled by TN
# canonicalisation (RFC 8224 section 8.3; local policy for the exact length).
MAX_SPECIAL_NUMBER_DIGITS = 6

# A user part with at least this many digits is treated as a telephone number by local policy
# even without user=phone (RFC 8224 section 8.1 allows local policy; 7 = shortest North
# American local number).
MIN_POLICY_TN_DIGITS = 7
