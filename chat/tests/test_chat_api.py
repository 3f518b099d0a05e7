"""The chat endpoints through a live gateway, signed in as a real user: JSON-event streams,
history, context trimming, and chat traffic under the same keys, budgets, limits and ledger
as API traffic."""
from __future__ import annotations

from decimal import Decimal

import pytest

from chat.models import ChatAccount, ChatMessage
from chat.services import chat_account_key_hash
from chat.tests.conftest import circuits, circuits_open, sign_in, sse_events
from providers.models import ApiKey
from providers.services import api_key_changes_publish, api_key_revoke, config_version_bump
from usage.models import UsageRecord

REPLY = "Hello from the fake upstream, here is your answer."


def _new_session(client, model: str = "gpt-test") -> int:
    response = client.post("/chat/api/sessions", json={"model": model})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _say(client, session_id: int, content: str, model: str = "gpt-test", **extra):
    return client.post(f"/chat/api/sessions/{session_id}/messages",
                       json={"content": content, "model": model, **extra})


def _chat_key(username: str = "alice") -> ApiKey:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username=username)
    chat_account_key_hash(user_id=user.pk, username=username)
    return ChatAccount.objects.get(user=user).api_key


def test_answer_streams_as_json_events_and_is_stored(chat_client, fake_provider, ledger_rows):
    session_id = _new_session(chat_client)
    response = _say(chat_client, session_id, "hi there")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[0] == {"type": "provider", "provider": "fake-a"}
    assert "".join(e["content"] for e in events if e["type"] == "delta") == REPLY
    assert events[-2] == {"type": "usage", "input_tokens": 11, "output_tokens": 7,
                          "cost_usd": "0.0000250000", "estimated": False}
    assert events[-1] == {"type": "done"}
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.public_model, row.stream) == ("chat", "ok", "gpt-test", True)
    assert row.api_key.name == "chat:alice" and row.api_key == _chat_key()
    assert row.request_id == response.headers["x-request-id"]
    session = chat_client.get(f"/chat/api/sessions/{session_id}").json()
    assert session["title"] == "hi there"
    user, answer = session["messages"]
    assert (user["role"], user["content"]) == ("user", "hi there")
    assert (answer["role"], answer["content"], answer["status"]) == ("assistant", REPLY, "complete")
    assert answer["request_id"] == row.request_id and answer["provider"] == "fake-a"
    assert Decimal(answer["cost_usd"]) == row.cost_usd
    # Provider secrets never reach the browser.
    assert "sk-fake-upstream-secret" not in response.text + str(session)


def test_history_is_sent_as_context_and_retry_answers_again(chat_client, fake_provider):
    session_id = _new_session(chat_client)
    _say(chat_client, session_id, "first question")
    _say(chat_client, session_id, "second question")
    assert fake_provider.calls()[-1].body["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "second question"}]
    fake_provider.behave("fake-a", reply="A better answer.")
    events = sse_events(chat_client.post(f"/chat/api/sessions/{session_id}/messages",
                                         json={"retry": True, "model": "gpt-test"}))
    assert "".join(e["content"] for e in events if e["type"] == "delta") == "A better answer."
    assert len(fake_provider.calls()[-1].body["messages"]) == 3
    messages = chat_client.get(f"/chat/api/sessions/{session_id}").json()["messages"]
    assert [m["content"] for m in messages] == ["first question", REPLY, "second question",
                                                "A better answer."]


def test_history_is_trimmed_to_the_context_window_with_a_note(chat_client, fake_provider, settings):
    settings.GATEWAY_CHAT_CONTEXT_TOKENS_BY_MODEL = {"gpt-test": 400}
    settings.GATEWAY_CHAT_MAX_TOKENS = 100
    session_id = _new_session(chat_client)
    long = "word " * 160  # ~200 estimated tokens
    first = _say(chat_client, session_id, "one " + long)
    assert first.headers["x-chat-context-trimmed"] == "0"
    second = _say(chat_client, session_id, "two " + long)
    assert second.headers["x-chat-context-trimmed"] == "2"
    sent = fake_provider.calls()[-1].body
    assert [m["content"][:4] for m in sent["messages"]] == ["two "]
    assert sent["max_tokens"] == 100
    answer = chat_client.get(f"/chat/api/sessions/{session_id}").json()["messages"][-1]
    assert answer["context_trimmed"] == 2


def test_budget_of_the_users_key_applies_to_chat(chat_client, fake_provider, ledger_rows):
    key = _chat_key()
    key.budget_usd = Decimal("0.000001")
    key.save()
    api_key_changes_publish(digests={key.key_hash})
    session_id = _new_session(chat_client)
    events = sse_events(_say(chat_client, session_id, "hi"))
    assert events[0]["type"] == "error" and "budget" in events[0]["message"]
    assert events[-1] == {"type": "done"}
    assert not fake_provider.calls()
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.error_type, row.api_key_id) == \
        ("chat", "rejected", "budget_exceeded", key.id)
    answer = ChatMessage.objects.get(role="assistant")
    assert answer.status == "error" and "budget" in answer.error


def test_rate_limit_is_a_rate_limited_event(chat_client, fake_provider):
    key = _chat_key()
    key.rpm_limit = 1
    key.save()
    api_key_changes_publish(digests={key.key_hash})
    session_id = _new_session(chat_client)
    assert sse_events(_say(chat_client, session_id, "one"))[-1] == {"type": "done"}
    events = sse_events(_say(chat_client, session_id, "two"))
    assert events[0]["type"] == "rate_limited" and events[0]["retry_after"] >= 1
    assert events[-1] == {"type": "done"}


def test_upstream_failure_mid_stream_is_an_error_event_and_keeps_the_partial_answer(
        chat_client, fake_provider, ledger_rows):
    fake_provider.behave("fake-a", cut_after=3)
    session_id = _new_session(chat_client)
    events = sse_events(_say(chat_client, session_id, "hi"))
    assert [e["type"] for e in events[-3:]] == ["error", "usage", "done"]
    partial = "".join(e["content"] for e in events if e["type"] == "delta")
    assert partial and REPLY.startswith(partial)
    [row] = ledger_rows(1)
    assert row.status == "upstream_error"
    answer = ChatMessage.objects.get(role="assistant")
    assert (answer.status, answer.content) == ("error", partial)


def test_models_are_those_the_users_key_may_use(chat_client, fake_provider, mock_provider):
    assert chat_client.get("/chat/api/models").json() == \
        {"models": ["gpt-test", "mock-test"], "unavailable": []}
    key = _chat_key()
    key.allowed_models = ["mock-test"]
    key.save()
    api_key_changes_publish(digests={key.key_hash})
    assert chat_client.get("/chat/api/models").json() == {"models": ["mock-test"],
                                                          "unavailable": []}
    session_id = _new_session(chat_client)
    refused = _say(chat_client, session_id, "hi")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"


def test_a_model_whose_circuits_are_all_open_is_listed_unavailable(
        chat_client, circuit_providers, gateway_url, api_key):
    models = chat_client.get("/chat/api/models").json()
    assert models == {"models": ["gpt-mixed", "gpt-ok", "gpt-test"], "unavailable": []}

    # Two requests, each failing on both of gpt-test's upstreams (502), open both circuits.
    assert circuits_open(gateway_url, api_key, circuit_providers, failing=("fake-a", "fake-b"),
                         model="gpt-test", requests=2) == [502, 502]
    # gpt-mixed's first route (fake-a) fails twice and opens; its fallback (fake-c) answers.
    assert circuits_open(gateway_url, api_key, circuit_providers, failing=("fake-a",),
                         model="gpt-mixed", requests=2) == [200, 200]
    assert circuits(gateway_url) == {
        ("fake-a", "gpt-test"): "open", ("fake-b", "gpt-test"): "open",
        ("fake-a", "gpt-mixed"): "open", ("fake-c", "gpt-mixed"): "closed",
        ("fake-c", "gpt-ok"): "closed"}

    models = chat_client.get("/chat/api/models").json()
    assert models["models"] == ["gpt-mixed", "gpt-ok"]
    [unavailable] = models["unavailable"]
    assert (unavailable["model"], unavailable["reason"]) == ("gpt-test", "circuit_open")
    assert 1 <= unavailable["retry_after_s"] <= 30  # the providers' 30 s cool-down

    # What a chat turn would have met: the gateway refuses it without calling an upstream.
    calls = len(circuit_providers.calls())
    session_id = _new_session(chat_client)
    events = sse_events(_say(chat_client, session_id, "hi"))
    assert events == [{"type": "error",
                       "message": "no healthy deployment of `gpt-test`: every circuit is open"},
                      {"type": "done"}]
    assert len(circuit_providers.calls()) == calls


def test_a_model_with_no_weighted_route_is_listed_unavailable(chat_client, fake_provider):
    from providers.models import ModelRoute

    ModelRoute.objects.update(weight=0)
    config_version_bump()
    assert chat_client.get("/chat/api/models").json() == {
        "models": [], "unavailable": [{"model": "gpt-test", "reason": "no_active_route",
                                       "retry_after_s": None}]}


def test_revoked_chat_key_turns_chat_off(chat_client, fake_provider):
    api_key_revoke(key=_chat_key())
    session_id = _new_session(chat_client)
    refused = _say(chat_client, session_id, "hi")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "chat_disabled"
    assert not fake_provider.calls()


def test_sessions_are_private_and_can_be_renamed_and_deleted(chat_client, gateway_url, make_user,
                                                             fake_provider):
    session_id = _new_session(chat_client)
    _say(chat_client, session_id, "secret plans")
    make_user("bob")
    bob = sign_in(gateway_url, "bob")
    assert bob.get("/chat/api/sessions").json() == {"sessions": []}
    assert bob.get(f"/chat/api/sessions/{session_id}").status_code == 404
    assert _say(bob, session_id, "mine now").status_code == 404
    assert bob.delete(f"/chat/api/sessions/{session_id}").status_code == 404
    bob.close()
    renamed = chat_client.patch(f"/chat/api/sessions/{session_id}", json={"title": "Plans"})
    assert renamed.json()["title"] == "Plans"
    assert [s["title"] for s in chat_client.get("/chat/api/sessions").json()["sessions"]] == ["Plans"]
    assert chat_client.delete(f"/chat/api/sessions/{session_id}").status_code == 204
    assert chat_client.get("/chat/api/sessions").json() == {"sessions": []}
    assert not ChatMessage.objects.exists()
    # The ledger keeps the call: history belongs to the user, spend to the organisation.
    assert UsageRecord.objects.filter(surface="chat").count() == 1


@pytest.mark.parametrize("method, path", [
    ("get", "/chat/api/sessions"), ("get", "/chat/api/models"),
    ("post", "/chat/api/sessions/1/messages"),
])
def test_signed_out_callers_get_401(gateway_url, transactional_db, method, path):
    import httpx

    response = getattr(httpx, method)(f"{gateway_url}{path}")
    assert response.status_code in (401, 403)  # 403: Django's CSRF check on a bare POST
    if response.status_code == 401:
        assert response.json()["error"]["code"] == "not_signed_in"


def test_page_requires_sign_in_and_sends_a_strict_csp(chat_client, gateway_url, transactional_db):
    import httpx

    assert httpx.get(f"{gateway_url}/chat/").headers["location"].startswith("/chat/login/")
    page = chat_client.get("/chat/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # no inline script: only the page's own files


def test_leaving_before_the_first_byte_still_writes_one_row(chat_client, fake_provider,
                                                            ledger_rows):
    fake_provider.behave("fake-a", latency_s=1.5)
    session_id = _new_session(chat_client)
    with chat_client.stream("POST", f"/chat/api/sessions/{session_id}/messages",
                            json={"content": "hi", "model": "gpt-test"}) as response:
        assert response.status_code == 200  # headers come first; then the client leaves
    [row] = ledger_rows(1, timeout=10)
    assert (row.surface, row.status, row.http_status) == ("chat", "client_disconnected", 499)
    assert row.output_tokens == 0


def _stop_after(client, session_id: int, shown: str) -> None:
    """Ask, read the answer's deltas until they make `shown`, then hang up (the page's Stop)."""
    import json

    text = ""
    with client.stream("POST", f"/chat/api/sessions/{session_id}/messages",
                       json={"content": "Write a long essay", "model": "gpt-test"}) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and (data := json.loads(line[5:]))["type"] == "delta":
                text += data["content"]
                if text == shown:
                    return
    pytest.fail(f"the answer ended before {shown!r}: {text!r}")


def _stopped_answer(timeout: float = 5.0) -> ChatMessage:
    import time

    deadline = time.monotonic() + timeout
    while not ChatMessage.objects.filter(role="assistant").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ChatMessage.objects.get(role="assistant")


@pytest.mark.parametrize("drain", [False, True])
def test_stop_stores_the_answer_with_the_tokens_and_cost_the_ledger_billed(
        chat_client, fake_provider, ledger_rows, drain):
    from gateway.tests.provider_settings import provider_translation_set
    from gateway.tokens import text_tokens

    if drain:
        provider_translation_set("fake-a", drain_on_disconnect=True)
        fake_provider.behave("fake-a", chunk_delay_s=0.1)
    else:
        fake_provider.behave("fake-a", hang_after=3)  # three words, then open until closed
    _stop_after(chat_client, _new_session(chat_client), "Hello from the")
    [row] = ledger_rows(1, timeout=10)
    stored = _stopped_answer()
    assert (row.surface, row.status) == ("chat", "client_disconnected")
    assert stored.status == "stopped" and stored.request_id == row.request_id
    assert stored.content.startswith("Hello from the") and REPLY.startswith(stored.content)
    # What chat shows is what the ledger billed, to the last digit.
    assert (stored.input_tokens, stored.output_tokens, stored.cost_usd) == \
        (row.input_tokens, row.output_tokens, row.cost_usd)
    assert row.cost_usd > 0
    if drain:
        assert (row.output_tokens, row.usage_source) == (7, "reported")
    else:
        assert fake_provider.wait_for_hangups(1) == 1
        assert (row.output_tokens, row.usage_source) == (text_tokens("Hello from the"),
                                                         "estimated")


@pytest.mark.parametrize("model, provider, expected", [
    ("mock-test", "mock-m", "Mock reply: first words"),
    ("claude-test", "fake-anth", REPLY),
])
def test_every_upstream_kind_serves_chat(chat_client, mock_provider, fake_anthropic_provider,
                                         ledger_rows, model, provider, expected):
    session_id = _new_session(chat_client, model)
    events = sse_events(_say(chat_client, session_id, "first words", model=model))
    assert events[0] == {"type": "provider", "provider": provider}
    assert "".join(e["content"] for e in events if e["type"] == "delta") == expected
    usage = events[-2]
    assert usage["type"] == "usage" and usage["estimated"] is False and usage["output_tokens"] > 0
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.provider_name) == ("chat", "ok", provider)
