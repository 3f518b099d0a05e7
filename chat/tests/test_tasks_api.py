"""POST /api/tasks/<slug> (and /api/chat/<slug>) through a live gateway and the fake upstream."""
from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from chat.tests.conftest import sse_events
from providers.keys import api_key_hash
from providers.models import ApiKey
from usage.models import UsageRecord

REPLY = "Hello from the fake upstream, here is your answer."
SCHEMA = {"type": "object", "required": ["risk", "score"], "additionalProperties": False,
          "properties": {"risk": {"enum": ["low", "medium", "high"]},
                         "score": {"type": "integer", "minimum": 0, "maximum": 10}}}


def _post(url: str, key: str, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}",
                                                           **kwargs.pop("headers", {})},
                      timeout=20, **kwargs)


def test_task_answers_json_with_usage_cost_and_one_ledger_row(gateway_url, fake_provider,
                                                              api_key, make_task, ledger_rows):
    make_task("risk_check", system_prompt="Review for {audience}. Use {{braces}} literally.",
              max_tokens=300, temperature=0.2)
    response = _post(gateway_url, api_key, "/api/tasks/risk_check",
                     {"input": "Wire 1M to an unknown account", "variables": {"audience": "ops"}})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["output"] == REPLY
    assert data["usage"] == {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
                             "estimated": False}
    # 11 input at 1.00 and 7 output at 2.00 per million
    assert Decimal(data["cost_usd"]) == Decimal("0.000025")
    assert response.headers["x-gateway-provider"] == "fake-a"
    [call] = fake_provider.calls("fake-a")
    assert call.body["model"] == "up-gpt"
    assert call.body["messages"] == [
        {"role": "system", "content": "Review for ops. Use {braces} literally."},
        {"role": "user", "content": "Wire 1M to an unknown account"}]
    assert (call.body["max_tokens"], call.body["temperature"]) == (300, 0.2)
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.public_model) == ("task", "ok", "gpt-test")
    assert row.request_id == data["request_id"]
    assert row.cost_usd == Decimal(data["cost_usd"])


def test_task_streams_json_events_and_chat_path_is_an_alias(gateway_url, fake_provider, api_key,
                                                           make_task, ledger_rows):
    make_task("risk_check")
    response = _post(gateway_url, api_key, "/api/chat/risk_check?stream=1", {"input": "hi"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[0] == {"type": "provider", "provider": "fake-a"}
    assert "".join(e["content"] for e in events if e["type"] == "delta") == REPLY
    assert events[-2] == {"type": "usage", "input_tokens": 11, "output_tokens": 7,
                          "cost_usd": "0.0000250000", "estimated": False}
    assert events[-1] == {"type": "done"}
    assert {e["type"] for e in events} == {"provider", "delta", "usage", "done"}
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.stream) == ("task", "ok", True)


def test_task_with_schema_returns_the_parsed_output(gateway_url, fake_provider, api_key,
                                                    make_task):
    fake_provider.behave("fake-a", reply='```json\n{"risk": "high", "score": 9}\n```')
    make_task("risk_check", output_schema=SCHEMA)
    response = _post(gateway_url, api_key, "/api/tasks/risk_check", {"input": {"amount": 10}})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"risk": "high", "score": 9}
    body = fake_provider.calls("fake-a")[0].body
    assert body["messages"][-1] == {"role": "user", "content": '{"amount": 10}'}
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "risk_check", "schema": SCHEMA}}


def test_schema_violation_is_502_with_the_errors_and_billed(gateway_url, fake_provider, api_key,
                                                            make_task, ledger_rows):
    fake_provider.behave("fake-a", reply='{"risk": "extreme", "score": 11, "note": "x"}')
    make_task("risk_check", output_schema=SCHEMA)
    response = _post(gateway_url, api_key, "/api/tasks/risk_check", {"input": "hi"})
    assert response.status_code == 502
    data = response.json()
    assert data["error"]["code"] == "schema_violation"
    assert data["output"] == '{"risk": "extreme", "score": 11, "note": "x"}'
    assert data["schema_errors"] == ['$.risk: must be one of ["low", "medium", "high"]',
                                     "$.score: must be at most 10",
                                     "$.note: is not an allowed property"]
    assert data["usage"]["output_tokens"] == 7 and data["request_id"]
    [row] = ledger_rows(1)
    assert (row.status, row.error_type, row.http_status) == \
        ("upstream_error", "schema_violation", 502)
    assert row.cost_usd == Decimal(data["cost_usd"]) > 0


def test_streamed_schema_violation_ends_with_an_error_event(gateway_url, fake_provider, api_key,
                                                           make_task, ledger_rows):
    make_task("risk_check", output_schema=SCHEMA)
    response = _post(gateway_url, api_key, "/api/tasks/risk_check?stream=1", {"input": "hi"})
    events = sse_events(response)
    [error] = [e for e in events if e["type"] == "error"]
    assert error["message"] == "the output does not match the task's JSON schema"
    assert error["schema_errors"][0].startswith("$: the output is not JSON")
    assert [e["type"] for e in events[-3:]] == ["error", "usage", "done"]
    [row] = ledger_rows(1)
    assert (row.status, row.error_type) == ("upstream_error", "schema_violation")


def test_key_not_allowed_is_403_and_allowed_key_or_team_passes(gateway_url, fake_provider,
                                                               make_key, make_task):
    allowed, other, teammate = (make_key(name="allowed"), make_key(name="other"),
                                make_key(name="teammate", team="risk"))
    task = make_task("risk_check", keys=[ApiKey.objects.get(key_hash=api_key_hash(allowed))])
    denied = _post(gateway_url, other, "/api/tasks/risk_check", {"input": "hi"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "task_not_allowed"
    assert _post(gateway_url, teammate, "/api/tasks/risk_check", {"input": "hi"}).status_code == 403
    assert _post(gateway_url, allowed, "/api/tasks/risk_check", {"input": "hi"}).status_code == 200
    task.allowed_teams.set([ApiKey.objects.get(key_hash=api_key_hash(teammate)).team])
    from providers.services import config_version_bump
    config_version_bump()
    assert _post(gateway_url, teammate, "/api/tasks/risk_check", {"input": "hi"}).status_code == 200
    assert UsageRecord.objects.filter(surface="task").count() == 2


@pytest.mark.parametrize("path, body, status, code", [
    ("/api/tasks/nope", {"input": "x"}, 404, "task_not_found"),
    ("/api/tasks/risk_check", {"variables": {}}, 400, None),
    ("/api/tasks/risk_check", {"input": "x", "variables": []}, 400, None),
    ("/api/tasks/risk_check", {"input": "x"}, 400, None),  # the template needs {audience}
])
def test_bad_calls_are_refused_before_any_upstream_call(gateway_url, fake_provider, api_key,
                                                       make_task, path, body, status, code):
    make_task("risk_check", system_prompt="For {audience}.")
    response = _post(gateway_url, api_key, path, body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert not fake_provider.calls() and not UsageRecord.objects.exists()


def test_missing_variable_is_named(gateway_url, fake_provider, api_key, make_task):
    make_task("risk_check", system_prompt="For {audience} in {region}.")
    response = _post(gateway_url, api_key, "/api/tasks/risk_check",
                     {"input": "x", "variables": {"audience": "ops"}})
    assert "region" in response.json()["error"]["message"]


def test_missing_key_is_401_and_model_not_allowed_is_403(gateway_url, fake_provider, make_key,
                                                         make_task):
    make_task("risk_check")
    assert httpx.post(f"{gateway_url}/api/tasks/risk_check", json={"input": "x"}).status_code == 401
    limited = make_key(models=["other-model"])
    response = _post(gateway_url, limited, "/api/tasks/risk_check", {"input": "x"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "model_not_allowed")


def test_budget_applies_to_tasks(gateway_url, fake_provider, make_key, make_task, ledger_rows):
    make_task("risk_check", max_tokens=1000)
    key = make_key(budget_usd="0.000001")
    response = _post(gateway_url, key, "/api/tasks/risk_check", {"input": "x"})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "budget_exceeded"
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.error_type) == ("task", "rejected", "budget_exceeded")


def test_idempotency_key_replays_the_first_answer(gateway_url, fake_provider, api_key, make_task):
    make_task("risk_check")
    first = _post(gateway_url, api_key, "/api/tasks/risk_check", {"input": "x"},
                  headers={"Idempotency-Key": "abc"})
    again = _post(gateway_url, api_key, "/api/tasks/risk_check", {"input": "x"},
                  headers={"Idempotency-Key": "abc"})
    assert again.headers["idempotent-replayed"] == "true"
    assert json.loads(again.content) == first.json()
    assert len(fake_provider.calls()) == 1


def test_task_edits_reach_the_running_server(gateway_url, fake_provider, api_key, make_task):
    make_task("risk_check", system_prompt="First.")
    _post(gateway_url, api_key, "/api/tasks/risk_check", {"input": "x"})
    make_task("risk_check", system_prompt="Second.")
    _post(gateway_url, api_key, "/api/tasks/risk_check", {"input": "x"})
    systems = [c.body["messages"][0]["content"] for c in fake_provider.calls()]
    assert systems == ["First.", "Second."]
