"""The chat page in headless Chromium against a live gateway and the fake upstream: a person
signs in, watches an answer stream in, reloads, stops an answer, and a hostile answer stays
inert; history titles fit the sidebar, a model whose circuits are all open is offered as
unavailable, the gateway's errors show their `names` as code, and the page fits a 390 px phone.
Every test saves var/screenshots/<test name>-1366.png and -390.png (git-ignored)."""
from __future__ import annotations

import time

from playwright.sync_api import expect

from chat.models import ChatMessage, ChatSession
from chat.tests.conftest import PASSWORD, PHONE, circuits, circuits_open
from providers.models import ModelRoute
from providers.services import config_version_bump

REPLY = "Hello from the fake upstream, here is your answer."


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


def _answered(page) -> None:
    """The last answer is complete and its turn is over: the page takes new input (New chat and
    Send are ignored while a turn is still reading the end of its stream)."""
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "complete")
    expect(page.locator("#stop")).to_be_hidden()


def test_answer_streams_in_and_the_history_survives_a_reload(page, gateway_url, fake_provider,
                                                             make_user, screenshots):
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
    expect(answer).to_have_attribute("data-status", "complete", timeout=10000)
    expect(answer.locator(".content")).to_have_text(REPLY)
    expect(answer.locator(".meta")).to_contain_text("fake-a")
    expect(page).to_have_url(f"{gateway_url}/chat/{ChatMessage.objects.first().session_id}/")

    page.reload()
    expect(page.locator(".message.user")).to_have_text("Tell me something")
    expect(page.locator(".message.assistant .content")).to_have_text(REPLY)
    expect(page.locator("#sessions li .open")).to_have_text(["Tell me something"])
    screenshots()

    # The next turn carries the history as context.
    fake_provider.behave("fake-a", reply="Second answer.")
    _send(page, "And then?")
    _answered(page)
    assert [m["role"] for m in fake_provider.calls()[-1].body["messages"]] == \
        ["user", "assistant", "user"]
    # The page's own files work under its strict Content-Security-Policy.
    assert not [m for m in console if "Content Security Policy" in m], console


def test_stop_keeps_the_partial_answer_and_the_ledger_row_is_client_disconnected(
        page, gateway_url, fake_provider, make_user, ledger_rows, screenshots):
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
    screenshots()

    # Retry answers the same question again, replacing the stopped answer.
    fake_provider.behave("fake-a", reply="A complete answer.")
    page.click("#retry")
    expect(page.locator(".message.assistant .content")).to_have_text("A complete answer.")
    expect(page.locator(".message")).to_have_count(2)


def test_script_in_an_answer_renders_inert(page, gateway_url, fake_provider, make_user,
                                           screenshots):
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
    screenshots()

    page.reload()  # history renders through the same sanitiser
    expect(page.locator(".message.assistant .content strong")).to_have_text("bold")
    page.wait_for_timeout(300)
    assert page.locator("#messages script, #messages [onerror]").count() == 0
    assert page.evaluate("window.__pwned") is None and dialogs == []


def test_sessions_are_renamed_deleted_and_new_chats_start_empty(page, gateway_url, fake_provider,
                                                                make_user, screenshots):
    make_user("alice")
    _sign_in(page, gateway_url)
    _send(page, "First chat")
    _answered(page)
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    expect(page).to_have_url(f"{gateway_url}/chat/")
    _send(page, "Second chat")
    _answered(page)
    sessions = page.locator("#sessions li .open")
    expect(sessions).to_have_text(["Second chat", "First chat"])

    first = page.locator("#sessions li").nth(1)
    first.hover()
    first.locator(".rename").click()
    page.fill("#sessions .rename-field", "Renamed")
    page.press("#sessions .rename-field", "Enter")
    expect(sessions).to_have_text(["Second chat", "Renamed"])

    # The keyboard reaches Rename too: a focused title shows its row's buttons.
    page.mouse.move(900, 450)
    sessions.nth(0).focus()
    page.keyboard.press("Tab")
    expect(page.locator("#sessions li").nth(0).locator(".rename")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.type("Typed")
    page.keyboard.press("Enter")
    expect(sessions).to_have_text(["Typed", "Renamed"])
    screenshots()

    sessions.nth(1).click()
    expect(page.locator(".message.user")).to_have_text("First chat")
    active = page.locator("#sessions li.active")
    active.locator(".delete").click()
    active.locator(".delete").click()  # the second click confirms
    expect(sessions).to_have_text(["Typed"])
    expect(page.locator(".message")).to_have_count(0)


TITLE_30 = "Compare our Q3 and Q4 invoices"


def test_a_history_title_gets_the_sidebars_width_and_a_long_one_its_first_words(
        page, gateway_url, fake_provider, make_user, screenshots):
    assert len(TITLE_30) == 30
    make_user("alice")
    _sign_in(page, gateway_url)
    _send(page, TITLE_30)
    _answered(page)
    title = page.locator("#sessions li .open")
    expect(title).to_have_text([TITLE_30])
    # The active row, hovered or not, shows the whole title: nothing is cut off.
    for hover in (False, True):
        if hover:
            title.hover()
        fit = page.evaluate("""() => {
            const open = document.querySelector('#sessions li .open');
            const bar = document.querySelector('.sidebar').getBoundingClientRect();
            const box = open.getBoundingClientRect();
            return {scroll: open.scrollWidth, client: open.clientWidth,
                    inside: box.left >= bar.left && box.right <= bar.right};
        }""")
        assert fit["scroll"] <= fit["client"] and fit["inside"], (hover, fit)
    expect(title).to_have_attribute("title", TITLE_30)

    # A long first message: the stored title is its first words (at most 60 characters,
    # cut after a word), shown with an ellipsis where the sidebar is narrower, whole on hover.
    page.mouse.move(900, 450)
    page.click("#new-chat")
    long = ("Write a migration plan for moving the billing service from the monolith to "
            "its own database, with a rollback step")
    _send(page, long)
    _answered(page)
    stored = ChatSession.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1])).title
    assert stored == "Write a migration plan for moving the billing service from…"
    first = page.locator("#sessions li .open").first
    expect(first).to_have_text(stored)
    expect(first).to_have_attribute("title", stored)
    cut = first.evaluate("(e) => [e.scrollWidth > e.clientWidth, getComputedStyle(e).textOverflow]")
    assert cut == [True, "ellipsis"]
    expect(page.locator("#title")).to_have_text(stored)
    screenshots()


def test_a_model_whose_circuits_are_all_open_is_offered_as_unavailable(
        page, gateway_url, circuit_providers, make_user, api_key, screenshots):
    make_user("alice")
    _sign_in(page, gateway_url)
    options = page.locator("#model option")
    expect(options).to_have_text(["gpt-mixed", "gpt-ok", "gpt-test"])
    assert page.locator("#model option:disabled").count() == 0

    # Real 500s from the fake upstreams until the breakers open: both of gpt-test's routes,
    # and gpt-mixed's first route only (its fallback on fake-c answers).
    assert circuits_open(gateway_url, api_key, circuit_providers, failing=("fake-a", "fake-b"),
                         model="gpt-test", requests=2) == [502, 502]
    assert circuits_open(gateway_url, api_key, circuit_providers, failing=("fake-a",),
                         model="gpt-mixed", requests=2) == [200, 200]
    assert circuits(gateway_url)[("fake-b", "gpt-test")] == "open"
    assert circuits(gateway_url)[("fake-a", "gpt-mixed")] == "open"

    page.evaluate("window.localStorage.setItem('chat.model', 'gpt-test')")
    page.reload()
    expect(options).to_have_text(["gpt-mixed", "gpt-ok", "gpt-test (unavailable)"])
    assert page.locator("#model option:disabled").all_inner_texts() == ["gpt-test (unavailable)"]
    assert page.locator("#model option[value=gpt-test]").get_attribute("title").startswith(
        "Its upstreams are failing; try again in ")
    # The remembered model cannot serve: the picker starts on one that can, and it answers.
    expect(page.locator("#model")).to_have_value("gpt-mixed")
    _send(page, "Still there?")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".meta")).to_contain_text("fake-c")
    screenshots()


def test_a_gateway_error_shows_its_names_as_code_never_as_html(
        page, gateway_url, circuit_providers, make_user, api_key, screenshots):
    make_user("alice")
    _sign_in(page, gateway_url)
    page.select_option("#model", "gpt-test")
    # The circuits open while the page is open: the next message meets the gateway's refusal.
    assert circuits_open(gateway_url, api_key, circuit_providers, failing=("fake-a", "fake-b"),
                         model="gpt-test", requests=2) == [502, 502]
    _send(page, "Are you there?")
    error = page.locator(".message.assistant .error")
    expect(error).to_have_text("no healthy deployment of gpt-test: every circuit is open")
    expect(error.locator("code")).to_have_text(["gpt-test"])
    assert "`" not in error.inner_text() and "`" not in error.text_content()
    # After the failure the picker shows the model as it is now.
    expect(page.locator("#model option[value=gpt-test]")).to_have_text("gpt-test (unavailable)")

    page.reload()  # the stored error renders the same way
    error = page.locator(".message.assistant .error")
    expect(error.locator("code")).to_have_text(["gpt-test"])
    assert "`" not in error.text_content()

    # A name quoted in an error is text, even when it looks like HTML (a tampered picker).
    hostile = '<img src=x onerror="window.__pwned = 1">'
    page.evaluate("(name) => { const o = new Option(name, name); "
                  "document.querySelector('#model').append(o); o.selected = true; }", hostile)
    page.click("#new-chat")
    _send(page, "hi")
    error = page.locator(".message.assistant .error")
    expect(error.locator("code")).to_have_text([hostile])
    page.wait_for_timeout(300)  # a broken image's error event would have fired by now
    assert page.locator("#messages img").count() == 0
    assert page.evaluate("window.__pwned") is None
    screenshots()


LONG_MODEL = "bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0"
URL = ("https://wiki.example.test/engineering/runbooks/billing-service/"
       "database-migration-2026-rollback-procedure?version=7")


def test_the_page_fits_a_390_px_phone_with_the_history_behind_a_button(
        page, gateway_url, fake_provider, make_user, screenshots):
    fake_provider.behave("fake-a", reply=(
        "A long line: " + "x" * 300 + "\n\n```\n" + "y = 1  # " + "z" * 200 + "\n```\n\n"
        "| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n" + "| wide cell text " * 6 + "|"))
    # What widened the page: a long model name in the picker and a pasted URL as the title.
    route = ModelRoute.objects.get()
    ModelRoute.objects.create(provider=route.provider, upstream_model=route.upstream_model,
                              public_model=LONG_MODEL)
    config_version_bump()
    make_user("alice")
    page.set_viewport_size(PHONE)
    _sign_in(page, gateway_url)

    def fits() -> None:
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths

    fits()
    page.select_option("#model", LONG_MODEL)
    _send(page, URL)
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    fits()
    toggle = page.locator("#history-toggle")
    expect(toggle).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#new-chat")).to_be_hidden()

    # The composer stays on screen and usable.
    for selector in ("#input", "#send"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
        assert box["y"] + box["height"] <= 844, (selector, box)

    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#new-chat")).to_be_focused()
    expect(page.locator("#sessions li .open")).to_have_text([URL[:59] + "…"])
    fits()
    expect(page.locator("#input")).to_be_visible()
    screenshots()
    page.keyboard.press("Escape")
    expect(page.locator("#sessions")).to_be_hidden()
    expect(toggle).to_be_focused()

    # New chat from the panel closes it; a second message is sent from the phone.
    toggle.click()
    page.click("#new-chat")
    expect(page.locator("#sessions")).to_be_hidden()
    expect(page.locator(".message")).to_have_count(0)
    _send(page, "And on a phone?")
    _answered(page)
    fits()
    toggle.click()
    expect(page.locator("#sessions li .open")).to_have_count(2)
    page.locator("#sessions li .open").nth(1).click()
    expect(page.locator("#sessions")).to_be_hidden()
    expect(page.locator(".message.user")).to_have_text(URL)
    fits()
