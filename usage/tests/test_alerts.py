"""Budget alerts: a webhook POST once the threshold is crossed, once per period."""
from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from providers.models import Team
from providers.services import api_key_create
from usage.alerts import budget_alerts_send
from usage.budgets import BudgetLimit, budget_reserve, usd_to_units
from usage.tests.test_rollups import _entry_with_id
from usage.services import usage_record_write


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


@pytest.mark.django_db
def test_team_alert_fires_once_when_the_threshold_is_crossed(webhook):
    url, received = webhook
    key, _ = api_key_create(name="k", team="research")
    Team.objects.filter(name="research").update(budget_usd=Decimal("1"), budget_period="month",
                                                budget_alert_pct=50, alert_webhook_url=url)
    team = Team.objects.get(name="research")
    limit = BudgetLimit(scope="team", scope_id=team.id, limit_usd=Decimal("1"), period="month")
    budget_reserve(request_id="crashed", limits=[limit], amount_units=usd_to_units(Decimal("0.6")))
    assert budget_alerts_send() == 0  # reserved is not spent
    usage_record_write(entry=_entry_with_id("crashed", key), settle_budget=True)  # spends 0.5
    assert budget_alerts_send() == 1
    assert budget_alerts_send() == 0
    [alert] = received
    assert (alert["scope"], alert["threshold_pct"], alert["spent_usd"]) == ("team", 50, "0.5000000000")
    assert alert["name"] == "team research"
