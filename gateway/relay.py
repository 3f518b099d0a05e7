"""The streaming half of the pipeline: one loop relays any upstream SSE stream to any client
surface, and writes the call's one ledger row.

Every upstream event is decoded once into the IR by the upstream's codec (its StreamDecoder);
the IR events keep the accounting (time to first token, the text streamed for an estimate, the
usage reported, whether the upstream stopped or failed). What the client gets is either the
upstream's own event, adjusted by the client codec's `Passthrough` (same wire format on both
sides), or the IR re-encoded by the client codec's `StreamEncoder`. Two rules hold for every
pair because they are written only here:

- a stream completes (the upstream said it stopped) or ends with the surface's error event: a
  stream the upstream closed or reset early is an `upstream_error` row (`stream_cut`), its
  breaker charged, never a `[DONE]`;
- exactly one ledger row: on completion, in-band error, transport failure or timeout, and when
  the client leaves. Then the upstream is closed at once (the provider stops generating and
  bills what it generated) and the row bills what was streamed so far, counted and marked
  estimated; a provider whose translation settings say `drain_on_disconnect: true` is drained
  in the background instead (gateway.streaming.drainer), so the row gets its final usage.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import ModuleType

import orjson

from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.call import Call
from gateway.finish import call_finish
from gateway.streaming import DRAIN_BYTES, DRAIN_SECONDS, drainer, sse_format
from gateway.tokens import text_tokens
from gateway.types import (MessageStart, SSEEvent, Stop, StreamError, StreamEvent, TextDelta,
                           ThinkingDelta, ToolArgsDelta, ToolCallStart, Usage, UsageUpdate)
from providers.selectors import RoutingSnapshot
from usage.models import UsageStatus

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def drains_on_disconnect(call: Call) -> bool:
    """Whether a stream whose client left is read to its end for the upstream's own usage (the
    deployment's `drain_on_disconnect`), rather than closed at once and billed as streamed."""
    return call.deployment is not None and call.deployment.codec_options.drain_on_disconnect


def encode_sse(event: SSEEvent) -> bytes:
    """One codec SSE event as bytes: a JSON payload, or a literal such as "[DONE]"."""
    name, payload = event
    if isinstance(payload, str):
        return sse_format(payload, event=name)
    return sse_format(orjson.dumps(payload), event=name)


class StreamRelay:
    """Per-stream state: upstream events in, client bytes out, the accounting on the call.

    `codec` is the upstream's wire codec. Exactly one of `passthrough` (the client codec's
    Passthrough, for the same wire format) and `encoder` (a client StreamEncoder) is given.
    `done` is set at the upstream's end marker; `failed` holds an in-band upstream error."""

    def __init__(self, call: Call, *, codec: ModuleType, passthrough=None, encoder=None) -> None:
        self.call = call
        self._codec = codec
        self._decoder = codec.StreamDecoder()
        self._passthrough = passthrough
        self._encoder = encoder
        self.done = False
        self.stopped = False
        self.failed: StreamError | None = None
        self.streamed: list[str] = []
        self._start_usage: Usage | None = None
        self._usage: Usage | None = None
        self._left = False
        # Set once the call's ledger row is written (by relay_stream, or its drain).
        self.recorded = asyncio.Event()

    def feed(self, event: str | None, data: str) -> list[bytes]:
        """One upstream SSE event in; the bytes to send the client. Raises UpstreamError for
        an event that cannot be read."""
        if self._codec.stream_done(event, data):
            self.done = True
            if not data.startswith(("{", "[{")):
                return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the upstream sent an event that is not JSON",
                                error_class="bad_stream") from None
        if not isinstance(payload, dict):
            return []
        events = self._decoder.feed(event, payload)
        self._observe(events)
        if self.failed is not None:
            return []  # relay_stream answers with `error`, once the row is written
        if self._passthrough is None:
            return self._encode(events)
        return [encode_sse(e) for e in self._passthrough.chunk(event, payload)]

    def end(self) -> list[bytes]:
        """The upstream's stream is over: the client's closing bytes. Raises UpstreamError
        (`stream_cut`) when the upstream never said it had finished."""
        events = self._decoder.finish()
        self._observe(events)
        out = self._encode(events) if self._passthrough is None else []
        # Complete: the upstream's end marker ("[DONE]", `message_stop`) or its stop reason.
        if self.failed is None and not self.stopped and not self.done:
            raise UpstreamError("the upstream stream ended before the response was complete",
                                error_class="stream_cut")
        self.settle()  # the closing events may report the usage
        closing = self._passthrough or self._encoder
        return out + [encode_sse(e) for e in closing.finish()]

    def error(self, message: str, type: str) -> list[bytes]:
        """The surface's own error event(s) for a failure after streaming began."""
        closing = self._passthrough or self._encoder
        return [encode_sse(e) for e in closing.error(message, type)]

    def _encode(self, events: list[StreamEvent]) -> list[bytes]:
        out: list[bytes] = []
        for ev in events:
            out.extend(encode_sse(e) for e in self._encoder.feed(ev))
        return out

    def _observe(self, events: list[StreamEvent]) -> None:
        for ev in events:
            if isinstance(ev, (TextDelta, ThinkingDelta)):
                if ev.text:
                    self.streamed.append(ev.text)
                    self.call.first_token()
            elif isinstance(ev, ToolCallStart):
                self.streamed.append(ev.name)
                self.call.first_token()
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

    def client_left(self) -> None:
        """The client went away: from now on, usage the upstream reported counts only if its
        stream had finished (a running count, such as Gemini's, is not what it bills)."""
        self._left = True

    def settle(self) -> None:
        """The call's tokens: the upstream's final usage, else an estimate: the prompt as the
        upstream reported it when its stream began (else the gateway's estimate, already on the
        call) and the output counted from the text streamed (gateway.tokens)."""
        complete = self.done or self.stopped
        if self._usage is not None and (complete or not self._left):
            self.call.usage_reported(self._usage)
        else:
            self.call.output_estimated(text_tokens("".join(self.streamed)),
                                       prompt=self._start_usage)


async def relay_stream(call: Call, snapshot: RoutingSnapshot, upstream: UpstreamResponse,
                       relay: StreamRelay, *, headers: dict[str, str],
                       opening: tuple[bytes, ...] = ()) -> AsyncIterator[bytes]:
    """Relay `upstream` through `relay` as it arrives (never buffered), after the `opening`
    bytes; exactly one ledger row whatever happens (see the module docstring). `headers` are
    stored with a replayable response."""
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
        finally:
            if finish.done():
                relay.recorded.set()

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
        except (UpstreamError, TimeoutError):
            pass
        finally:
            await record()
            await upstream.close()

    try:
        for chunk in opening:
            if call.captured is not None:
                call.captured.append(chunk)
            yield chunk
        async for event, data in upstream.events():
            chunks = relay.feed(event, data)
            if relay.failed is not None:
                # Recorded before the client sees the error event, on which it hangs up.
                call.failed(status=UsageStatus.UPSTREAM_ERROR, error_type="stream_error")
                await record(upstream_broke=True)
                for chunk in relay.error(relay.failed.message, relay.failed.type):
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
            call.disconnected()
            relay.client_left()
            if drains_on_disconnect(call):
                draining = drainer.start(drain)
            if not draining:
                # Closed before the row is written: the provider stops generating now.
                await upstream.close()
                await record()
        raise
    except UpstreamError as exc:
        call.failed(status=UsageStatus.TIMEOUT if exc.timeout else UsageStatus.UPSTREAM_ERROR,
                    error_type=exc.error_class)
        await record(upstream_broke=True)
        message = ("the upstream timed out mid-stream" if exc.timeout
                   else f"the upstream stream failed: {exc.message}")
        for chunk in relay.error(message, "timeout_error" if exc.timeout else "api_error"):
            yield chunk
    finally:
        if not draining:
            await upstream.close()
