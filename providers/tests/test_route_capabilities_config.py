"""A route's capabilities in the routing file (issue 16): the keys a model mapping entry may
carry, their errors naming the key, the round trip apply -> export -> apply, and the snapshot's
deployments built from them."""
from __future__ import annotations

import pytest
import yaml

from providers.config_file import ConfigError, config_parse
from providers.models import ModelRoute
from providers.selectors import routing_snapshot_load
from providers.services import config_apply, config_export

FILE = """
providers:
  - name: compat
    kind: openai
    base_url: http://10.0.0.7:8000/v1
    translation: {reasoning: true}
    models:
      plain: up-plain
      claude-sonnet: {upstream: kimi-k2.5, weight: 3, reasoning: false, max_output_tokens: 64000,
                      responses_api: true}
  - name: anth
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    models:
      claude: {upstream: claude-sonnet-4-5, max_output_tokens: 32000}
"""


@pytest.mark.django_db
def test_the_keys_round_trip_through_apply_and_export():
    config_apply(spec=config_parse(FILE))
    route = ModelRoute.objects.get(public_model="claude-sonnet")
    assert (route.weight, route.reasoning, route.max_output_tokens, route.responses_api) == \
        (3, False, 64000, True)
    exported = config_export()
    models = {p["name"]: p["models"] for p in yaml.safe_load(exported)["providers"]}
    assert models == {
        "anth": {"claude": {"upstream": "claude-sonnet-4-5", "max_output_tokens": 32000}},
        "compat": {"claude-sonnet": {"upstream": "kimi-k2.5", "weight": 3, "reasoning": False,
                                     "max_output_tokens": 64000, "responses_api": True},
                   "plain": "up-plain"},
    }
    before = list(ModelRoute.objects.order_by("id").values())
    config_apply(spec=config_parse(exported))
    assert list(ModelRoute.objects.order_by("id").values()) == before


@pytest.mark.django_db
def test_the_snapshot_deployments_carry_the_resolved_capabilities():
    config_apply(spec=config_parse(FILE))
    deployments = {name: d for name, (d,) in routing_snapshot_load().deployments.items()}
    sonnet, plain, claude = deployments["claude-sonnet"], deployments["plain"], deployments["claude"]
    assert sonnet.kind == "openai_responses"
    assert (sonnet.codec_options.reasoning, sonnet.codec_options.max_output_tokens) == \
        (False, 64000)
    assert plain.kind == "openai"
    assert (plain.codec_options.reasoning, plain.codec_options.max_output_tokens) == (True, None)
    assert claude.kind == "anthropic"
    assert (claude.codec_options.reasoning, claude.codec_options.max_output_tokens) == \
        (True, 32000)


@pytest.mark.parametrize("entry, problem", [
    ("{upstream: x, reasoning: 'yes'}",
     "line 7: providers[0].models.m.reasoning: must be true or false"),
    ("{upstream: x, max_output_tokens: 0}",
     "line 7: providers[0].models.m.max_output_tokens: must be >= 1"),
    ("{upstream: x, max_output_tokens: many}",
     "line 7: providers[0].models.m.max_output_tokens: must be an integer"),
    ("{upstream: x, responses_api: 1}",
     "line 7: providers[0].models.m.responses_api: must be true or false"),
    ("{upstream: x, reasons: true}",
     "line 7: providers[0].models.m.reasons: unknown field"),
])
def test_a_bad_key_is_an_error_naming_it(entry, problem):
    with pytest.raises(ConfigError) as info:
        config_parse(f"""
providers:
  - name: p
    kind: openai
    base_url: http://10.0.0.7:8000/v1
    models:
      m: {entry}
""")
    assert str(info.value) == problem


def test_responses_api_on_a_kind_without_the_responses_wire_is_an_error():
    with pytest.raises(ConfigError) as info:
        config_parse("""
providers:
  - name: anth
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    models:
      m: {upstream: x, responses_api: true}
""")
    assert str(info.value) == \
        "line 3: providers[0]: models.m.responses_api: only for kind openai or azure_openai"


@pytest.fixture
def admin_client(transactional_db):
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com",
                                                                  "pw-root-1234"))
    return client


def _route_post(route: ModelRoute, **changes) -> dict:
    data = {"public_model": route.public_model, "provider": route.provider_id,
            "upstream_model": route.upstream_model, "weight": "", "priority": "",
            "enabled": "on", "reasoning": "unknown", "max_output_tokens": "",
            "responses_api": "unknown"}
    return {**data, **changes}


def test_the_route_page_shows_each_capability_in_effect_and_where_it_came_from(admin_client):
    config_apply(spec=config_parse(FILE))
    sonnet = ModelRoute.objects.get(public_model="claude-sonnet")
    claude = ModelRoute.objects.get(public_model="claude")
    plain = ModelRoute.objects.get(public_model="plain")
    page = admin_client.get(f"/admin/providers/modelroute/{sonnet.pk}/change/").content.decode()
    assert "Reasons" in page and "Output limit (tokens)" in page and "Responses API" in page
    assert '<option value="unknown">Inherit</option>' in page
    assert "Reasons: no <small>(this route)</small>" in page
    assert "Output limit: 64,000 tokens <small>(this route)</small>" in page
    assert "Wire: Responses API <small>(this route)</small>" in page
    page = admin_client.get(f"/admin/providers/modelroute/{plain.pk}/change/").content.decode()
    assert "Reasons: yes <small>(provider)</small>" in page
    assert "Output limit: none <small>(default)</small>" in page
    assert "Wire: openai <small>(default)</small>" in page
    page = admin_client.get(f"/admin/providers/modelroute/{claude.pk}/change/").content.decode()
    # claude-sonnet-4-5: the family table; its limit is the route's, over the catalog's window.
    assert "Reasons: yes <small>(known model family)</small>" in page
    assert "Output limit: 32,000 tokens <small>(this route)</small>" in page
    # The provider's page lists its routes with the same column.
    page = admin_client.get(
        f"/admin/providers/provider/{sonnet.provider_id}/change/").content.decode()
    assert "Reasons: no <small>(this route)</small>" in page


def test_the_route_form_saves_the_capabilities_and_refuses_responses_api_for_anthropic(
        admin_client):
    config_apply(spec=config_parse(FILE))
    plain = ModelRoute.objects.get(public_model="plain")
    response = admin_client.post(f"/admin/providers/modelroute/{plain.pk}/change/", _route_post(
        plain, reasoning="false", max_output_tokens="16384", responses_api="true"))
    assert response.status_code == 302
    plain.refresh_from_db()
    assert (plain.reasoning, plain.max_output_tokens, plain.responses_api) == \
        (False, 16384, True)
    claude = ModelRoute.objects.get(public_model="claude")
    response = admin_client.post(f"/admin/providers/modelroute/{claude.pk}/change/",
                                 _route_post(claude, responses_api="true"))
    assert response.status_code == 200
    assert "Only for providers of kind openai or azure_openai" in response.content.decode()
    claude.refresh_from_db()
    assert claude.responses_api is None


def test_the_provider_page_edits_its_routes_capabilities_and_checks_them_against_its_kind(
        admin_client):
    config_apply(spec=config_parse(FILE))
    anth = ModelRoute.objects.get(public_model="claude")
    provider = anth.provider

    def post(**route):
        data = {"name": provider.name, "kind": provider.kind, "base_url": provider.base_url,
                "weight": "1", "priority": "0", "enabled": "on", "timeout_s": "600",
                "max_inflight": "512", "breaker_failures": "5", "breaker_cooldown_s": "30",
                "extra_headers": "{}", "translation": "{}",
                "routes-TOTAL_FORMS": "1", "routes-INITIAL_FORMS": "1",
                "routes-MIN_NUM_FORMS": "0", "routes-MAX_NUM_FORMS": "1000",
                "routes-0-id": str(anth.pk), "routes-0-provider": str(provider.pk),
                "routes-0-public_model": "claude", "routes-0-upstream_model": anth.upstream_model,
                "routes-0-enabled": "on", "routes-0-reasoning": "unknown",
                "routes-0-max_output_tokens": "", "routes-0-responses_api": "unknown"}
        data.update({f"routes-0-{k}": v for k, v in route.items()})
        return admin_client.post(f"/admin/providers/provider/{provider.pk}/change/", data)

    refused = post(responses_api="true")
    assert refused.status_code == 200
    assert "Only for providers of kind openai or azure_openai" in refused.content.decode()
    saved = post(reasoning="false", max_output_tokens="12000")
    assert saved.status_code == 302, saved.content.decode()[:2000]
    anth.refresh_from_db()
    assert (anth.reasoning, anth.max_output_tokens, anth.responses_api) == (False, 12000, None)
