"""The report pages in headless Chromium against the live server, at 1366 px and on a 390 px
phone (no horizontal overflow of the page): the charts are drawn, the stacked chart's switch,
the type-to-filter checkbox lists, the burn-down, the operations page, the one money rule in
the browser, and live updates: a request through the real gateway appears on the open page
without a reload. Screenshots are kept under var/screenshots/ (gitignored)."""
from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from providers.services import api_key_create
from usage.amounts import usd_display
from usage.rollups import usage_rollup
from usage.tests.test_reports import at_day, ledger_write, make_user, utc_today
from usage.tests.test_reports_charts import MONEY

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
WIDTHS = (1366, 390)
LIVE_TIMEOUT_MS = 15_000

CANVAS_INK = """() => {
  const canvas = document.querySelector('#chart canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0, bars = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0) inked++;
    if (data[i + 3] > 0 && data[i + 2] > data[i] + 60) bars++;  // the blue spend bars
  }
  return {width: canvas.width, height: canvas.height, inked, bars};
}"""
OVERFLOW = "() => [document.documentElement.scrollWidth, window.innerWidth]"


@pytest.fixture
def browser_ledger(transactional_db):
    today = utc_today()
    red, _ = api_key_create(name="red-app", team="red")
    blue, _ = api_key_create(name="blue-app", team="blue")
    for back in range(8):
        day = today - timedelta(days=back)
        ledger_write(at=at_day(day, hour=1), key=red, cost=Decimal("1.25") + back, model="gpt-x",
                     input_tokens=1000 + back * 200, output_tokens=300)
        ledger_write(at=at_day(day, hour=2), key=blue, cost=Decimal("0.40"), provider="prov-b",
                     model="claude-y", input_tokens=500, output_tokens=900)
        if back:
            usage_rollup(day=day)
    make_user("finance-ann", finance=True, password="a-long-test-password")
    return today


def _sign_in(page, gateway_url: str, next_path: str) -> None:
    page.goto(f"{gateway_url}/admin/login/?next={next_path}")
    page.fill("#id_username", "finance-ann")
    page.fill("#id_password", "a-long-test-password")
    with page.expect_navigation():
        page.click("input[type=submit]")


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _fits(page, width: int) -> None:
    scroll_width, inner_width = page.evaluate(OVERFLOW)
    assert inner_width == width
    if width == 390:
        assert scroll_width <= inner_width, (scroll_width, inner_width)


@pytest.mark.parametrize("width", WIDTHS)
def test_report_draws_its_charts_and_the_filters_change_the_numbers(gateway_url, browser_ledger,
                                                                   page, width):
    today = browser_ledger
    page.set_viewport_size({"width": width, "height": 1000})
    _sign_in(page, gateway_url, f"/reports/?from={today - timedelta(days=13)}&to={today}")
    assert page.url.startswith(f"{gateway_url}/reports/")
    page.wait_for_selector("#chart[data-drawn='14'] canvas")
    ink = page.evaluate(CANVAS_INK)
    assert ink["width"] > 250 and ink["height"] > 200
    assert ink["inked"] > 2000 and ink["bars"] > 300, ink
    _fits(page, width)
    _shot(page, f"reports-all-teams-{width}")

    # 8 days: red 1.25..8.25 (sum 38.00), blue 0.40 each (3.20).
    assert page.text_content("#grand-cost") == "$41.20"
    assert page.text_content("#grand-requests") == "16"

    # The stacked chart: by team first; the switch re-reads the page by another grouping.
    assert page.is_visible("#stack-team svg") and page.locator("#stack-model").count() == 0
    assert page.locator("#stack-team rect").count() == 16
    with page.expect_navigation():
        page.check("input[name=stack][value=model]")
    assert "stack=model" in page.url
    assert page.is_visible("#stack-model svg") and page.locator("#stack-team").count() == 0
    legend = page.text_content("#stack-model .legend")
    assert "gpt-x" in legend and "$38.00" in legend and "claude-y" in legend and "$3.20" in legend
    _shot(page, f"reports-stacked-by-model-{width}")

    # The team filter: type to filter, pick with the keyboard, apply.
    search = page.locator("[data-pick=team] .pick-search")
    search.fill("blu")
    assert not page.is_visible("[data-pick=team] label:has-text('red')")
    search.press("ArrowDown")
    page.keyboard.press("Space")
    assert page.is_checked("[data-pick=team] label:has-text('blue') input")
    with page.expect_navigation():
        page.click("#filters button[type=submit]")
    assert "team=" in page.url
    page.wait_for_selector("#chart[data-drawn] canvas")
    assert page.text_content("#grand-cost") == "$3.20"
    assert page.text_content("#grand-requests") == "8"
    rows = page.locator("#by-key tbody tr")
    assert rows.count() == 1 and rows.first.text_content().strip().startswith("blue-app")
    _fits(page, width)
    _shot(page, f"reports-team-blue-{width}")

    with page.expect_navigation():
        page.click("#by-team thead th:nth-child(1) a")  # sort the team table by name
    assert "sort_team=" in page.url


def test_the_browser_formats_money_by_the_same_rule_as_the_server(gateway_url, browser_ledger,
                                                                  page):
    _sign_in(page, gateway_url, "/reports/")
    amounts = [amount for amount, _ in MONEY]
    shown = page.evaluate("(xs) => xs.map((x) => window.gatewayMoney(Number(x)))", amounts)
    assert shown == [usd_display(Decimal(a)) for a in amounts]


@pytest.mark.parametrize("width", WIDTHS)
def test_budget_page_shows_the_burn_down_and_forecast(gateway_url, browser_ledger, page, width):
    key, _ = api_key_create(name="capped-app", team="red", budget_usd=Decimal("25"),
                            budget_period="month")
    page.set_viewport_size({"width": width, "height": 900})
    _sign_in(page, gateway_url, "/reports/budgets/")
    row = page.locator("#budgets tbody tr").first
    assert "capped-app" in row.text_content() and "$25.00" in row.text_content()
    section = page.locator(f"#burndown-key-{key.pk}")
    # Spent, forecast and limit lines; nothing spent yet, so the forecast is $0.00.
    assert section.locator("svg polyline").count() == 3
    assert "At this rate the period ends at $0.00, within the limit." in section.text_content()
    assert section.locator("svg circle title").last.text_content().startswith("Limit · ")
    _fits(page, width)
    _shot(page, f"reports-budgets-{width}")


@pytest.mark.parametrize("width", WIDTHS)
def test_operations_page_shows_percentiles_errors_and_circuits(gateway_url, browser_ledger,
                                                               mock_provider, page, width):
    page.set_viewport_size({"width": width, "height": 1000})
    _sign_in(page, gateway_url, "/reports/operations/")
    assert page.url.startswith(f"{gateway_url}/reports/operations/")
    # Today's two rows (hours 1 and 2) count when they fall in the last 24 hours.
    table = page.locator("#ops-table tbody")
    assert table.locator("tr").count() >= 1
    assert page.locator("#chart-latency-p95 svg").count() == 1
    circuits = page.locator("#circuits table.circuits tbody tr")
    assert circuits.count() == 1 and "mock-test" in circuits.first.text_content()
    assert "closed" in circuits.first.text_content()
    _fits(page, width)
    _shot(page, f"operations-{width}")


def _chat(gateway_url: str, key: str) -> None:
    response = httpx.post(f"{gateway_url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "mock-test", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path, counter", [("/reports/", "#grand-requests"),
                                           ("/reports/operations/", "#ops-requests")])
def test_a_request_through_the_gateway_appears_live(gateway_url, browser_ledger, mock_provider,
                                                    page, path, counter):
    key = api_key_create(name="live-app", team="red")[1]
    _sign_in(page, gateway_url, path)
    page.wait_for_selector(".live-body[data-live-state=open]", timeout=LIVE_TIMEOUT_MS)
    before = int(page.text_content(counter).replace(",", ""))
    _chat(gateway_url, key)
    page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel).textContent.replace(/,/g, '')) === n",
        arg=[counter, before + 1], timeout=LIVE_TIMEOUT_MS)
    assert page.locator(".live-body").get_attribute("data-live-updates") == "1"
    if path == "/reports/":
        page.wait_for_selector("#chart[data-drawn] canvas")
        assert "mock-test" in page.text_content("#by-model")
    _shot(page, "live" + path.strip("/").replace("/", "-"))


def test_the_live_socket_needs_the_finance_session_and_an_allowed_origin(gateway_url, browser_ledger):
    """The WebSocket refuses (403 at the handshake) a visitor without a session, staff outside
    finance and another site's Origin; a finance session from the gateway's own origin gets
    the page's fragment when the ledger grows."""
    import asyncio

    import websockets
    from django.test import Client

    ws_url = gateway_url.replace("http://", "ws://") + "/reports/live"
    origin = gateway_url

    def session(username: str) -> str:
        client = Client()
        client.force_login(make_user(username, finance=username.startswith("fin")))
        return client.cookies["sessionid"].value

    async def status(cookie: str | None, origin: str) -> int:
        headers = {"cookie": f"sessionid={cookie}"} if cookie else {}
        try:
            async with websockets.connect(ws_url, origin=origin, additional_headers=headers,
                                          open_timeout=10):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    async def first_update(cookie: str) -> dict:
        async with websockets.connect(ws_url, origin=origin, open_timeout=10,
                                      additional_headers={"cookie": f"sessionid={cookie}"}) as ws:
            # The socket read the ledger's newest id before the handshake completed.
            await asyncio.to_thread(ledger_write, at=at_day(utc_today(), 5), cost="0.0042")
            return json.loads(await asyncio.wait_for(ws.recv(), 15))

    finance, staff = session("fin-bea"), session("staff-carl")
    assert asyncio.run(status(None, origin)) == 403
    assert asyncio.run(status(staff, origin)) == 403
    assert asyncio.run(status(finance, "http://evil.example")) == 403
    assert asyncio.run(status(finance, origin)) == 101
    update = asyncio.run(first_update(finance))
    assert 'id="grand-requests">17<' in update["html"]
