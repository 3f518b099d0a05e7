"""Server-sent events: an incremental, bounded parser, the formatter, and the drainer that
finishes reading an upstream stream after its client went away (where the provider says so)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)

MAX_EVENT_BYTES = 4 * 1024 * 1024


class SSEError(Exception):
    """The upstream stream is not valid SSE (or an event exceeds MAX_EVENT_BYTES)."""


class SSEParser:
    """Feed raw bytes; get complete (event name or None, data text) pairs.

    Handles \\n, \\r\\n and \\r line endings, multi-line data, comments (ignored) and events
    split across reads. The pending buffer is bounded by MAX_EVENT_BYTES.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buffer += chunk
        out: list[tuple[str | None, str]] = []
        while True:
            idx = self._buffer.find(b"\n")
            cr = self._buffer.find(b"\r")
            if cr != -1 and (idx == -1 or cr < idx):
                if cr == len(self._buffer) - 1:
                    break  # a lone \r at the end may be the first half of \r\n
                idx = cr
                end = cr + 2 if self._buffer[cr + 1:cr + 2] == b"\n" else cr + 1
            elif idx != -1:
                end = idx + 1
            else:
                break
            line = self._buffer[:idx].decode("utf-8", errors="replace")
            self._buffer = self._buffer[end:]
            event = self._line(line)
            if event is not None:
                out.append(event)
        if len(self._buffer) > MAX_EVENT_BYTES or sum(map(len, self._data)) > MAX_EVENT_BYTES:
            raise SSEError("upstream event exceeds the size limit")
        return out

    def close(self) -> list[tuple[str | None, str]]:
        """Flush an event the upstream did not terminate with a blank line."""
        out = self.feed(b"\n") if self._buffer else []
        if self._data:
            out.append(self._dispatch())
        return out

    def _line(self, line: str) -> tuple[str | None, str] | None:
        if line == "":
            return self._dispatch() if self._data else self._reset()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> tuple[str | None, str]:
        event = (self._event, "\n".join(self._data))
        self._reset()
        return event

    def _reset(self) -> None:
        self._event = None
        self._data = []


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str | None, str]]:
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event


def sse_format(data: bytes | str, event: str | None = None) -> bytes:
    """One SSE event. `data` must not contain newlines (compact JSON never does)."""
    if isinstance(data, str):
        data = data.encode()
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class Drainer:
    """Keeps reading upstream streams whose client disconnected, for providers set to
    `drain_on_disconnect` (gateway.relay; by default such a stream is closed at once), so the
    ledger gets the usage the upstream reports at the end.

    Bounded: at most `max_streams` drains at once (beyond that the caller records its estimate
    at once); the drain coroutine itself bounds time and bytes. Strong references are kept so a
    drain outlives the cancelled request task.
    """

    def __init__(self, *, max_streams: int = 256) -> None:
        self._max_streams = max_streams
        self._tasks: set[asyncio.Task] = set()

    def start(self, drain: Callable[[], Awaitable[None]]) -> bool:
        if len(self._tasks) >= self._max_streams:
            return False
        task = asyncio.get_running_loop().create_task(drain())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream drain failed: %s", type(task.exception()).__name__)

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


DRAIN_SECONDS = 60.0
DRAIN_BYTES = 8 * 1024 * 1024
drainer = Drainer()
