"""The access log line written without a ``LogRecord`` (``service.api.metrics``) is the line the
logging module writes for the same request, and the logging module takes over whenever the
set-up is not ``serve``'s own (another format, a filter, another handler)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import time
from collections.abc import Iterator

import pytest

from service.api import metrics
from service.api.metrics import ApiMetrics, Observer
from service.config import JsonFormatter, LogFormat, logging_config

SCOPE = {"method": "POST", "path": "/stir/v1/verification", "headers": []}
NOW = 1_768_478_400.123456


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """serve's logging set-up, writing to a string; the clock fixed."""
    out = io.StringIO()
    monkeypatch.setattr(time, "time", lambda: NOW)
    _configure(LogFormat.JSON, out)
    yield out
    logging.config.dictConfig(logging_config("warning", LogFormat.JSON))


def _configure(log_format: LogFormat, out: io.StringIO) -> None:
    logging.config.dictConfig(logging_config("info", log_format))
    logger = logging.getLogger("stirscope")
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    # pytest's log capture adds its own handlers (not serve's set-up): the test's are dropped.
    del logger.handlers[1:]


def _line(observer: Observer, out: io.StringIO, request_id: str, status: int) -> str:
    out.seek(0)
    out.truncate()
    observer.finish(SCOPE, request_id, status, 0.0012345)
    return out.getvalue()


@pytest.mark.parametrize(
    ("request_id", "status"), [("abc", 200), ('caf\u00e9 "q" \\', 400), ("x" * 128, 503)]
)
def test_direct_line_is_the_logging_line(stream: io.StringIO, request_id: str, status: int) -> None:
    _configure(LogFormat.JSON, stream)
    observer = Observer(ApiMetrics(), access=True)
    handler = metrics._plain_json_handler()
    assert handler is not None
    direct = _line(observer, stream, request_id, status)
    handler.addFilter(lambda record: True)  # not serve's set-up: the logging module writes
    assert metrics._plain_json_handler() is None
    logged = _line(observer, stream, request_id, status)
    handler.filters.clear()
    assert direct == logged
    entry = json.loads(direct)
    assert entry["request_id"] == request_id
    assert entry["status"] == status
    assert entry["duration_ms"] == 1.234 or entry["duration_ms"] == 1.235


def test_other_setups_take_the_logging_path(stream: io.StringIO) -> None:
    _configure(LogFormat.TEXT, stream)
    logger = logging.getLogger("stirscope")
    assert metrics._plain_json_handler() is None
    observer = Observer(ApiMetrics(), access=True)
    assert "request" in _line(observer, stream, "abc", 200)
    extra = logging.StreamHandler(io.StringIO())
    _configure(LogFormat.JSON, stream)
    assert metrics._plain_json_handler() is not None
    logger.addHandler(extra)
    try:
        assert metrics._plain_json_handler() is None
    finally:
        logging.getLogger("stirscope").removeHandler(extra)
    assert metrics._plain_json_handler() is not None


@pytest.mark.parametrize(
    ("request_id", "path", "status", "elapsed"),
    [
        ("abc", "/stir/v1/verification", 200, 0.0012345),
        ('caf\u00e9 "q" \\ \u2028', "/a b/\u00e9", 503, 12.5),
        ("x" * 128, "", 400, 0.0),
        ("id", "/stir/v1/verification", 200, 1e-9),
    ],
)
def test_spelled_out_line_is_the_formatter_line(
    stream: io.StringIO, request_id: str, path: str, status: int, elapsed: float
) -> None:
    _configure(LogFormat.JSON, stream)
    handler = metrics._plain_json_handler()
    assert handler is not None
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    duration = round(elapsed * 1000, 3)
    fields = {
        "request_id": request_id,
        "method": "POST",
        "path": path,
        "status": status,
        "duration_ms": duration,
    }
    expected = formatter.access_line(NOW, "stirscope.access", "request", fields)
    args = (formatter, NOW, request_id, "POST", path, status, duration)
    assert metrics._access_text(*args) == expected  # checked against the formatter
    assert metrics._checked.formatter is formatter
    assert metrics._checked.matches
    assert metrics._access_text(*args) == expected  # spelled out


def test_a_changed_format_is_followed(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    _configure(LogFormat.JSON, stream)
    handler = metrics._plain_json_handler()
    assert handler is not None
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    monkeypatch.setattr(formatter, "access_line", lambda *args: "another format")
    args = (formatter, NOW, "abc", "POST", "/p", 200, 1.5)
    assert metrics._access_text(*args) == "another format"
    assert metrics._checked.formatter is formatter
    assert not metrics._checked.matches
    assert metrics._access_text(*args) == "another format"
