"""GET /v1/models with both official SDKs: the public models the key may use, in OpenAI's list
shape, or Anthropic's when the `anthropic-version` header is sent."""
from __future__ import annotations

import anthropic
import httpx
import openai
import pytest


@pytest.fixture
def three_models(fake_provider, fake_anthropic_provider, mock_provider):
    return ["claude-test", "gpt-test", "mock-test"]


def test_openai_sdk_lists_the_models_the_key_may_use(gateway_url, three_models, api_key,
                                                     make_key):
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    models = list(client.models.list())
    assert [m.id for m in models] == three_models
    assert {(m.object, m.owned_by) for m in models} == {("model", "gateway")}
    assert client.models.retrieve("gpt-test").id == "gpt-test"
    limited = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=make_key(models=["gpt-test"]),
                            max_retries=0)
    assert [m.id for m in limited.models.list()] == ["gpt-test"]
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("claude-test")
    response = httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"Bearer {api_key}"})
    assert response.json()["object"] == "list"
    assert response.json()["data"][0] == {"id": "claude-test", "object": "model", "created": 0,
                                          "owned_by": "gateway"}


def test_anthropic_sdk_gets_anthropics_shape_and_pages(gateway_url, three_models, api_key):
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0)
    models = list(client.models.list())
    assert [m.id for m in models] == three_models
    assert {(m.type, m.display_name == m.id) for m in models} == {("model", True)}
    page = client.models.list(limit=2)
    assert [m.id for m in page.data] == three_models[:2]
    assert (page.has_more, page.first_id, page.last_id) == (True, "claude-test", "gpt-test")
    assert [m.id for m in page.get_next_page().data] == ["mock-test"]
    assert [m.id for m in client.models.list(before_id="mock-test", limit=1).data] == ["gpt-test"]
    assert client.models.retrieve("mock-test").id == "mock-test"
    raw = httpx.get(f"{gateway_url}/v1/models",
                    headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"}).json()
    assert set(raw) == {"data", "has_more", "first_id", "last_id"}
    assert raw["data"][0] == {"type": "model", "id": "claude-test", "display_name": "claude-test",
                              "created_at": "1970-01-01T00:00:00Z"}


def test_bad_key_errors_in_the_shape_the_client_speaks(gateway_url, three_models):
    with pytest.raises(anthropic.AuthenticationError) as info:
        list(anthropic.Anthropic(base_url=gateway_url, api_key="nope", max_retries=0).models.list())
    assert info.value.body["type"] == "error"
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="nope", max_retries=0).models.list()
    assert info.value.body["code"] == "invalid_api_key"
