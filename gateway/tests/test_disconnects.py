"""A client leaving mid-stream: the upstream is closed at once and the row bills what was
streamed, counted and marked estimated; a provider set to `drain_on_disconnect` is read to its
end instead, and billed its reported usage (gateway.relay; those tests are the disconnect
tests of test_openai_chat, test_anthropic_messages and test_openai_responses)."""
from __future__ import annotations

import time

import httpx
import pytest

from gateway.tokens import text_tokens
from providers.translation import translation_problem

HELLO = [{"role": "user", "content": "hi"}]
# The fake's reply, word by word: "Hello", " from", " the", ...
FIRST_THREE = "Hello from the"


def _leave_after(url: str, path: str, headers: dict, body: dict, marker: str) -> float:
    """Stream `body` to `path` and hang up on the line holding `marker`; when it hung up."""
    with httpx.stream("POST", f"{url}{path}", headers=headers, timeout=20, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if marker in line:
                break
        else:
            pytest.fail(f"{marker!r} never came")
    return time.monotonic()


def _chat(gateway_url, api_key, marker='"content":" the"') -> float:
    return _leave_after(gateway_url, "/v1/chat/completions",
                        {"authorization": f"Bearer {api_key}"},
                        {"model": "gpt-test", "stream": True, "messages": HELLO}, marker)


def _messages(gateway_url, api_key) -> float:
    return _leave_after(gateway_url, "/v1/messages", {"x-api-key": api_key},
                        {"model": "claude-test", "max_tokens": 100, "stream": True,
                         "messages": HELLO}, '"text":" the"')


def test_leaving_closes_the_upstream_at_once_and_bills_the_streamed_text(
        gateway_url, fake_provider, api_key, ledger_rows):
    # Three words, then the fake keeps the stream open (comments only) until it is closed.
    fake_provider.behave("fake-a", hang_after=3)
    left = _chat(gateway_url, api_key)
    assert fake_provider.wait_for_hangups(1, timeout=5) == 1
    assert time.monotonic() - left < 2, "the upstream was not closed promptly"
    [row] = ledger_rows(1)
    assert (row.status, row.error_type, row.usage_source) == \
        ("client_disconnected", "client_disconnected", "estimated")
    assert row.output_tokens == text_tokens(FIRST_THREE)
    # The prompt: the gateway's estimate (an OpenAI stream reports none before its end).
    assert row.input_tokens > 0 and row.input_tokens != 11
    assert row.cost_usd > 0


def test_leaving_an_anthropic_stream_bills_its_reported_prompt_and_the_streamed_text(
        gateway_url, fake_anthropic_provider, api_key, ledger_rows):
    fake_anthropic_provider.behave("fake-anth", hang_after=3)
    left = _messages(gateway_url, api_key)
    assert fake_anthropic_provider.wait_for_hangups(1, timeout=5) == 1
    assert time.monotonic() - left < 2
    [row] = ledger_rows(1)
    assert (row.status, row.usage_source) == ("client_disconnected", "estimated")
    # message_start said 11 input tokens (and 1 output token so far, a running count that
    # is not billed): the output is counted from the text streamed.
    assert (row.input_tokens, row.output_tokens) == (11, text_tokens(FIRST_THREE))


def test_drain_on_disconnect_is_true_or_false():
    assert translation_problem({"drain_on_disconnect": True}) is None
    assert translation_problem({"drain_on_disconnect": "yes"}) == \
        "drain_on_disconnect: must be true or false"
