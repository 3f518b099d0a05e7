"""SSE parsing: events split anywhere across reads, all line endings, comments."""
from __future__ import annotations

import pytest

from gateway.streaming import MAX_EVENT_BYTES, SSEError, SSEParser, sse_format

STREAM = (b": keep-alive\n\nevent: message_start\ndata: {\"a\": 1}\n\n"
          b"data: line one\r\ndata: line two\r\n\r\ndata: [DONE]\n\n")
EXPECTED = [("message_start", '{"a": 1}'), (None, "line one\nline two"), (None, "[DONE]")]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_split_across_reads_parse_identically(size):
    parser = SSEParser()
    events = []
    for i in range(0, len(STREAM), size):
        events += parser.feed(STREAM[i:i + size])
    events += parser.close()
    assert events == EXPECTED


def test_unterminated_last_event_is_flushed_on_close():
    parser = SSEParser()
    assert parser.feed(b"data: tail") == []
    assert parser.close() == [(None, "tail")]


def test_oversized_event_is_refused():
    parser = SSEParser()
    with pytest.raises(SSEError):
        parser.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 10))


def test_format_round_trips():
    parser = SSEParser()
    assert parser.feed(sse_format(b'{"x":1}', "ping") + sse_format("[DONE]")) == [
        ("ping", '{"x":1}'), (None, "[DONE]")]
