"""Two replicas, an upstream that cuts its streams (closes, resets, or ends the response
cleanly without its end marker): on every surface the client gets the surface's error event,
and each request has exactly one `upstream_error` row."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.faults.harness import MODEL, PROVIDER, create_api_key, wait_until
from tests.faults.traffic import Answer, burst, ledger_rows

REQUESTS = 4  # under the breaker's 5 consecutive failures, so each one reaches the upstream


def _stream(urls: list[str], key: str, path: str, body: dict) -> list[Answer]:
    async def run() -> list[Answer]:
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i: int) -> Answer:
                response = await client.post(f"{urls[i % len(urls)]}{path}", json=body,
                                             headers={"authorization": f"Bearer {key}"})
                return Answer(response.status_code, response.headers.get("x-request-id", ""),
                              response.text)
            return await asyncio.gather(*[one(i) for i in range(REQUESTS)])
    return asyncio.run(run())


def _anthropic_errors(answer: Answer) -> list[dict]:
    return [event for event in map(json.loads, answer.events()) if event.get("type") == "error"]


@pytest.mark.parametrize("mode", ["close", "reset", "eof"])
def test_a_cut_chat_stream_ends_with_an_error_event_and_one_upstream_error_row(
        replicas, faults_db, fake_upstream, key_name, mode):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    fake_upstream.behave(PROVIDER, cut_after=3, cut_mode=mode)
    answers = burst(urls, key, REQUESTS, concurrency=REQUESTS, stream_every=1)

    assert [a.status for a in answers] == [200] * REQUESTS  # the stream had started
    assert [len(a.error_events()) for a in answers] == [1] * REQUESTS
    assert [a.events()[-1] for a in answers] == ["[DONE]"] * REQUESTS
    _assert_one_upstream_error_row_each(faults_db, key_name, answers)


@pytest.mark.parametrize("mode", ["close", "reset"])
def test_a_cut_legacy_completions_stream_ends_with_an_error_event_and_one_upstream_error_row(
        replicas, faults_db, fake_upstream, key_name, mode):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    fake_upstream.behave(PROVIDER, reply="one two three four five six", cut_after=3,
                         cut_mode=mode)
    answers = _stream(urls, key, "/v1/completions",
                      {"model": MODEL, "prompt": "hi", "stream": True, "max_tokens": 50})

    assert [a.status for a in answers] == [200] * REQUESTS
    assert [len(a.error_events()) for a in answers] == [1] * REQUESTS
    assert [a.events()[-1] for a in answers] == ["[DONE]"] * REQUESTS
    _assert_one_upstream_error_row_each(faults_db, key_name, answers)


@pytest.mark.parametrize("mode", ["close", "reset"])
def test_a_cut_stream_behind_anthropic_messages_ends_with_an_error_event_and_one_row(
        replicas, faults_db, fake_upstream, key_name, mode):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    fake_upstream.behave(PROVIDER, cut_after=3, cut_mode=mode)
    answers = _stream(urls, key, "/v1/messages",
                      {"model": MODEL, "max_tokens": 50, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})

    assert [a.status for a in answers] == [200] * REQUESTS
    assert [len(_anthropic_errors(a)) for a in answers] == [1] * REQUESTS
    assert ["message_stop" in a.body for a in answers] == [False] * REQUESTS
    _assert_one_upstream_error_row_each(faults_db, key_name, answers)


def _assert_one_upstream_error_row_each(db, key_name: str, answers: list[Answer]) -> None:
    rows = wait_until(lambda: (r := ledger_rows(db, key_name)) and len(r) >= len(answers) and r,
                      timeout=10, what=f"{len(answers)} ledger rows")
    assert sorted((request_id, status) for request_id, status, _ in rows) == \
        sorted((a.request_id, "upstream_error") for a in answers)
