"""An upstream stream that ends early under the JSON-event streams (tasks `?stream=1` and the
chat page), from either upstream kind: the stream ends `error`, `usage`, `done`, the ledger has
exactly one `upstream_error` row and the route's circuit breaker is charged. The cuts are
those of gateway/tests/test_stream_cuts.py (`eof`: no end marker; `close`; `reset`: TCP RST),
made once the client has received 3 deltas."""
from __future__ import annotations

import json

import httpx
import pytest

from chat.models import ChatMessage
from usage.models import UsageRecord

CHUNKS = 3
REPLY = "Hello from the fake upstream, here is your answer."
ERROR_TYPES = {"eof": "stream_cut", "close": "ClientPayloadError", "reset": "connection_reset"}
PROVIDERS = {"gpt-test": "fake-a", "claude-test": "fake-anth"}


@pytest.fixture
def both_upstreams(fake_provider, fake_anthropic_provider):
    return fake_provider


def _read(response: httpx.Response, gate) -> list[dict]:
    """The JSON events of a stream as they arrive; the gate opens at the CHUNKS-th delta."""
    assert response.status_code == 200, response.read()
    events, deltas = [], 0
    for line in response.iter_lines():
        if line.startswith("data:"):
            events.append(json.loads(line[5:]))
            if events[-1]["type"] == "delta":
                deltas += 1
                if deltas == CHUNKS:
                    gate.open()
    return events


def _assert_cut(events: list[dict], *, provider: str) -> str:
    """The events of a cut stream; returns the text streamed before the cut."""
    assert events[0] == {"type": "provider", "provider": provider}
    assert [e["type"] for e in events[-3:]] == ["error", "usage", "done"]
    assert [e["type"] for e in events].count("done") == 1
    assert "the upstream stream failed" in events[-3]["message"]
    assert events[-2]["estimated"] is True and events[-2]["output_tokens"] > 0
    text = "".join(e["content"] for e in events if e["type"] == "delta")
    assert len([e for e in events if e["type"] == "delta"]) == CHUNKS and REPLY.startswith(text)
    return text


def _assert_row(gateway_url: str, ledger_rows, *, surface: str, model: str, mode: str,
                request_id: str) -> None:
    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1 and row.request_id == request_id
    assert (row.surface, row.public_model, row.provider_name, row.stream) == \
        (surface, model, PROVIDERS[model], True)
    assert (row.status, row.error_type, row.usage_source) == \
        ("upstream_error", ERROR_TYPES[mode], "estimated")
    assert row.output_tokens > 0 and row.cost_usd > 0
    detail = httpx.get(f"{gateway_url}/health/detailed", timeout=10).json()
    [route] = detail["providers"][PROVIDERS[model]]["routes"]
    assert (route["consecutive_failures"], route["last_error_class"], route["in_flight"]) == \
        (1, ERROR_TYPES[mode], 0)


@pytest.mark.parametrize("mode", ["eof", "close", "reset"])
@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_a_cut_task_stream_ends_with_an_error_event_and_an_upstream_error_row(
        gateway_url, both_upstreams, api_key, make_task, ledger_rows, model, mode):
    make_task("risk_check", model=model, max_tokens=100)
    gate = both_upstreams.gate()
    both_upstreams.behave(PROVIDERS[model], cut_after=CHUNKS, cut_mode=mode, cut_gate=gate)
    with httpx.stream("POST", f"{gateway_url}/api/tasks/risk_check?stream=1",
                      json={"input": "hi"}, headers={"authorization": f"Bearer {api_key}"},
                      timeout=20) as response:
        events = _read(response, gate)
    _assert_cut(events, provider=PROVIDERS[model])
    _assert_row(gateway_url, ledger_rows, surface="task", model=model, mode=mode,
                request_id=response.headers["x-request-id"])


@pytest.mark.parametrize("mode", ["eof", "close", "reset"])
@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_a_cut_chat_answer_ends_with_an_error_event_and_keeps_the_partial_answer(
        chat_client, gateway_url, both_upstreams, ledger_rows, model, mode):
    gate = both_upstreams.gate()
    both_upstreams.behave(PROVIDERS[model], cut_after=CHUNKS, cut_mode=mode, cut_gate=gate)
    session_id = chat_client.post("/chat/api/sessions", json={"model": model}).json()["id"]
    with chat_client.stream("POST", f"/chat/api/sessions/{session_id}/messages",
                            json={"content": "hi", "model": model}) as response:
        events = _read(response, gate)
    partial = _assert_cut(events, provider=PROVIDERS[model])
    _assert_row(gateway_url, ledger_rows, surface="chat", model=model, mode=mode,
                request_id=response.headers["x-request-id"])
    answer = ChatMessage.objects.get(role="assistant")
    assert (answer.status, answer.content) == ("error", partial)
    assert "the upstream stream failed" in answer.error
