"""The benchmark's fake OpenAI-compatible upstream: a minimal aiohttp server on loopback, tuned for
speed (uvloop, responses pre-encoded per model, no per-request JSON building).

    python -m bench.upstream --port 9100

POST /v1/chat/completions answers JSON or SSE (`stream: true`). The model name picks the shape:
`bench-c<N>` streams N content chunks, `bench-c<N>-p<MS>` waits MS milliseconds before each one
(the paced case). A usage chunk follows when `stream_options.include_usage` is set, as OpenAI does.
GET /health answers 200 (readiness); GET /stats the number of chat requests received so far
(the benchmark compares it with the gateway's ledger rows), `?ids=1` adds the x-request-id of the
latest 5,000.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import orjson
import uvloop
from aiohttp import web

_MODEL = re.compile(r"^bench-c(\d{1,4})(?:-p(\d{1,5}))?$")
_WORDS = ("Sure", " here", " is", " a", " short", " answer", " from", " the", " fake",
          " upstream", " used", " by", " the", " gateway", " benchmark", " to", " measure",
          " overhead", ".", " Ok")


@dataclass
class Counter:
    requests: int = 0
    # the x-request-id of the latest requests: lets the benchmark name the ones without a row
    recent_ids: deque = field(default_factory=lambda: deque(maxlen=5000))


RECEIVED = web.AppKey("received", Counter)


@dataclass(frozen=True)
class Shape:
    completion: bytes          # the whole non-streaming body
    head: bytes                # role chunk
    chunks: tuple[bytes, ...]  # one SSE event per content chunk
    finish: bytes
    usage: bytes
    pace_s: float


@lru_cache(maxsize=64)
def shape_for(model: str) -> Shape:
    match = _MODEL.match(model)
    n, pace_ms = (int(match.group(1)), int(match.group(2) or 0)) if match else (20, 0)
    words = [_WORDS[i % len(_WORDS)] for i in range(n)]
    created = int(time.time())
    base = {"id": "chatcmpl-bench", "created": created, "model": model}
    usage = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n,
             "prompt_tokens_details": {"cached_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}

    def event(obj: object) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    completion = orjson.dumps({
        **base, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage})
    return Shape(
        completion=completion,
        head=event(chunk({"role": "assistant", "content": ""})),
        chunks=tuple(event(chunk({"content": w})) for w in words),
        finish=event(chunk({}, "stop")),
        usage=event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
        pace_s=pace_ms / 1000,
    )


async def chat(request: web.Request) -> web.StreamResponse:
    received = request.app[RECEIVED]
    received.requests += 1
    received.recent_ids.append(request.headers.get("x-request-id", ""))
    body = orjson.loads(await request.read())
    shape = shape_for(str(body.get("model") or ""))
    if not body.get("stream"):
        return web.Response(body=shape.completion, content_type="application/json")
    response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                           "cache-control": "no-cache"})
    await response.prepare(request)
    try:
        await response.write(shape.head)
        for data in shape.chunks:
            if shape.pace_s:
                await asyncio.sleep(shape.pace_s)
            await response.write(data)
        tail = shape.finish
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += shape.usage
        await response.write(tail + b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionError:
        pass  # the caller hung up (end of a wrk run)
    return response


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    received = request.app[RECEIVED]
    data: dict = {"requests": received.requests}
    if request.query.get("ids"):
        data["recent_ids"] = list(received.recent_ids)
    return web.json_response(data)


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app[RECEIVED] = Counter()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=120)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
    print(f"fake upstream on http://{host}:{port}/v1", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
