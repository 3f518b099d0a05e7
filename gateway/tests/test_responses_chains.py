"""A chain of stored Responses (`previous_response_id`) stays on the provider that answered it
while that provider is healthy (issue 16), though weighted round-robin alone would alternate
between two equal providers; when it fails, the chain goes on at the other with its
conversation rebuilt from the store, and then stays there. Driven by the openai SDK through a
live gateway to two OpenAI-compatible fake upstreams."""
from __future__ import annotations

import openai

from providers.config_file import config_parse
from providers.services import config_apply


def test_a_chain_stays_on_its_provider_while_it_is_healthy(gateway_url, fake_upstream, api_key):
    config_apply(spec=config_parse(f"""
providers:
  - name: chain-a
    kind: openai
    base_url: {fake_upstream.base_url("chain-a")}
    api_key: sk-a
    models: {{gw-chain: up-a}}
  - name: chain-b
    kind: openai
    base_url: {fake_upstream.base_url("chain-b")}
    api_key: sk-b
    models: {{gw-chain: up-b}}
"""))
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)

    def provider_of_last_call() -> str:
        return fake_upstream.calls()[-1].provider

    # Unchained requests alternate between the two equal providers.
    for n in range(2):
        client.responses.create(model="gw-chain", input=f"alone {n}", store=False)
    assert {c.provider for c in fake_upstream.calls()} == {"chain-a", "chain-b"}

    previous = client.responses.create(model="gw-chain", input="turn 0")
    home = provider_of_last_call()
    for n in range(1, 6):
        previous = client.responses.create(model="gw-chain", input=f"turn {n}",
                                           previous_response_id=previous.id)
        assert provider_of_last_call() == home, f"turn {n} left {home}"
    assert len(fake_upstream.calls(home)) == 1 + 6

    fake_upstream.behave(home, status=500)
    other = ({"chain-a", "chain-b"} - {home}).pop()
    moved = client.responses.create(model="gw-chain", input="turn 6",
                                    previous_response_id=previous.id)
    assert moved.output_text and provider_of_last_call() == other
    rebuilt = fake_upstream.calls(other)[-1].body["messages"]
    assert [m["content"] for m in rebuilt if m["role"] == "user"] == \
        [f"turn {n}" for n in range(7)]
    fake_upstream.behave(home, status=200)
    for n in range(7, 10):
        moved = client.responses.create(model="gw-chain", input=f"turn {n}",
                                        previous_response_id=moved.id)
        assert provider_of_last_call() == other, f"turn {n} left {other}"
