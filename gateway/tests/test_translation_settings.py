"""Per-provider translation settings: images switch, documents, thinking budget -> effort map."""
from __future__ import annotations

import anthropic
import pytest

from providers.config_file import ConfigError, config_parse
from providers.services import config_apply, config_export

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                      "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}}
DOCUMENT = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                           "data": "JVBERi0xLjQKYSBtZW1v"}}
TEXT_DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "a memo"}}


def _configure(fake_upstream, translation: str) -> None:
    config_apply(spec=config_parse(f"""
providers:
  - name: strict
    kind: openai
    base_url: {fake_upstream.base_url("strict")}
    translation: {translation}
    models: {{claude-ish: up-model}}
"""))


def _client(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_images_can_be_switched_off_per_provider(gateway_url, fake_upstream, api_key):
    _configure(fake_upstream, "{allow_images: false}")
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(gateway_url, api_key).messages.create(
            model="claude-ish", max_tokens=50,
            messages=[{"role": "user", "content": [IMAGE, {"type": "text", "text": "what is it?"}]}])
    assert "image" in info.value.message.lower()
    assert fake_upstream.calls() == []


def test_documents_only_where_the_provider_allows_them(gateway_url, fake_upstream, api_key):
    _configure(fake_upstream, "{}")
    content = [DOCUMENT, {"type": "text", "text": "summarise"}]
    with pytest.raises(anthropic.BadRequestError):
        _client(gateway_url, api_key).messages.create(
            model="claude-ish", max_tokens=50, messages=[{"role": "user", "content": content}])
    # A plain-text document is text to any model.
    _client(gateway_url, api_key).messages.create(
        model="claude-ish", max_tokens=50,
        messages=[{"role": "user", "content": [TEXT_DOCUMENT]}])
    assert "a memo" in str(fake_upstream.calls()[-1].body["messages"])
    _configure(fake_upstream, "{allow_documents: true}")
    reply = _client(gateway_url, api_key).messages.create(
        model="claude-ish", max_tokens=50, messages=[{"role": "user", "content": content}])
    assert reply.content[0].text
    assert "JVBERi0xLjQKYSBtZW1v" in str(fake_upstream.calls()[-1].body["messages"])


def test_thinking_budget_maps_to_effort_with_the_providers_own_map(gateway_url, fake_upstream, api_key):
    _configure(fake_upstream, "{thinking_effort_map: {1024: low, 3000: high}}")
    _client(gateway_url, api_key).messages.create(
        model="claude-ish", max_tokens=8000, thinking={"type": "enabled", "budget_tokens": 5000},
        messages=[{"role": "user", "content": "think"}])
    assert fake_upstream.calls()[0].body["reasoning_effort"] == "high"
    assert "thinking_effort_map" in config_export()


@pytest.mark.parametrize("value, message", [
    ("{colour: red}", "colour: unknown setting"),
    ("{allow_images: maybe}", "allow_images: must be true or false"),
    ("{thinking_effort_map: {1024: extreme}}", "thinking_effort_map"),
    ("{max_tokens_field: tokens}", "max_tokens_field"),
])
def test_bad_translation_settings_name_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        config_parse(f"providers:\n  - name: x\n    kind: mock\n    translation: {value}\n")
