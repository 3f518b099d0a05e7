"""The `azure_openai` kind end to end: a live gateway in front of the fake Azure OpenAI and
Entra ID (gateway/tests/fake_azure_gemini.py), driven by the official `openai` and
`anthropic` SDKs on every surface, streamed and not; the fake itself checked against
`openai.AzureOpenAI`, so the URLs, the `api-version` and the auth headers the gateway sends
are the ones Azure's own client sends.

Prices: 1.00 input, 0.50 cached input, 2.00 output (USD per million). The fake reports 11
prompt tokens (4 cached) and 7 output: 7 x 1.00 + 4 x 0.50 + 7 x 2.00 = 23 micro-dollars.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import openai
import pytest

from gateway.adapters.entra import tokens
from gateway.tests.fake_azure_gemini import (AZURE_KEY, ENTRA_CLIENT, ENTRA_SECRET, REPLY,
                                             fake_azure_gemini)
from providers.config_file import ConfigError, config_parse
from usage.models import UsageRecord

COST = Decimal("0.0000230000")
VERSION = "2024-10-21"


@pytest.fixture
def azure():
    fake = fake_azure_gemini()
    tokens.clear()
    yield fake
    tokens.clear()


def _config(fake, **providers) -> str:
    base = fake.url("azure")
    token_url = f"{fake.url('entra')}/tenant-1/oauth2/v2.0/token"
    entries = {
        "az-key": f"api_key: {AZURE_KEY}",
        "az-v1": f"api_key: {AZURE_KEY}\n    translation: {{api_version: v1}}",
        "az-resp": f"api_key: {AZURE_KEY}\n    translation: {{responses_api: true}}",
        "az-resp-dated": f"api_key: {AZURE_KEY}\n    translation: {{responses_api: true, "
                         f"api_version: 2025-04-01-preview}}",
        "az-entra": f"api_key: {ENTRA_SECRET}\n    translation: {{entra: {{tenant_id: tenant-1, "
                    f"client_id: {ENTRA_CLIENT}, token_url: '{token_url}'}}}}",
    }
    out = ["providers:"]
    for name in providers or entries:
        out.append(f"  - name: {name}\n    kind: azure_openai\n    base_url: {base}\n"
                   f"    {entries[name]}\n    models:\n      {name}-model: dep-4o")
    out.append('prices:\n  - model: dep-4o\n    input: "1.00"\n    output: "2.00"\n'
               '    cached_input: "0.50"')
    return "\n".join(out) + "\n"


@pytest.fixture
def azure_providers(azure, transactional_db):
    from providers.services import config_apply

    config_apply(spec=config_parse(_config(azure)))
    return azure


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _anthropic(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)


def _ask(surface: str, url: str, key: str, model: str, stream: bool) -> tuple[str, str]:
    """(text, stop reason in the surface's words) of one question through the gateway."""
    if surface == "chat":
        client = _openai(url, key)
        kwargs = dict(model=model, messages=[{"role": "user", "content": "hi"}])
        if stream:
            chunks = list(client.chat.completions.create(**kwargs, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return text, [c.choices[0].finish_reason for c in chunks
                          if c.choices and c.choices[0].finish_reason][0]
        completion = client.chat.completions.create(**kwargs)
        return completion.choices[0].message.content, completion.choices[0].finish_reason
    if surface == "responses":
        client = _openai(url, key)
        if stream:
            with client.responses.stream(model=model, input="hi") as s:
                response = s.get_final_response()
        else:
            response = client.responses.create(model=model, input="hi")
        return response.output_text, response.status
    client = _anthropic(url, key)
    kwargs = dict(model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    return "".join(b.text for b in message.content if b.type == "text"), message.stop_reason


def _row(ledger_rows) -> UsageRecord:
    [row] = ledger_rows(1)
    assert (row.status, row.usage_source) == ("ok", "reported")
    return row


def test_the_fake_answers_azures_own_client_as_azure_does(azure):
    """openai.AzureOpenAI against the fake: the deployment URL with its api-version, the
    api-key header, the stream opening with the anonymous prompt-filter chunk; and with an
    Entra token from the fake token endpoint."""
    client = openai.AzureOpenAI(azure_endpoint=azure.url("azure"), api_key=AZURE_KEY,
                                api_version=VERSION, max_retries=0)
    completion = client.chat.completions.create(
        model="dep-4o", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == REPLY
    chunks = list(client.chat.completions.create(
        model="dep-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices == [] and chunks[-1].usage.prompt_tokens == 11
    [plain, streamed] = azure.seen("/azure/openai/deployments/dep-4o/chat/completions")
    assert plain.query == streamed.query == {"api-version": VERSION}
    assert plain.headers["api-key"] == AZURE_KEY
    v1 = openai.OpenAI(base_url=f"{azure.url('azure')}/openai/v1/", api_key="unused",
                       default_headers={"api-key": AZURE_KEY}, max_retries=0)
    assert v1.responses.create(model="dep-4o", input="hi").output_text == REPLY
    assert azure.seen("/azure/openai/v1/responses")[0].body["model"] == "dep-4o"

    async def entra_token() -> str:
        from gateway.clients import client_pool

        try:
            return await tokens.token({"tenant_id": "t", "client_id": ENTRA_CLIENT,
                                       "token_url": f"{azure.url('entra')}/t/oauth2/v2.0/token"},
                                      ENTRA_SECRET)
        finally:
            await client_pool.close()

    token = asyncio.run(entra_token())
    entra = openai.AzureOpenAI(azure_endpoint=azure.url("azure"), api_version=VERSION,
                               azure_ad_token_provider=lambda: token, max_retries=0)
    assert entra.chat.completions.create(
        model="dep-4o", messages=[{"role": "user", "content": "hi"}]).choices[0] \
        .message.content == REPLY
    assert azure.requests[-1].headers["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("surface", ["chat", "responses", "messages"])
def test_every_surface_reaches_an_azure_deployment_and_bills_its_usage(
        gateway_url, azure_providers, api_key, ledger_rows, surface, stream):
    text, stop = _ask(surface, gateway_url, api_key, "az-key-model", stream)
    assert text.strip() == REPLY
    assert stop in ("stop", "completed", "end_turn")
    [seen] = azure_providers.seen("/azure/openai/")
    assert seen.path == "/azure/openai/deployments/dep-4o/chat/completions"
    assert seen.query == {"api-version": VERSION}
    assert seen.headers["api-key"] == AZURE_KEY and "authorization" not in seen.headers
    row = _row(ledger_rows)
    assert (row.provider_name, row.upstream_model, row.stream) == ("az-key", "dep-4o", stream)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (11, 4, 7)
    assert row.cost_usd == COST


@pytest.mark.parametrize("provider, path, query", [
    ("az-v1", "/azure/openai/v1/chat/completions", {}),
    ("az-resp", "/azure/openai/v1/responses", {}),
    ("az-resp-dated", "/azure/openai/responses", {"api-version": "2025-04-01-preview"}),
])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_the_v1_api_and_the_responses_api_are_reached_at_their_own_paths(
        gateway_url, azure_providers, api_key, ledger_rows, provider, path, query, stream):
    for surface in ("chat", "responses", "messages"):
        text, _ = _ask(surface, gateway_url, api_key, f"{provider}-model", stream)
        assert text.strip() == REPLY
    seen = azure_providers.seen("/azure/openai/")
    assert [(s.path, s.query, s.body["model"]) for s in seen] == [(path, query, "dep-4o")] * 3
    rows = ledger_rows(3)
    assert [(r.input_tokens, r.cached_tokens, r.output_tokens, r.cost_usd)
            for r in rows] == [(11, 4, 7, COST)] * 3


def test_entra_tokens_are_fetched_once_shared_and_refreshed_before_they_expire(
        gateway_url, azure_providers, api_key, ledger_rows):
    client = _openai(gateway_url, api_key)

    def ask(_=None) -> str:
        return client.chat.completions.create(
            model="az-entra-model", messages=[{"role": "user", "content": "hi"}]
        ).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:  # concurrent first requests: one token fetch
        assert list(pool.map(ask, range(8))) == [REPLY] * 8
    assert ask() == REPLY
    assert azure_providers.token_requests == 1
    seen = azure_providers.seen("/azure/openai/")
    assert len({s.headers["authorization"] for s in seen}) == 1
    assert all("api-key" not in s.headers for s in seen)

    # A token living 2 s is fetched again once half its life is gone, before it expires.
    tokens.clear()
    azure_providers.behaviour.token_lifetime_s = 2
    assert ask() == REPLY and azure_providers.token_requests == 2
    assert ask() == REPLY and azure_providers.token_requests == 2
    time.sleep(1.2)
    assert ask() == REPLY and azure_providers.token_requests == 3
    rows = ledger_rows(12)
    assert {(r.status, r.cost_usd) for r in rows} == {("ok", COST)}


def test_a_refused_client_secret_is_a_credentials_error_not_a_retry_storm(
        gateway_url, azure, api_key, ledger_rows, transactional_db):
    from providers.services import config_apply

    config_apply(spec=config_parse(_config(azure, **{"az-entra": True}).replace(
        ENTRA_SECRET, "wrong-secret")))
    with pytest.raises(openai.APIStatusError) as caught:
        _openai(gateway_url, api_key).chat.completions.create(
            model="az-entra-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert "Entra ID token endpoint refused" in caught.value.message
    assert azure.token_requests == 1 and not azure.seen("/azure/openai/")
    assert ledger_rows(1)[0].status == "upstream_error"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_filtered_completion_is_content_filter_or_refusal_on_each_surface(
        gateway_url, azure_providers, api_key, ledger_rows, stream):
    azure_providers.behaviour.filter = "completion"
    assert _ask("chat", gateway_url, api_key, "az-key-model", stream)[1] == "content_filter"
    assert _ask("messages", gateway_url, api_key, "az-key-model", stream)[1] == "refusal"
    if stream:
        with _openai(gateway_url, api_key).responses.stream(model="az-key-model",
                                                            input="hi") as s:
            events = list(s)
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        response = _openai(gateway_url, api_key).responses.create(model="az-key-model",
                                                                  input="hi")
    assert (response.status, response.incomplete_details.reason) == \
        ("incomplete", "content_filter")
    assert [r.status for r in ledger_rows(3)] == ["ok"] * 3


def test_a_filtered_prompt_is_a_400_naming_the_filter_in_the_clients_shape(
        gateway_url, azure_providers, api_key, ledger_rows):
    azure_providers.behaviour.filter = "prompt"
    with pytest.raises(openai.BadRequestError) as chat:
        _openai(gateway_url, api_key).chat.completions.create(
            model="az-key-model", messages=[{"role": "user", "content": "hi"}])
    assert "content management policy" in chat.value.message
    assert "content filter: hate (high)" in chat.value.message
    assert chat.value.body["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as messages:
        _anthropic(gateway_url, api_key).messages.create(
            model="az-key-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert messages.value.body["error"]["type"] == "invalid_request_error"
    assert "content filter: hate (high)" in messages.value.body["error"]["message"]
    assert [r.status for r in ledger_rows(2)] == ["upstream_error"] * 2


def test_the_admin_connection_test_reaches_azure_with_key_and_with_entra(
        azure_providers, transactional_db):
    from providers.admin import provider_connection_test
    from providers.models import Provider

    for name in ("az-key", "az-v1", "az-resp", "az-entra"):
        result = provider_connection_test(Provider.objects.get(name=name))
        assert result.ok, result.text
        assert "usage:" in result.text
    assert azure_providers.token_requests == 1
    assert [s.path for s in azure_providers.seen("/azure/openai/")] == [
        "/azure/openai/deployments/dep-4o/chat/completions", "/azure/openai/v1/chat/completions",
        "/azure/openai/v1/responses", "/azure/openai/deployments/dep-4o/chat/completions"]


@pytest.mark.parametrize("entry, problem", [
    ("kind: azure_openai\n    base_url: https://r.openai.azure.com\n    api_key: k\n"
     "    translation: {api_version: latest}", "api_version: must be v1 or a dated version"),
    ("kind: azure_openai\n    base_url: https://r.openai.azure.com\n    api_key: k\n"
     "    translation: {entra: {tenant_id: t}}", "entra: client_id: must be a non-empty"),
    ("kind: azure_openai\n    base_url: https://r.openai.azure.com\n    api_key: k\n"
     "    translation: {entra: {tenant_id: t, client_id: c, "
     "token_url: 'http://169.254.169.254/token'}}", "entra: token_url: points at a link-local"),
    ("kind: azure_openai\n    base_url: https://r.openai.azure.com",
     "api_key: required for kind azure_openai"),
    ("kind: azure_openai\n    api_key: k", "base_url"),
    ("kind: openai\n    base_url: https://api.openai.com/v1\n    api_key: k\n"
     "    translation: {api_version: v1}", "api_version: only for kind azure_openai"),
])
def test_the_routing_file_checks_azure_settings_per_kind(entry, problem):
    with pytest.raises(ConfigError, match=problem):
        config_parse(f"providers:\n  - name: p\n    {entry}\n")


def test_the_admin_form_checks_azure_settings_per_kind(transactional_db):
    from providers.admin import ProviderForm

    def errors(**data) -> dict:
        form = ProviderForm(data={"name": "p", "weight": 1, "priority": 0, "timeout_s": 60,
                                  "max_inflight": 8, "breaker_failures": 5,
                                  "breaker_cooldown_s": 30, "extra_headers": "{}", **data})
        form.is_valid()
        return form.errors

    ok = errors(kind="azure_openai", base_url="https://r.openai.azure.com", api_key="k",
                translation='{"api_version": "2024-10-21"}')
    assert not ok, ok
    assert "api_key" in errors(kind="azure_openai", base_url="https://r.openai.azure.com",
                               translation="{}")
    assert "api_version" in str(errors(kind="azure_openai", base_url="https://r.openai.azure.com",
                                       api_key="k", translation='{"api_version": "soon"}'))
    assert "only for kind" in str(errors(kind="anthropic", base_url="https://a.example",
                                         api_key="k", translation='{"entra": {}}'))
