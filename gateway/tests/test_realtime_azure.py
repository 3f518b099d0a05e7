"""/v1/realtime to Azure OpenAI's realtime deployments: the `openai` SDK's realtime client
against the live gateway, a fake Azure realtime upstream on loopback
(gateway/tests/fake_realtime.py) that refuses a handshake (401) unless its path, `api-version`,
`deployment` (or the v1 API's `model`) and credentials are the ones Azure expects, and the
ledger rows that come out. The Entra ID token comes from the fake Entra ID of
gateway/tests/fake_azure_gemini.py, through the gateway's one token cache.

Prices: 4.00 input, 0.40 cached input, 16.00 output (USD per million). The text scenario
reports 120 input tokens (64 cached) and 40 output: 56 x 4.00 + 64 x 0.40 + 40 x 16.00 =
889.6 micro-dollars.
"""
from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest
import websockets

from gateway.adapters.entra import tokens
from gateway.dialects import AZURE_REALTIME_API_VERSION
from gateway.tests.fake_azure_gemini import ENTRA_CLIENT, ENTRA_SECRET, fake_azure_gemini
from gateway.tests.fake_realtime import FakeRealtime

pytestmark = pytest.mark.django_db(transaction=True)

BOUND_S = 5.0
AZURE_KEY = "azure-fake-realtime-key"
DEPLOYMENT = "dep-rt"
COST = Decimal("0.0008896000")
FAKE_TOKEN_PREFIX = "Bearer eyJ0eXAiOiJKV1Qi.fake."


@pytest.fixture(scope="module")
def _fake_server() -> FakeRealtime:
    fake = FakeRealtime()
    fake.start()
    return fake


@pytest.fixture
def fake(_fake_server: FakeRealtime) -> FakeRealtime:
    _fake_server.reset()
    tokens.clear()
    yield _fake_server
    _fake_server.reset()
    tokens.clear()


def _provider(fake: FakeRealtime, name: str, api_key: str, translation: str = "") -> None:
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: {name}
    kind: azure_openai
    base_url: {fake.azure_base_url(name)}
    api_key: {api_key}
    {f"translation: {translation}" if translation else ""}
    models:
      gpt-rt-az: {DEPLOYMENT}
prices:
  - model: {DEPLOYMENT}
    input: "4.00"
    output: "16.00"
    cached_input: "0.40"
"""))


def _text_response(gateway_url: str, key: str) -> tuple[str, str]:
    """(the session's model as the upstream named it, the response's text)."""

    async def session():
        client = openai.AsyncOpenAI(api_key=key, base_url=f"{gateway_url}/v1", max_retries=0)
        async with client.realtime.connect(model="gpt-rt-az") as conn:
            async with asyncio.timeout(BOUND_S):
                created = await conn.recv()
                assert created.type == "session.created"
                await conn.send({"type": "response.create",
                                 "response": {"instructions": "scenario:text"}})
                text = []
                while (event := await conn.recv()).type != "response.done":
                    if event.type == "response.output_text.delta":
                        text.append(event.delta)
                assert event.response.usage.input_token_details.cached_tokens == 64
                return created.session.model, "".join(text)

    return asyncio.run(session())


def _assert_billed(ledger_rows, provider: str, count: int = 1) -> None:
    rows = ledger_rows(2 * count)
    assert len(rows) == 2 * count, [(r.surface, r.status) for r in rows]
    responses = [r for r in rows if r.surface == "realtime"]
    sessions = [r for r in rows if r.surface == "realtime.session"]
    assert len(responses) == len(sessions) == count
    for row in responses:
        assert (row.status, row.usage_source, row.public_model, row.upstream_model,
                row.provider_name) == ("ok", "reported", "gpt-rt-az", DEPLOYMENT, provider)
        assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (120, 40, 64)
        assert row.cost_usd == COST and row.stream
    for row in sessions:
        assert (row.status, row.http_status, row.input_tokens, row.output_tokens,
                row.cost_usd, row.provider_name) == ("ok", 101, 0, 0, 0, provider)


@pytest.mark.parametrize("translation,path,query", [
    ("", "/openai/realtime",
     {"api-version": AZURE_REALTIME_API_VERSION, "deployment": DEPLOYMENT}),
    ("{api_version: 2024-10-01-preview}", "/openai/realtime",
     {"api-version": "2024-10-01-preview", "deployment": DEPLOYMENT}),
    ("{api_version: v1}", "/openai/v1/realtime", {"model": DEPLOYMENT}),
], ids=["default-version", "dated-version", "v1"])
def test_azure_realtime_deployment_with_api_key(gateway_url, fake, make_key, ledger_rows,
                                                translation, path, query):
    name = "az-rt"
    _provider(fake, name, AZURE_KEY, translation)
    fake.admit[name] = lambda request: (
        request.path == f"/p/{name}{path}" and dict(request.query) == query
        and request.headers.get("api-key") == AZURE_KEY
        and "authorization" not in request.headers)

    assert _text_response(gateway_url, make_key()) == (DEPLOYMENT, "Hello world")
    [handshake] = fake.handshakes
    assert (handshake["path"], handshake["query"]) == (f"/p/{name}{path}", query)
    assert fake.wait_closed()
    _assert_billed(ledger_rows, name)


def test_azure_realtime_with_entra_token_from_the_shared_cache(gateway_url, fake, make_key,
                                                               ledger_rows):
    entra = fake_azure_gemini()
    name = "az-rt-entra"
    token_url = f"{entra.url('entra')}/tenant-1/oauth2/v2.0/token"
    _provider(fake, name, ENTRA_SECRET, f"{{entra: {{tenant_id: tenant-1, client_id: "
                                        f"{ENTRA_CLIENT}, token_url: '{token_url}'}}}}")
    fake.admit[name] = lambda request: (
        request.headers.get("authorization", "").startswith(FAKE_TOKEN_PREFIX)
        and "api-key" not in request.headers and request.query.get("deployment") == DEPLOYMENT)

    key = make_key()
    for _ in range(2):
        assert _text_response(gateway_url, key) == (DEPLOYMENT, "Hello world")
        assert fake.wait_closed()
        fake.closed.clear()
    assert entra.token_requests == 1  # the second session reused the cached token
    first, second = (h["headers"]["Authorization"] for h in fake.handshakes)
    assert first == second
    _assert_billed(ledger_rows, name, count=2)


def test_azure_realtime_refused_credentials_do_not_open(gateway_url, fake, make_key,
                                                        ledger_rows):
    name = "az-rt-bad"
    _provider(fake, name, "wrong-key")
    fake.admit[name] = lambda request: request.headers.get("api-key") == AZURE_KEY
    key = make_key()

    async def session():
        client = openai.AsyncOpenAI(api_key=key, base_url=f"{gateway_url}/v1", max_retries=0)
        async with client.realtime.connect(model="gpt-rt-az") as conn:
            await conn.recv()

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(session())
    assert refused.value.response.status_code == 502
    assert len(fake.handshakes) == 1 and fake.sent == []
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.provider_name, row.cost_usd) == \
        ("realtime.session", "upstream_error", name, 0)
