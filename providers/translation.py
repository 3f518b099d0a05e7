"""A provider's translation settings (Provider.translation, the `translation:` key of the
routing file) and the codec options they make. One parser for both, so the admin, the file and
the proxy agree on what is valid."""
from __future__ import annotations

import re
from types import MappingProxyType

from gateway.dialects import DIALECTS, dialect_for
from gateway.types import CodecOptions
from providers.validation import base_url_problem

# Settings only some kinds take (gateway.dialects `settings`), by name -> those kinds.
KIND_KEYS: dict[str, tuple[str, ...]] = {}
for _dialect in DIALECTS.values():
    for _key in _dialect.settings if _dialect.selectable else ():
        KIND_KEYS.setdefault(_key, ())
        KIND_KEYS[_key] += (_dialect.kind,)

KEYS = {"allow_images", "allow_documents", "thinking_effort_map", "max_tokens_field",
        "replay_reasoning_content", "responses_api", "reasoning", "max_output_tokens",
        "anthropic_beta", "auto_cache", "drain_on_disconnect", *KIND_KEYS}
EFFORTS = {"minimal", "low", "medium", "high"}
# Azure OpenAI's `api-version`: a dated version (GA or preview), or "v1" for the v1 GA API.
API_VERSION = re.compile(r"v1|\d{4}-\d{2}-\d{2}(-preview)?")
ENTRA_KEYS = {"tenant_id", "client_id", "token_url", "scope"}
# Cloud kinds' place (bedrock, vertex): these go into host names and URL paths.
REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
AWS_PROFILE = re.compile(r"[\w.+@-]+")


def translation_problem(value: object, *, kind: str | None = None) -> str | None:
    """None when `value` is valid translation settings (for a provider of `kind`, when
    given: the kind-only settings are checked against it), else what is wrong (naming the
    key)."""
    if not isinstance(value, dict):
        return "must be a mapping"
    unknown = set(value) - KEYS
    if unknown:
        return f"{sorted(unknown)[0]}: unknown setting (known: {', '.join(sorted(KEYS))})"
    for name in sorted(set(value) & set(KIND_KEYS)):
        if kind is not None and kind in DIALECTS and kind not in KIND_KEYS[name]:
            return f"{name}: only for kind {' or '.join(KIND_KEYS[name])}"
    if "api_version" in value and not (isinstance(value["api_version"], str)
                                       and API_VERSION.fullmatch(value["api_version"])):
        return "api_version: must be v1 or a dated version such as 2024-10-21"
    if "entra" in value and (problem := _entra_problem(value["entra"])):
        return f"entra: {problem}"
    if problem := _cloud_problem(value, kind=kind):
        return problem
    for name in ("allow_images", "allow_documents", "replay_reasoning_content", "reasoning",
                 "responses_api", "auto_cache", "drain_on_disconnect"):
        if name in value and not isinstance(value[name], bool):
            return f"{name}: must be true or false"
    limit = value.get("max_output_tokens", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return "max_output_tokens: must be a positive integer"
    if problem := _beta_problem(value.get("anthropic_beta", {})):
        return f"anthropic_beta: {problem}"
    if value.get("max_tokens_field", "max_tokens") not in ("max_tokens", "max_completion_tokens"):
        return "max_tokens_field: must be max_tokens or max_completion_tokens"
    effort_map = value.get("thinking_effort_map", {})
    if not isinstance(effort_map, dict):
        return "thinking_effort_map: must map thinking budgets to efforts"
    for budget, effort in effort_map.items():
        if not str(budget).isdigit() or effort not in EFFORTS:
            return (f"thinking_effort_map: {budget!r}: {effort!r} must map a token budget to one of "
                    f"{', '.join(sorted(EFFORTS))}")
    return None


def _beta_problem(value: object) -> str | None:
    if not isinstance(value, dict):
        return "must be a mapping with `add` and/or `remove`"
    if unknown := set(value) - {"add", "remove"}:
        return f"{sorted(unknown)[0]}: unknown (known: add, remove)"
    for name, betas in value.items():
        if not isinstance(betas, list) or not all(
                isinstance(b, str) and b and "," not in b and b.strip() == b for b in betas):
            return f"{name}: must be a list of beta names"
    return None


def _cloud_problem(value: dict, *, kind: str | None) -> str | None:
    """Bedrock's and Vertex's settings: where the provider is, and which API a route takes."""
    if kind in DIALECTS:
        for name in DIALECTS[kind].required_settings:
            if name not in value:
                return f"{name}: required for kind {kind}"
    checks = (("region", REGION, "must be a region name such as us-east-1 or europe-west4"),
              ("project", PROJECT, "must be a Google Cloud project id"),
              ("aws_profile", AWS_PROFILE, "must be an AWS profile name"))
    for name, pattern, problem in checks:
        if name in value and not (isinstance(value[name], str) and len(value[name]) <= 64
                                  and pattern.fullmatch(value[name])):
            return f"{name}: {problem}"
    if "messages_api" in value and not isinstance(value["messages_api"], bool):
        return "messages_api: must be true or false"
    return None


def credentials_problem(*, kind: str, api_key: str) -> str | None:
    """What is wrong with a provider's API key for its kind (gateway.dialects
    `credentials`: Bedrock's access key, Vertex's service-account key), or None."""
    check = DIALECTS[kind].credentials if kind in DIALECTS else None
    return check(api_key) if check is not None else None


def _entra_problem(value: object) -> str | None:
    if not isinstance(value, dict):
        return "must be a mapping with tenant_id and client_id"
    if unknown := set(value) - ENTRA_KEYS:
        return f"{sorted(unknown)[0]}: unknown (known: {', '.join(sorted(ENTRA_KEYS))})"
    for name in sorted(ENTRA_KEYS):
        required = name in ("tenant_id", "client_id")
        if (name in value or required) and not (isinstance(value.get(name), str)
                                                and value[name].strip()):
            return f"{name}: must be a non-empty string"
    if "token_url" in value and (problem := base_url_problem(value["token_url"])):
        return f"token_url: {problem}"
    return None


def upstream_kind(*, kind: str, translation: dict, upstream_model: str = "") -> str:
    """The dialect a provider's deployments speak: a provider marked `responses_api: true`
    whose kind has a Responses variant (OpenAI-compatible, Azure OpenAI) is reached through
    its Responses endpoint; a cloud kind's route speaks its `route_kind` for the route's
    upstream model (Anthropic's models on Bedrock and Vertex: the Messages API)."""
    variant = DIALECTS[kind].responses_kind if kind in DIALECTS else None
    if variant is not None and translation.get("responses_api"):
        return variant
    route_kind = DIALECTS[kind].route_kind if kind in DIALECTS else None
    if route_kind is not None:
        return route_kind(upstream_model, translation)
    return kind


def codec_options(*, kind: str, translation: dict, upstream_model: str = "") -> CodecOptions:
    """The codec options for a provider's route: its `translation` settings over the
    defaults of the kind the route speaks (gateway.dialects: documents are allowed by default
    where the kind takes them; whether its models reason is unknown for OpenAI-compatible
    kinds, true for Anthropic's Messages API wherever it is served)."""
    defaults = CodecOptions()
    dialect = dialect_for(upstream_kind(kind=kind, translation=translation,
                                        upstream_model=upstream_model))
    betas = translation.get("anthropic_beta") or {}
    effort_map = translation.get("thinking_effort_map")
    return CodecOptions(
        allow_images=translation.get("allow_images", True),
        allow_documents=translation.get("allow_documents", dialect.allow_documents),
        budget_to_effort=({int(b): e for b, e in effort_map.items()} if effort_map is not None
                          else defaults.budget_to_effort),
        openai_max_tokens_field=translation.get("max_tokens_field", "max_tokens"),
        replay_reasoning_content=translation.get("replay_reasoning_content", False),
        # A provider given its own effort map reasons, unless it says otherwise.
        reasoning=translation.get("reasoning",
                                  True if effort_map is not None else dialect.reasoning),
        max_output_tokens=translation.get("max_output_tokens"),
        anthropic_beta_add=tuple(betas.get("add") or ()),
        anthropic_beta_remove=tuple(betas.get("remove") or ()),
        api_version=translation.get("api_version"),
        entra=MappingProxyType(dict(translation["entra"])) if translation.get("entra") else None,
        region=translation.get("region"),
        project=translation.get("project"),
        aws_profile=translation.get("aws_profile"),
        auto_cache=translation.get("auto_cache", True),
        drain_on_disconnect=translation.get("drain_on_disconnect", False),
    )
