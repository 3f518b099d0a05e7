"""The report pages in headless Chromium against the live server: the chart is drawn, a filter
changes the numbers. Screenshots are kept under test-artifacts/."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from providers.services import api_key_create
from usage.rollups import usage_rollup
from usage.tests.test_reports import at_day, ledger_write, make_user, utc_today

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

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


def test_report_draws_its_chart_and_a_filter_changes_the_numbers(gateway_url, browser_ledger, page):
    ARTIFACTS.mkdir(exist_ok=True)
    today = browser_ledger
    page.set_viewport_size({"width": 1280, "height": 1000})
    _sign_in(page, gateway_url, f"/reports/?from={today - timedelta(days=13)}&to={today}")
    assert page.url.startswith(f"{gateway_url}/reports/")
    page.wait_for_selector("#chart[data-drawn='14'] canvas")
    ink = page.evaluate(CANVAS_INK)
    assert ink["width"] > 300 and ink["height"] > 200
    assert ink["inked"] > 2000 and ink["bars"] > 500, ink
    page.screenshot(path=str(ARTIFACTS / "reports-all-teams.png"), full_page=True)

    # 8 days: red 1.25..8.25 (sum 38.00), blue 0.40 each (3.20).
    assert page.text_content("#grand-cost") == "$41.20"
    assert page.text_content("#grand-requests") == "16"
    with page.expect_navigation():
        page.select_option("#id_team", label="blue")  # the form submits itself on change
    assert "team=" in page.url
    page.wait_for_selector("#chart[data-drawn] canvas")
    assert page.text_content("#grand-cost") == "$3.20"
    assert page.text_content("#grand-requests") == "8"
    rows = page.locator("#by-key tbody tr")
    assert rows.count() == 1 and rows.first.text_content().strip().startswith("blue-app")
    page.screenshot(path=str(ARTIFACTS / "reports-team-blue.png"), full_page=True)

    with page.expect_navigation():
        page.click("#by-team thead th:nth-child(1) a")  # sort the team table by name
    assert "sort_team=" in page.url


def test_budget_page_renders(gateway_url, browser_ledger, page):
    api_key_create(name="capped-app", team="red", budget_usd=Decimal("25"), budget_period="month")
    ARTIFACTS.mkdir(exist_ok=True)
    _sign_in(page, gateway_url, "/reports/budgets/")
    row = page.locator("#budgets tbody tr").first
    assert "capped-app" in row.text_content() and "25.00" in row.text_content()
    page.screenshot(path=str(ARTIFACTS / "reports-budgets.png"), full_page=True)
