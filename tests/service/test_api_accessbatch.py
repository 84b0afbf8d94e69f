"""Access log lines batched per turn of the event loop (``service.config.LineBatchingHandler``,
``service.api.metrics``): the stream gets the bytes the unbatched path writes, in the same
order, with one write per turn; other records, flushes and shutdown write the batch first."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api import metrics
from service.api.metrics import ApiMetrics, Observer
from service.config import (
    LINE_BATCH_CHARS,
    JsonFormatter,
    LineBatchingHandler,
    LogFormat,
    logging_config,
)

NOW = 1_768_478_400.987654
Request = tuple[str, str, int, float]


class CountingStream(io.StringIO):
    """A text stream that counts its writes and flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@contextmanager
def serve_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[LineBatchingHandler]:
    """serve's logging set-up (its handler writing to a counting stream), the clock fixed."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    logging.config.dictConfig(logging_config("info", LogFormat.JSON))
    try:
        logger = logging.getLogger("stirscope")
        del logger.handlers[1:]  # pytest's log capture handlers are not serve's set-up
        found = logger.handlers[0]
        assert type(found) is LineBatchingHandler
        found.setStream(CountingStream())
        assert metrics._plain_json_handler() is found
        yield found
    finally:
        logging.config.dictConfig(logging_config("warning", LogFormat.JSON))


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[LineBatchingHandler]:
    with serve_logging(monkeypatch) as found:
        yield found


def _stream(handler: LineBatchingHandler) -> CountingStream:
    stream = handler.stream
    assert isinstance(stream, CountingStream)
    return stream


def _answer_all(observer: Observer, requests: list[Request]) -> None:
    # pytest's log capture adds its handlers to the logger for each test phase: not serve's.
    del logging.getLogger("stirscope").handlers[1:]
    for request_id, path, status, elapsed in requests:
        observer.answered("POST", "/stir/v1/verification", path, request_id, status, elapsed)


def _unbatched(handler: LineBatchingHandler, observer: Observer, requests: list[Request]) -> str:
    """The lines the logging module writes for ``requests`` (the slow path: a filter)."""
    stream = _stream(handler)
    stream.seek(0)
    stream.truncate()
    handler.addFilter(lambda record: True)
    try:
        _answer_all(observer, requests)
    finally:
        handler.filters.clear()
    return stream.getvalue()


async def _one_turn(observer: Observer, requests: list[Request], stream: CountingStream) -> str:
    """Answer ``requests`` in one turn of the loop: nothing is written before it ends."""
    _answer_all(observer, requests)
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    return stream.getvalue()


def _batched(handler: LineBatchingHandler, observer: Observer, requests: list[Request]) -> str:
    stream = _stream(handler)
    stream.seek(0)
    stream.truncate()
    stream.writes = 0
    text = asyncio.run(_one_turn(observer, requests, stream))
    assert stream.writes == (1 if requests else 0)
    return text


REQUESTS: list[Request] = [
    ("abc", "/stir/v1/verification", 200, 0.0012345),
    ('caf\u00e9 "q" \\ \u2028', "/a b/\u00e9", 503, 12.5),
    ("x" * 128, "", 400, 0.0),
]


def test_one_write_per_turn_same_bytes(handler: LineBatchingHandler) -> None:
    observer = Observer(ApiMetrics(), access=True)
    expected = _unbatched(handler, observer, REQUESTS)
    assert expected.count("\n") == len(REQUESTS)
    assert _batched(handler, observer, REQUESTS) == expected


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=40),
            st.text(max_size=40),
            st.integers(100, 599),
            st.floats(0, 100, allow_nan=False),
        ),
        max_size=8,
    )
)
def test_batched_lines_are_the_logging_lines(requests: list[Request]) -> None:
    with pytest.MonkeyPatch.context() as patch, serve_logging(patch) as found:
        observer = Observer(ApiMetrics(), access=True)
        expected = _unbatched(found, observer, requests)
        assert _batched(found, observer, requests) == expected


def test_off_the_loop_lines_are_written_at_once(handler: LineBatchingHandler) -> None:
    observer = Observer(ApiMetrics(), access=True)
    stream = _stream(handler)
    _answer_all(observer, REQUESTS[:1])
    assert stream.getvalue().count("\n") == 1
    assert stream.writes == 1


def test_other_records_and_flush_keep_the_order(handler: LineBatchingHandler) -> None:
    observer = Observer(ApiMetrics(), access=True)
    stream = _stream(handler)

    async def run() -> list[str]:
        _answer_all(observer, REQUESTS[:2])
        logging.getLogger("stirscope.api").warning("between")
        _answer_all(observer, REQUESTS[2:])
        handler.flush()
        first = stream.getvalue()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert stream.getvalue() == first
        return first.split("\n")[:-1]

    lines = asyncio.run(run())
    assert len(lines) == 4
    assert '"between"' in lines[2]
    assert [line.count('"request"') for line in lines] == [1, 1, 0, 1]


def test_a_large_batch_is_written_before_the_turn_ends(handler: LineBatchingHandler) -> None:
    observer = Observer(ApiMetrics(), access=True)
    stream = _stream(handler)
    request_id = "r" * 100
    many = -(-LINE_BATCH_CHARS // 200) + 1  # lines are over 200 characters

    async def run() -> tuple[int, int]:
        _answer_all(observer, [(request_id, "/p", 200, 0.001)] * many)
        during = stream.getvalue().count("\n")
        await asyncio.sleep(0)
        return during, stream.getvalue().count("\n")

    during, after = asyncio.run(run())
    assert 0 < during < many
    assert after == many


def test_shutdown_and_set_stream_write_the_batch(handler: LineBatchingHandler) -> None:
    observer = Observer(ApiMetrics(), access=True)
    first = _stream(handler)

    async def run() -> None:
        _answer_all(observer, REQUESTS[:1])
        handler.setStream(CountingStream())  # flushes to the old stream first
        assert first.getvalue().count("\n") == 1
        _answer_all(observer, REQUESTS[1:2])
        logging.shutdown([weakref.ref(handler)])  # as at exit

    asyncio.run(run())
    assert _stream(handler).getvalue().count("\n") == 1


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("gone")


def test_a_failed_write_is_reported_not_raised(
    handler: LineBatchingHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    observer = Observer(ApiMetrics(), access=True)
    handler.setStream(BrokenStream())
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)

    async def run() -> None:
        _answer_all(observer, REQUESTS)
        await asyncio.sleep(0)

    asyncio.run(run())
    assert len(reported) == 1
    assert reported[0].getMessage() == f"{len(REQUESTS)} batched lines"


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.floats(0, 253_402_300_799.9, allow_nan=False),
        st.integers(0, 4_102_444_800_000).map(lambda ms: ms / 1000),
        st.integers(0, 4_102_444_800_000_000).map(lambda us: us / 1_000_000),
    )
)
def test_log_time_is_the_isoformat_text(created: float) -> None:
    formatter = JsonFormatter()
    want = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert formatter.iso_time(created) == want
    assert formatter.iso_time(created) == want  # from the cache
    assert json.dumps(want) == f'"{want}"'  # written as it is (metrics._access_text)


def test_rendered_lines_are_made_when_the_batch_is_written(handler: LineBatchingHandler) -> None:
    """``write_soon_rendered``: the line is made when its batch is written, in its place among
    the lines given made; a render that fails is reported as a failed write of the batch."""
    stream = _stream(handler)
    made: list[str] = []

    def render(text: str) -> str:
        made.append(text)
        return text

    async def run() -> None:
        assert handler.write_soon("first\n")
        assert handler.write_soon_rendered(render, ("second",), 6)
        assert handler.write_soon("third\n")
        assert made == []  # not yet
        await asyncio.sleep(0)

    asyncio.run(run())
    assert made == ["second"]
    assert stream.getvalue() == "first\nsecond\nthird\n"
    assert stream.writes == 1
    assert not handler.write_soon_rendered(render, ("x",), 1)  # no loop: not taken

    reported: list[logging.LogRecord] = []
    handler.handleError = reported.append  # type: ignore[method-assign,assignment]

    def broken() -> str:
        raise ValueError("no line")

    async def failing() -> None:
        assert handler.write_soon("kept?\n")
        assert handler.write_soon_rendered(broken, (), 10)
        await asyncio.sleep(0)

    asyncio.run(failing())
    assert [record.getMessage() for record in reported] == ["2 batched lines"]
    assert stream.getvalue() == "first\nsecond\nthird\n"
