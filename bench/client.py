"""The benchmark's async load client, for what wrk cannot see: time to first token, the gaps
between streamed chunks as they arrive, and whether chunks arrive one per read (not coalesced).

    python -m bench.client --url URL --body JSON [--header 'name: value' ...]
        --concurrency 16 [--duration 5] [--count 300] --mode json|openai-sse|anthropic-sse

Runs as its own process (uvloop + one aiohttp session with `concurrency` connections), bounded in
time, count or both (whichever comes first; requests in flight then finish), and prints one JSON
object on stdout: requests sent and completed, statuses, latency / TTFT / inter-chunk gap
percentiles (ms), content events per stream, and coalescing.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import aiohttp
import orjson
import uvloop


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[-1], 3)}


def is_content_event(mode: str, event: bytes) -> bool:
    """True for an event that carries generated text (the tokens a user sees)."""
    data = b""
    name = b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    if not data or data == b"[DONE]":
        return False
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if mode == "anthropic-sse":
        if (name or obj.get("type", "").encode()) != b"content_block_delta":
            return False
        delta = obj.get("delta") or {}
        return bool(delta.get("text") or delta.get("partial_json") or delta.get("thinking"))
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
            return True
    return False


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.completed = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency_ms: list[float] = []
        self.ttft_ms: list[float] = []
        self.gap_ms: list[float] = []
        self.events_per_stream: Counter[int] = Counter()
        self.reads_with_content = 0
        self.coalesced_reads = 0      # reads that delivered more than one content event
        self.max_events_per_read = 0


async def one_request(session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes,
                      headers: dict[str, str], stats: Stats) -> None:
    stats.sent += 1
    started = time.perf_counter()
    try:
        async with session.post(args.url, data=body, headers=headers) as response:
            stats.statuses[response.status] += 1
            if args.mode == "json" or response.status != 200:
                await response.read()
            else:
                buffer = b""
                last_at: float | None = None
                count = 0
                async for data in response.content.iter_any():
                    now = time.perf_counter()
                    buffer += data
                    *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
                    here = sum(1 for e in events if is_content_event(args.mode, e))
                    if not here:
                        continue
                    stats.reads_with_content += 1
                    stats.max_events_per_read = max(stats.max_events_per_read, here)
                    if here > 1:
                        stats.coalesced_reads += 1
                    if last_at is None:
                        stats.ttft_ms.append((now - started) * 1000)
                    else:
                        stats.gap_ms.append((now - last_at) * 1000)
                    # events of one read arrived together: their gaps are zero
                    stats.gap_ms.extend([0.0] * (here - 1))
                    last_at = now
                    count += here
                stats.events_per_stream[count] += 1
        stats.latency_ms.append((time.perf_counter() - started) * 1000)
        stats.completed += 1
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        stats.errors[type(exc).__name__] += 1


async def run(args: argparse.Namespace) -> dict:
    body = args.body.encode()
    headers = {"content-type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    stats = Stats()
    deadline = time.perf_counter() + args.duration if args.duration else None
    remaining = [args.count]

    def more() -> bool:
        if deadline is not None and time.perf_counter() >= deadline:
            return False
        if args.count:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
        return True

    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while more():
                await one_request(session, args, body, headers, stats)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "sent": stats.sent, "completed": stats.completed, "elapsed_s": round(elapsed, 3),
        "rps": round(stats.completed / elapsed, 1) if elapsed else None,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": dict(stats.errors),
        "latency_ms": percentiles(stats.latency_ms),
        "ttft_ms": percentiles(stats.ttft_ms),
        "gap_ms": percentiles(stats.gap_ms),
        "events_per_stream": {str(k): v for k, v in sorted(stats.events_per_stream.items())},
        "reads_with_content": stats.reads_with_content,
        "coalesced_reads": stats.coalesced_reads,
        "max_events_per_read": stats.max_events_per_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--mode", choices=("json", "openai-sse", "anthropic-sse"), default="json")
    args = parser.parse_args()
    if not args.duration and not args.count:
        parser.error("give --duration or --count")
    result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
