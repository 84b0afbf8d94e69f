"""The evidence pcap writer (analyzer/pcapwriter.py), read back by analyzer.pcapfile."""

from __future__ import annotations

import io

import pytest

from analyzer.linklayer import LINKTYPE_ETHERNET, LINKTYPE_RAW
from analyzer.pcapfile import read_records
from analyzer.pcapwriter import PcapWriter

TS = 1_768_478_405_123_456_789  # 2026-01-15T12:00:05.123456789Z


@pytest.mark.parametrize(
    ("nanosecond", "linktype", "expected_ts"),
    [
        (True, LINKTYPE_ETHERNET, TS),
        (False, LINKTYPE_ETHERNET, TS - 789),
        (True, LINKTYPE_RAW, TS),
    ],
    ids=["ns-ethernet", "us-ethernet", "ns-raw"],
)
def test_round_trip(nanosecond: bool, linktype: int, expected_ts: int) -> None:
    out = io.BytesIO()
    writer = PcapWriter(out, linktype, nanosecond=nanosecond, snaplen=100)
    assert writer.write(TS, b"\x01" * 60) == 1
    assert writer.write(TS + 1000, b"\x02" * 150) == 2  # cut to the snap length
    records = list(read_records(io.BytesIO(out.getvalue())))
    assert records == [
        (1, expected_ts, linktype, b"\x01" * 60, 60),
        (2, expected_ts + 1000, linktype, b"\x02" * 100, 150),
    ]


def test_rejects_bad_snaplen() -> None:
    with pytest.raises(ValueError, match="snap length"):
        PcapWriter(io.BytesIO(), LINKTYPE_ETHERNET, snaplen=0)
