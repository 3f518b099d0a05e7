"""Bedrock's and Vertex's fields are validated where they are entered, in the routing file and
in the admin: the region (and Vertex's project) they need, settings no other kind takes, and
credentials in the kind's own form (an AWS access key pair, a service-account key)."""
from __future__ import annotations

import json

import pytest

from providers.config_file import ConfigError, config_parse

SERVICE_KEY = json.dumps({
    "type": "service_account", "client_email": "a@b.iam.gserviceaccount.com",
    "private_key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
    "token_uri": "https://oauth2.googleapis.com/token"})


def _provider(kind: str, translation: str, api_key: str | None = None) -> str:
    key = f"\n    api_key: '{api_key}'" if api_key is not None else ""
    return f"""
providers:
  - name: cloud
    kind: {kind}{key}
    translation: {translation}
    models: {{m: up-model}}
"""


@pytest.mark.parametrize("kind, translation, api_key", [
    ("bedrock", "{region: us-east-1}", None),
    ("bedrock", "{region: us-east-1, aws_profile: prod, messages_api: false}",
     "AKIAEXAMPLE:secret"),
    ("bedrock", "{region: eu-west-3}", "AKIAEXAMPLE:secret:session-token"),
    ("vertex", "{region: europe-west4, project: my-project-123}", SERVICE_KEY),
    ("vertex", "{region: global, project: my-project-123}", None),
])
def test_a_cloud_provider_needs_no_base_url(kind, translation, api_key):
    spec = config_parse(_provider(kind, translation, api_key))
    assert spec.providers[0].base_url == ""


@pytest.mark.parametrize("kind, translation, api_key, problem", [
    ("bedrock", "{}", None, "region: required for kind bedrock"),
    ("vertex", "{region: us-east5}", None, "project: required for kind vertex"),
    ("bedrock", "{region: 'us-east-1.evil.com/x'}", None, "region: must be a region name"),
    ("vertex", "{region: us-east5, project: 'My Project'}", None,
     "project: must be a Google Cloud project id"),
    ("bedrock", "{region: us-east-1, messages_api: 'yes'}", None,
     "messages_api: must be true or false"),
    ("mock", "{region: us-east-1}", None, "region: only for kind bedrock or vertex"),
    ("vertex", "{region: us-east5, project: my-project, aws_profile: x}", None,
     "aws_profile: only for kind bedrock"),
    ("bedrock", "{region: us-east-1}", "just-a-key", "ACCESS_KEY_ID:SECRET_ACCESS_KEY"),
    ("vertex", "{region: us-east5, project: my-project}", "not json",
     "must be a service-account key"),
    ("vertex", "{region: us-east5, project: my-project}", '{"type": "authorized_user"}',
     '"type": "service_account"'),
])
def test_the_routing_file_names_what_a_cloud_provider_lacks(kind, translation, api_key,
                                                            problem):
    with pytest.raises(ConfigError) as caught:
        config_parse(_provider(kind, translation, api_key))
    assert problem in str(caught.value)


def test_the_derived_route_kinds_cannot_be_chosen():
    with pytest.raises(ConfigError) as caught:
        config_parse(_provider("bedrock_messages", "{region: us-east-1}"))
    assert "kind: must be one of" in str(caught.value)
    from gateway.dialects import kind_choices

    assert {"bedrock", "vertex"} <= {k for k, _ in kind_choices()}
    assert not {"bedrock_messages", "vertex_messages"} & {k for k, _ in kind_choices()}


def _form(kind: str, translation: dict, api_key: str = ""):
    from providers.admin import ProviderForm

    return ProviderForm(data={
        "name": "cloud", "kind": kind, "base_url": "", "api_key": api_key, "weight": 1,
        "priority": 0, "enabled": True, "timeout_s": 600, "max_inflight": 512,
        "breaker_failures": 5, "breaker_cooldown_s": 30, "extra_headers": "{}",
        "translation": json.dumps(translation)})


@pytest.mark.django_db
def test_the_admin_form_validates_each_cloud_kinds_fields():
    assert _form("bedrock", {"region": "us-east-1"}).is_valid()
    assert _form("vertex", {"region": "us-east5", "project": "my-project"}, SERVICE_KEY).is_valid()
    form = _form("bedrock", {})
    assert not form.is_valid() and "region: required" in form.errors["translation"][0]
    form = _form("bedrock", {"region": "us-east-1"}, "AKIA-only")
    assert not form.is_valid() and "ACCESS_KEY_ID" in form.errors["api_key"][0]
    form = _form("vertex", {"region": "us-east5", "project": "my-project"}, "{}")
    assert not form.is_valid() and "service-account key" in form.errors["api_key"][0]


def test_routes_of_a_cloud_provider_speak_the_api_of_their_model():
    from providers.translation import codec_options, upstream_kind

    bedrock = {"region": "us-east-1"}
    assert upstream_kind(kind="bedrock", translation=bedrock,
                         upstream_model="us.anthropic.claude-sonnet-4-5-20250929-v1:0") \
        == "bedrock_messages"
    assert upstream_kind(kind="bedrock", translation={**bedrock, "messages_api": False},
                         upstream_model="anthropic.claude-3-haiku-20240307-v1:0") == "bedrock"
    assert upstream_kind(kind="bedrock", translation=bedrock,
                         upstream_model="meta.llama3-70b-instruct-v1:0") == "bedrock"
    assert upstream_kind(kind="vertex", translation={}, upstream_model="claude-opus-4-1@20250805") \
        == "vertex_messages"
    assert upstream_kind(kind="vertex", translation={}, upstream_model="gemini-2.5-pro") == "vertex"
    options = codec_options(kind="bedrock", translation=bedrock,
                            upstream_model="anthropic.claude-3-haiku-20240307-v1:0")
    assert (options.region, options.reasoning) == ("us-east-1", True)


def test_the_endpoints_follow_the_region_unless_a_base_url_is_given():
    from gateway.dialects import dialect_for
    from gateway.types import CodecOptions

    options = CodecOptions(region="eu-west-3", project="p-123456")
    assert dialect_for("bedrock").url("", "chat", upstream_model="m", stream=True,
                                      options=options) \
        == "https://bedrock-runtime.eu-west-3.amazonaws.com/model/m/converse-stream"
    assert dialect_for("vertex_messages").url("", "chat", upstream_model="claude-x@1",
                                              stream=False, options=options) == (
        "https://eu-west-3-aiplatform.googleapis.com/v1/projects/p-123456/locations/eu-west-3"
        "/publishers/anthropic/models/claude-x@1:rawPredict")
    assert dialect_for("vertex").url("http://127.0.0.1:9", "chat", upstream_model="gemini-2.5-pro",
                                     stream=True, options=CodecOptions(region="global",
                                                                       project="p-123456")) == (
        "http://127.0.0.1:9/v1/projects/p-123456/locations/global/publishers/google/models/"
        "gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert dialect_for("vertex").default_base_url(CodecOptions(region="global")) \
        == "https://aiplatform.googleapis.com"
