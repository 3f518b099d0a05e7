"""Client side of the fault suite: bounded bursts of real HTTP requests, and what they left in
the ledger."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal

import httpx

from tests.faults.harness import MODEL, MariaDB


@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str
    body: str

    def events(self) -> list[str]:
        """The `data:` payloads of an SSE body."""
        return [line[6:] for line in self.body.splitlines() if line.startswith("data: ")]

    def error_events(self) -> list[dict]:
        found = []
        for data in self.events():
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if isinstance(event, dict) and "error" in event:
                found.append(event)
        return found


def chat_body(*, stream: bool = False, max_tokens: int = 50, text: str = "hi") -> dict:
    body = {"model": MODEL, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _send(client: httpx.AsyncClient, url: str, key: str, body: dict,
                headers: dict | None = None) -> Answer:
    response = await client.post(f"{url}/v1/chat/completions", json=body,
                                 headers={"authorization": f"Bearer {key}", **(headers or {})})
    return Answer(response.status_code, response.headers.get("x-request-id", ""), response.text)


def burst(urls: list[str], key: str, count: int, *, concurrency: int = 16,
          stream_every: int = 3, headers: dict | None = None) -> list[Answer]:
    """`count` chat requests spread round-robin over `urls`, `concurrency` at a time; every
    `stream_every`-th one streamed."""
    async def run() -> list[Answer]:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i: int) -> Answer:
                async with limit:
                    return await _send(client, urls[i % len(urls)], key,
                                       chat_body(stream=stream_every > 0 and i % stream_every == 0,
                                                 text=f"request {i}"), headers)
            return await asyncio.gather(*[one(i) for i in range(count)])
    return asyncio.run(run())


def ledger_rows(db: MariaDB, key_name: str) -> list[tuple[str, str, Decimal]]:
    """(request_id, status, cost_usd) of every ledger row of the keys named `key_name`."""
    return [tuple(row) for row in db.query(
        "SELECT r.request_id, r.status, r.cost_usd FROM usage_usagerecord r "
        "JOIN providers_apikey k ON k.id = r.api_key_id WHERE k.name = %s", (key_name,))]
