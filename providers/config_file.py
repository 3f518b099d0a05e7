"""The declarative routing file (CONTRACT §3): parse, expand `${VAR}`, validate into plain specs.

Errors name the field and the line: `line 7: providers[0].kind: must be one of …`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from datetime import timezone as dt_timezone
from decimal import Decimal, InvalidOperation

import yaml
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify

from chat.schema import schema_check
from providers.models import ProviderKind
from providers.translation import translation_problem
from providers.validation import base_url_problem

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A bad routing file; the message names the line and field, never a secret value."""


@dataclass(frozen=True)
class RouteSpec:
    public_model: str
    upstream_model: str
    weight: int | None = None
    priority: int | None = None


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    kind: str
    base_url: str
    api_key: str | None
    weight: int = 1
    priority: int = 0
    enabled: bool = True
    timeout_s: float = 600.0
    max_inflight: int = 512
    extra_headers: dict[str, str] = field(default_factory=dict)
    translation: dict = field(default_factory=dict)
    routes: tuple[RouteSpec, ...] = ()


@dataclass(frozen=True)
class PriceSpec:
    upstream_model: str
    provider: str | None
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    effective_from: datetime | None


@dataclass(frozen=True)
class TaskSpec:
    """A named prompt endpoint (chat.models.Task). `teams`: the teams whose keys may call it
    (None: leave the task's access lists as the admin set them)."""
    slug: str
    model: str
    system_prompt: str = ""
    max_tokens: int = 1024
    temperature: float | None = None
    output_schema: dict | bool | None = None
    teams: tuple[str, ...] | None = None
    enabled: bool = True
    description: str = ""


@dataclass(frozen=True)
class ConfigSpec:
    providers: tuple[ProviderSpec, ...]
    prices: tuple[PriceSpec, ...]
    tasks: tuple[TaskSpec, ...] = ()
    # Whether the file has a `tasks:` section: only then does --prune delete missing tasks.
    has_tasks: bool = False


class _LineMap(dict):
    line = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineMap:
    mapping = _LineMap(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def env_expand(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; an unset VAR without default is a ConfigError."""
    environ = os.environ if environ is None else environ
    out = []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        if line.lstrip().startswith("#"):
            out.append(line)
            continue

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"line {lineno}: environment variable {name} is not set")

        out.append(_VAR.sub(replace, line))
    return "".join(out)


def config_parse(text: str, environ: dict[str, str] | None = None) -> ConfigSpec:
    """Parse and validate the routing file text. Raises ConfigError."""
    expanded = env_expand(text, environ)
    try:
        data = yaml.load(expanded, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{where}invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = _LineMap()
    if not isinstance(data, dict):
        raise ConfigError("line 1: the file must be a mapping with `providers`, `prices`, `tasks`")
    unknown = set(data) - {"providers", "prices", "tasks"}
    if unknown:
        raise ConfigError(f"line {data.line}: unknown top-level field(s): {', '.join(sorted(unknown))}")
    providers = tuple(_provider(p, i) for i, p in enumerate(_list(data, "providers")))
    names = [p.name for p in providers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"providers: duplicate name(s): {', '.join(sorted(dupes))}")
    prices = tuple(_price(p, i) for i, p in enumerate(_list(data, "prices")))
    tasks = tuple(_task(t, i) for i, t in enumerate(_list(data, "tasks")))
    slugs = [t.slug for t in tasks]
    dupes = {s for s in slugs if slugs.count(s) > 1}
    if dupes:
        raise ConfigError(f"tasks: duplicate slug(s): {', '.join(sorted(dupes))}")
    return ConfigSpec(providers=providers, prices=prices, tasks=tasks, has_tasks="tasks" in data)


def _list(data: _LineMap, key: str) -> list:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"line {data.line}: {key}: must be a list")
    return value


def _field(where: str, item: _LineMap, key: str, message: str) -> ConfigError:
    return ConfigError(f"line {item.line}: {where}.{key}: {message}")


def _int(where: str, item: _LineMap, key: str, default: int, minimum: int | None = None) -> int:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _field(where, item, key, "must be an integer")
    if minimum is not None and value < minimum:
        raise _field(where, item, key, f"must be >= {minimum}")
    return value


def _decimal(where: str, item: _LineMap, key: str, required: bool = True) -> Decimal | None:
    if key not in item or item[key] is None:
        if required:
            raise _field(where, item, key, "is required")
        return None
    value = item[key]
    # A bare YAML number arrives as float; str() gives its shortest round-trip text ("0.15").
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise _field(where, item, key, "must be a decimal number") from None
    if not result.is_finite() or result < 0:
        raise _field(where, item, key, "must be a non-negative decimal number")
    return result


def _provider(item: object, index: int) -> ProviderSpec:
    where = f"providers[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping")
    allowed = {"name", "kind", "base_url", "api_key", "weight", "priority", "enabled", "timeout_s",
               "max_inflight", "models", "extra_headers", "translation"}
    unknown = set(item) - allowed
    if unknown:
        raise _field(where, item, sorted(unknown)[0], "unknown field")
    name = item.get("name")
    if not isinstance(name, str) or not name or slugify(name) != name:
        raise _field(where, item, "name", "must be a slug (lowercase letters, digits, '-', '_')")
    kind = item.get("kind")
    if kind not in ProviderKind.values:
        raise _field(where, item, "kind", f"must be one of {', '.join(ProviderKind.values)}")
    base_url = item.get("base_url") or ""
    if kind != ProviderKind.MOCK or base_url:
        problem = base_url_problem(base_url) if isinstance(base_url, str) else "must be an http(s) URL"
        if problem:
            raise _field(where, item, "base_url", problem)
    api_key = item.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise _field(where, item, "api_key", "must be a string")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _field(where, item, "enabled", "must be true or false")
    timeout = item.get("timeout_s", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise _field(where, item, "timeout_s", "must be a positive number")
    headers = item.get("extra_headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, (str, int)) for v in headers.values()):
        raise _field(where, item, "extra_headers", "must map header names to strings")
    translation = item.get("translation") or {}
    problem = translation_problem(translation)
    if problem:
        raise _field(where, item, "translation", problem)
    translation = {k: ({str(b): e for b, e in v.items()} if k == "thinking_effort_map" else v)
                   for k, v in translation.items()}
    models = item.get("models") or {}
    if not isinstance(models, dict):
        raise _field(where, item, "models", "must map public model names to upstream models")
    routes = []
    for public, target in models.items():
        route_where = f"{where}.models.{public}"
        if isinstance(target, str):
            routes.append(RouteSpec(public_model=str(public), upstream_model=target))
        elif isinstance(target, dict):
            upstream = target.get("upstream")
            if not isinstance(upstream, str) or not upstream:
                raise _field(route_where, target, "upstream", "is required")
            unknown = set(target) - {"upstream", "weight", "priority"}
            if unknown:
                raise _field(route_where, target, sorted(unknown)[0], "unknown field")
            routes.append(RouteSpec(
                public_model=str(public), upstream_model=upstream,
                weight=_int(route_where, target, "weight", None, 0) if "weight" in target else None,
                priority=_int(route_where, target, "priority", 0) if "priority" in target else None,
            ))
        else:
            raise _field(where, item, f"models.{public}", "must be an upstream name or a mapping")
    return ProviderSpec(
        name=name, kind=kind, base_url=base_url, api_key=api_key,
        weight=_int(where, item, "weight", 1, 0),
        priority=_int(where, item, "priority", 0),
        enabled=enabled, timeout_s=float(timeout),
        max_inflight=_int(where, item, "max_inflight", 512, 1),
        extra_headers={str(k): str(v) for k, v in headers.items()},
        translation=translation,
        routes=tuple(routes),
    )


def _price(item: object, index: int) -> PriceSpec:
    where = f"prices[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping")
    unknown = set(item) - {"model", "provider", "input", "output", "cached_input", "effective_from"}
    if unknown:
        raise _field(where, item, sorted(unknown)[0], "unknown field")
    model = item.get("model")
    if not isinstance(model, str) or not model:
        raise _field(where, item, "model", "is required (the upstream model name)")
    provider = item.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise _field(where, item, "provider", "must be a provider name")
    effective = item.get("effective_from")
    if effective is not None:
        if isinstance(effective, date) and not isinstance(effective, datetime):
            effective = datetime.combine(effective, time.min)
        elif not isinstance(effective, datetime):
            effective = parse_datetime(str(effective))
        if effective is None:
            raise _field(where, item, "effective_from", "must be an ISO 8601 date-time")
        if timezone.is_naive(effective):
            effective = timezone.make_aware(effective, dt_timezone.utc)
    return PriceSpec(
        upstream_model=model, provider=provider,
        input_per_mtok=_decimal(where, item, "input"),
        output_per_mtok=_decimal(where, item, "output"),
        cached_input_per_mtok=_decimal(where, item, "cached_input", required=False),
        effective_from=effective,
    )


def _plain(value: object) -> object:
    """YAML values without the line-tracking mapping type (for JSON storage and comparison)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _task(item: object, index: int) -> TaskSpec:
    where = f"tasks[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping")
    allowed = {"slug", "model", "system_prompt", "max_tokens", "temperature", "output_schema",
               "teams", "enabled", "description"}
    unknown = set(item) - allowed
    if unknown:
        raise _field(where, item, sorted(unknown)[0], "unknown field")
    slug = item.get("slug")
    if not isinstance(slug, str) or not slug or len(slug) > 64 or slugify(slug) != slug:
        raise _field(where, item, "slug", "must be a slug (lowercase letters, digits, '-', '_')")
    model = item.get("model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise _field(where, item, "model", "is required (a public model name)")
    prompt = item.get("system_prompt", "")
    if not isinstance(prompt, str):
        raise _field(where, item, "system_prompt", "must be a string")
    temperature = item.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise _field(where, item, "temperature", "must be a number from 0 to 2")
    schema = item.get("output_schema")
    if schema is not None:
        problems = schema_check(schema)
        if problems:
            line = getattr(schema, "line", 0) or item.line
            raise ConfigError(f"line {line}: {where}.output_schema: {problems[0]}")
    teams = item.get("teams")
    if teams is not None and not (isinstance(teams, list)
                                  and all(isinstance(t, str) and t for t in teams)):
        raise _field(where, item, "teams", "must be a list of team names")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _field(where, item, "enabled", "must be true or false")
    description = item.get("description", "")
    if not isinstance(description, str) or len(description) > 300:
        raise _field(where, item, "description", "must be a string of at most 300 characters")
    return TaskSpec(
        slug=slug, model=model, system_prompt=prompt,
        max_tokens=_int(where, item, "max_tokens", 1024, 1),
        temperature=float(temperature) if temperature is not None else None,
        output_schema=_plain(schema),
        teams=tuple(teams) if teams is not None else None,
        enabled=enabled, description=description,
    )
