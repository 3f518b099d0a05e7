"""The streaming half of every IR-aware surface: one loop that relays an upstream SSE stream to
the client, whatever the two dialects, and writes the call's one ledger row.

A `StreamRelay` turns each upstream event into the bytes the client gets (re-encoded by a
surface codec, or passed through for a native pair) and, from the IR events it decodes, keeps
the accounting: time to first token, what was streamed (for estimates), the usage the upstream
reported, whether it stopped properly or failed. `relay_stream` drives one:

- a complete stream: the relay's closing events, the ledger row (usage as reported, or
  estimated when the upstream reported none), the bytes kept for an Idempotency-Key replay;
- an in-band upstream error event: relayed in the surface's shape, row `upstream_error`;
- a cut, garbage or timed-out upstream: the surface's own error event, never a hang;
- a client disconnect (task cancelled, or the generator closed): the upstream is drained in
  the background (gateway.streaming.drainer) so the row gets the upstream's final usage.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson

from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.proxy import ProxyCall, call_finish
from gateway.streaming import DRAIN_BYTES, DRAIN_SECONDS, SSEError, drainer, sse_format
from gateway.tokens import text_tokens
from gateway.types import (MessageStart, SSEEvent, Stop, StreamError, StreamEvent, TextDelta,
                           ThinkingDelta, ToolArgsDelta, ToolCallStart, Usage, UsageUpdate)
from providers.selectors import RoutingSnapshot
from usage.models import UsageSource, UsageStatus

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def call_take_usage(call: ProxyCall, usage: Usage) -> None:
    """Record usage an upstream reported (IR counts: input includes cached tokens)."""
    call.input_tokens = usage.input_tokens
    call.output_tokens = usage.output_tokens
    call.cached_tokens = usage.cached_tokens
    call.reasoning_tokens = usage.reasoning_tokens
    call.usage_source = UsageSource.REPORTED


def encode_sse(event: SSEEvent) -> bytes:
    """One codec SSE event as bytes: a JSON payload, or a literal such as "[DONE]"."""
    name, payload = event
    if isinstance(payload, str):
        return sse_format(payload, event=name)
    return sse_format(orjson.dumps(payload), event=name)


def parse_event_data(data: str) -> object:
    """An upstream event's JSON payload; raises UpstreamError for anything else."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream sent an event that is not JSON",
                            error_class="bad_stream") from None


class StreamRelay:
    """Per-stream state. Subclasses implement `feed`, `end` and `error`; `observe` is given the
    IR events they decode, and `settle` puts the result on the call before its row is written.

    `done` is set once the upstream signalled its end ("[DONE]", `message_stop`); `failed`
    holds an in-band upstream error, whose event `feed` has already turned into client bytes.
    """

    def __init__(self, call: ProxyCall) -> None:
        self.call = call
        self.done = False
        self.stopped = False
        self.failed: StreamError | None = None
        self.streamed: list[str] = []
        self._start_usage: Usage | None = None
        self._usage: Usage | None = None

    def feed(self, event: str | None, data: str) -> list[bytes]:
        """One upstream SSE event in; the bytes to send the client. Raises UpstreamError for
        an event that cannot be read."""
        raise NotImplementedError

    def end(self) -> list[bytes]:
        """The upstream stream ended: the client's closing bytes. Raises UpstreamError when
        the upstream never said it had finished (a cut stream)."""
        raise NotImplementedError

    def error(self, message: str, type: str) -> list[bytes]:
        """The surface's own error event(s) for a failure after streaming began."""
        raise NotImplementedError

    def observe(self, events: list[StreamEvent]) -> None:
        for ev in events:
            if isinstance(ev, (TextDelta, ThinkingDelta)):
                if ev.text:
                    self.streamed.append(ev.text)
                    self.call.mark_first_token()
            elif isinstance(ev, ToolCallStart):
                self.streamed.append(ev.name)
                self.call.mark_first_token()
            elif isinstance(ev, ToolArgsDelta):
                self.streamed.append(ev.partial_json)
            elif isinstance(ev, UsageUpdate):
                self._usage = ev.usage
            elif isinstance(ev, MessageStart) and ev.usage is not None:
                self._start_usage = ev.usage
            elif isinstance(ev, Stop):
                self.stopped = True
            elif isinstance(ev, StreamError):
                self.failed = ev

    def settle(self) -> None:
        """The call's tokens: the upstream's final usage, else an estimate of the output (and
        the prompt as the upstream reported it when the stream began, if it did)."""
        if self._usage is not None:
            call_take_usage(self.call, self._usage)
            return
        start = self._start_usage
        if start is not None and start.input_tokens:
            self.call.input_tokens = start.input_tokens
            self.call.cached_tokens = start.cached_tokens
        self.call.output_tokens = text_tokens("".join(self.streamed))
        self.call.usage_source = UsageSource.ESTIMATED


class TranslatedRelay(StreamRelay):
    """Upstream events of one dialect -> IR (the upstream codec's StreamDecoder) -> the client
    surface's events (its StreamEncoder)."""

    def __init__(self, call: ProxyCall, *, decoder, encoder) -> None:
        super().__init__(call)
        self._decoder = decoder
        self._encoder = encoder

    def _encode(self, events: list[StreamEvent]) -> list[bytes]:
        self.observe(events)
        out: list[bytes] = []
        for ev in events:
            out.extend(encode_sse(e) for e in self._encoder.feed(ev))
        return out

    def feed(self, event: str | None, data: str) -> list[bytes]:
        if data == "[DONE]":
            self.done = True
            return []
        if event == "message_stop":
            self.done = True
        payload = parse_event_data(data)
        if not isinstance(payload, dict):
            return []
        return self._encode(self._decoder.feed(event, payload))

    def end(self) -> list[bytes]:
        out = self._encode(self._decoder.finish())
        if self.failed is None and not self.stopped:
            raise UpstreamError("the upstream stream ended before the response was complete",
                                error_class="stream_cut")
        return out + [encode_sse(e) for e in self._encoder.finish()]

    def error(self, message: str, type: str) -> list[bytes]:
        return [encode_sse(e) for e in self._encoder.error(message, type)]


async def relay_stream(call: ProxyCall, snapshot: RoutingSnapshot, upstream: UpstreamResponse,
                       relay: StreamRelay, *, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """Relay `upstream` through `relay` as it arrives (never buffered); exactly one ledger row
    whatever happens (see the module docstring). `headers` are stored with a replayable
    response."""
    recorded = False
    draining = False

    async def record(*, upstream_broke: bool = False) -> None:
        nonlocal recorded
        if recorded:
            return
        recorded = True
        relay.settle()
        if call.trace is not None:
            call.trace.take_text(relay.streamed)
        body = b"".join(call.captured) if call.captured is not None else None
        finish = asyncio.ensure_future(call_finish(
            call, snapshot, upstream_broke=upstream_broke, response_body=body,
            response_headers={"content-type": SSE_CONTENT_TYPE, **headers}))
        try:
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            # The client left while the row was being written: the row comes first.
            await finish
            raise

    async def drain() -> None:
        read = 0
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for event, data in upstream.events():
                    read += len(data)
                    if read > DRAIN_BYTES:
                        break
                    relay.feed(event, data)
                    if relay.done or relay.failed is not None:
                        break
        except (UpstreamError, SSEError, aiohttp.ClientError, TimeoutError):
            pass
        finally:
            await record()
            await upstream.close()

    try:
        async for event, data in upstream.events():
            chunks = relay.feed(event, data)
            if relay.failed is not None:
                # Recorded before the client sees the error event, on which it hangs up.
                call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=call.http_status,
                          error_type="stream_error")
                await record(upstream_broke=True)
                for chunk in chunks:
                    yield chunk
                return
            for chunk in chunks:
                if call.captured is not None:
                    call.captured.append(chunk)
                yield chunk
            if relay.done:
                break
        tail = relay.end()
        if call.captured is not None:
            call.captured.extend(tail)
        await record()
        for chunk in tail:
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        # Cancelled while awaiting the upstream, or closed at a `yield` when the server's send
        # was the one cancelled: either way the client is gone.
        if not recorded:
            call.fail(status=UsageStatus.CLIENT_DISCONNECTED, http_status=call.http_status,
                      error_type="client_disconnected")
            call.captured = None
            draining = drainer.start(drain)
            if not draining:
                await record()
        raise
    except (UpstreamError, SSEError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        timeout = isinstance(exc, asyncio.TimeoutError)
        call.fail(status=UsageStatus.TIMEOUT if timeout else UsageStatus.UPSTREAM_ERROR,
                  http_status=call.http_status,
                  error_type=getattr(exc, "error_class", type(exc).__name__))
        await record(upstream_broke=True)
        reason = getattr(exc, "message", type(exc).__name__)
        message = ("the upstream timed out mid-stream" if timeout
                   else f"the upstream stream failed: {reason}")
        for chunk in relay.error(message, "timeout_error" if timeout else "api_error"):
            yield chunk
    finally:
        if not draining:
            await upstream.close()
