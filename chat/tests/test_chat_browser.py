"""The chat page in headless Chromium against a live gateway and the fake upstream: a person
signs in, watches an answer stream in, reloads, stops an answer, and a hostile answer stays
inert. Screenshots land in test-artifacts/ (git-ignored)."""
from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from playwright.sync_api import expect

from chat.models import ChatMessage
from chat.tests.conftest import PASSWORD

REPLY = "Hello from the fake upstream, here is your answer."
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"chat-{name}.png"), full_page=True)


def _sign_in(page, url: str, username: str = "alice") -> None:
    page.goto(f"{url}/chat/login/?next=/chat/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/chat/")
    expect(page.locator("#model option")).not_to_have_count(0)


def _send(page, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def test_answer_streams_in_and_the_history_survives_a_reload(page, gateway_url, fake_provider,
                                                             make_user):
    fake_provider.behave("fake-a", chunk_delay_s=0.2)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    make_user("alice")
    _sign_in(page, gateway_url)
    _send(page, "Tell me something")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_contain_text("Hello", timeout=5000)
    # Text is on screen while the answer is still streaming.
    seen = answer.locator(".content").inner_text()
    assert answer.get_attribute("data-status") == "streaming"
    assert seen.strip() and seen.strip() != REPLY
    _shot(page, "streaming")
    expect(answer).to_have_attribute("data-status", "complete", timeout=10000)
    expect(answer.locator(".content")).to_have_text(REPLY)
    expect(answer.locator(".meta")).to_contain_text("fake-a")
    expect(page).to_have_url(f"{gateway_url}/chat/{ChatMessage.objects.first().session_id}/")

    page.reload()
    expect(page.locator(".message.user")).to_have_text("Tell me something")
    expect(page.locator(".message.assistant .content")).to_have_text(REPLY)
    expect(page.locator("#sessions li .open")).to_have_text(["Tell me something"])
    _shot(page, "history")

    # The next turn carries the history as context.
    fake_provider.behave("fake-a", reply="Second answer.")
    _send(page, "And then?")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "complete")
    assert [m["role"] for m in fake_provider.calls()[-1].body["messages"]] == \
        ["user", "assistant", "user"]
    # The page's own files work under its strict Content-Security-Policy.
    assert not [m for m in console if "Content Security Policy" in m], console


def test_stop_keeps_the_partial_answer_and_the_ledger_row_is_client_disconnected(
        page, gateway_url, fake_provider, make_user, ledger_rows):
    fake_provider.behave("fake-a", chunk_delay_s=0.3)
    make_user("alice")
    _sign_in(page, gateway_url)
    _send(page, "Write a long essay")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_contain_text("Hello", timeout=5000)
    page.click("#stop")
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(page.locator("#stop")).to_be_hidden()
    shown = answer.locator(".content").inner_text().strip()
    assert shown and shown != REPLY

    # The upstream is closed at once; the row bills what was streamed.
    [row] = ledger_rows(1, timeout=15)
    assert (row.surface, row.status, row.error_type) == \
        ("chat", "client_disconnected", "client_disconnected")
    deadline = time.monotonic() + 5
    while not ChatMessage.objects.filter(role="assistant").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = ChatMessage.objects.get(role="assistant")
    assert stored.status == "stopped" and stored.content and REPLY.startswith(stored.content)
    assert stored.output_tokens > 0 and stored.request_id == row.request_id
    # The answer's tokens and cost are the ledger row's own.
    assert (stored.input_tokens, stored.output_tokens, stored.cost_usd) == \
        (row.input_tokens, row.output_tokens, row.cost_usd)
    assert row.usage_source == "estimated" and stored.cost_usd > 0

    # The live page, without a reload, shows the same tokens and cost once the answer is stored.
    billed = f"{row.input_tokens} in / {row.output_tokens} out"
    cost = "$" + page.evaluate("(c) => Number(c).toPrecision(3)", str(row.cost_usd))
    expect(answer).to_have_attribute("data-billed", "1", timeout=10000)
    expect(answer.locator(".meta")).to_contain_text(billed)
    expect(answer.locator(".meta")).to_contain_text(cost)
    expect(answer.locator(".meta")).to_contain_text("stopped")
    live_meta = answer.locator(".meta").inner_text()

    page.reload()
    kept = page.locator(".message.assistant")
    expect(kept.locator(".meta")).to_contain_text("stopped")
    expect(kept.locator(".meta")).to_contain_text(billed)
    expect(kept.locator(".meta")).to_contain_text(cost)
    assert kept.locator(".meta").inner_text() == live_meta
    expect(kept.locator(".content")).to_have_text(stored.content)
    _shot(page, "stopped")

    # Retry answers the same question again, replacing the stopped answer.
    fake_provider.behave("fake-a", reply="A complete answer.")
    page.click("#retry")
    expect(page.locator(".message.assistant .content")).to_have_text("A complete answer.")
    expect(page.locator(".message")).to_have_count(2)


def test_script_in_an_answer_renders_inert(page, gateway_url, fake_provider, make_user):
    fake_provider.behave("fake-a", reply=(
        'Look: <script>window.__pwned = 1; alert("script")</script> '
        '<img src="x" onerror="window.__pwned = 2; alert(\'img\')"> '
        '<a href="javascript:alert(3)">click</a> and **bold**\n\n'
        '```python\ndef f(x):\n    return x + 1\n```'))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    make_user("alice")
    _sign_in(page, gateway_url)
    _send(page, "Say something dangerous")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete", timeout=10000)

    content = answer.locator(".content")
    expect(content.locator("strong")).to_have_text("bold")
    assert content.locator("script").count() == 0
    assert page.locator("#messages [onerror]").count() == 0
    assert page.locator("#messages img").count() == 1
    assert content.locator("a").get_attribute("href") is None  # javascript: URL removed
    expect(content.locator("pre code.hljs span.hljs-keyword").first).to_have_text("def")
    page.wait_for_timeout(300)  # let a broken image's error event fire, if it could
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    _shot(page, "inert")

    page.reload()  # history renders through the same sanitiser
    expect(page.locator(".message.assistant .content strong")).to_have_text("bold")
    page.wait_for_timeout(300)
    assert page.locator("#messages script, #messages [onerror]").count() == 0
    assert page.evaluate("window.__pwned") is None and dialogs == []


def test_sessions_are_renamed_deleted_and_new_chats_start_empty(page, gateway_url, fake_provider,
                                                                make_user):
    make_user("alice")
    _sign_in(page, gateway_url)
    _send(page, "First chat")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "complete")
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    expect(page).to_have_url(f"{gateway_url}/chat/")
    _send(page, "Second chat")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "complete")
    sessions = page.locator("#sessions li .open")
    expect(sessions).to_have_text(["Second chat", "First chat"])

    first = page.locator("#sessions li").nth(1)
    first.hover()
    first.locator(".rename").click()
    page.fill("#sessions .rename-field", "Renamed")
    page.press("#sessions .rename-field", "Enter")
    expect(sessions).to_have_text(["Second chat", "Renamed"])

    sessions.nth(1).click()
    expect(page.locator(".message.user")).to_have_text("First chat")
    active = page.locator("#sessions li.active")
    active.locator(".delete").click()
    active.locator(".delete").click()  # the second click confirms
    expect(sessions).to_have_text(["Second chat"])
    expect(page.locator(".message")).to_have_count(0)
