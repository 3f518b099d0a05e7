"""The declarative routing file (CONTRACT §3): parse, expand `${VAR}`, validate into specs.

Errors name the line and the field: `line 7: providers[0].kind: must be one of …`, one line per
problem. The line is that of the mapping holding the field (a list entry, a route, a schema).

Validation is pydantic (v2, strict mode) rather than a JSON Schema of the file: the specs the
services consume are the validated models themselves, with their defaults and conversions
(Decimal prices, aware datetimes, string header values) declared once beside the rules, and
pydantic reports every problem with its location, which maps back to a YAML line. Strict mode
keeps YAML's types honest: `true` is not an integer and `5` is not a string.

`providers` and `prices` are this app's. Every other top-level section belongs to the app that
declares it: an AppConfig with a `config_sections()` method returning `ConfigSection`s (the
tasks app owns `tasks:`). Such a section is validated here with the same errors, applied in the
same transaction by `providers.services.config_apply`, and exported by `config_export`, and
providers never imports the app.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from datetime import timezone as dt_timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import yaml
from django.apps import apps
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter,
                      ValidationError, ValidationInfo, field_validator, model_validator)

from gateway.dialects import DIALECTS
from providers.capabilities import route_capabilities_problem
from providers.translation import credentials_problem, translation_problem
from providers.validation import base_url_problem

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_PROBLEMS = 20


class ConfigError(Exception):
    """A bad routing file; the message names the line and field, never a secret value."""


class ConfigModel(BaseModel):
    """Base of the file's entries: strict types, unknown fields refused, immutable."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, validate_by_name=True)


def slug_check(value: str) -> str:
    if not value or slugify(value) != value:
        raise ValueError("must be a slug (lowercase letters, digits, '-', '_')")
    return value


Slug = Annotated[str, AfterValidator(slug_check)]


@dataclass(frozen=True)
class RouteSpec:
    public_model: str
    upstream_model: str
    weight: int | None = None
    priority: int | None = None
    reasoning: bool | None = None
    max_output_tokens: int | None = None
    responses_api: bool | None = None


class RouteTarget(ConfigModel):
    """A provider's `models` value: an upstream name, or {upstream, weight, priority,
    reasoning, max_output_tokens, responses_api} (absent: the provider's, see
    providers.capabilities)."""
    upstream: str = Field(min_length=1)
    weight: int | None = Field(None, ge=0)
    priority: int | None = None
    reasoning: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    responses_api: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_or_mapping(cls, value: object) -> object:
        if isinstance(value, str):
            return {"upstream": value}
        if not isinstance(value, dict):
            raise ValueError("must be an upstream name or a mapping")
        return value


def _string_keys(message: str) -> Callable[[object], dict]:
    def convert(value: object) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(message)
        return {str(k): v for k, v in value.items()}
    return convert


def _headers(value: object) -> dict[str, str]:
    if value is None:
        value = {}
    if not isinstance(value, dict) or not all(isinstance(v, (str, int)) for v in value.values()):
        raise ValueError("must map header names to strings")
    return {str(k): str(v) for k, v in value.items()}


def _translation(value: object) -> dict[str, Any]:
    value = {} if value is None else value
    problem = translation_problem(value)
    if problem:
        raise ValueError(problem)
    return {k: ({str(b): e for b, e in v.items()} if k == "thinking_effort_map" else v)
            for k, v in value.items()}


class ProviderSpec(ConfigModel):
    name: Slug
    kind: str
    base_url: str = Field("", validate_default=True)
    api_key: str | None = None
    weight: int = Field(1, ge=0)
    priority: int = 0
    enabled: bool = True
    timeout_s: float = Field(600.0, gt=0)
    max_inflight: int = Field(512, ge=1)
    extra_headers: Annotated[dict[str, str], BeforeValidator(_headers)] = {}
    translation: Annotated[dict[str, Any], BeforeValidator(_translation)] = {}
    models: Annotated[dict[str, RouteTarget], BeforeValidator(
        _string_keys("must map public model names to upstream models"))] = {}

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        kinds = [kind for kind, dialect in DIALECTS.items() if dialect.selectable]
        if value not in kinds:
            raise ValueError(f"must be one of {', '.join(kinds)}")
        return value

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url(cls, value: object, info: ValidationInfo) -> object:
        value = value or ""
        kind = info.data.get("kind")  # absent when the kind itself is wrong
        if kind is None or (not DIALECTS[kind].base_url_required and not value):
            return value
        problem = base_url_problem(value) if isinstance(value, str) else "must be an http(s) URL"
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _per_kind(self) -> ProviderSpec:
        """What this provider's kind needs: its own settings only, and its API key (or
        secret) where it cannot work without one."""
        if problem := translation_problem(self.translation, kind=self.kind):
            raise ValueError(f"translation: {problem}")
        if DIALECTS[self.kind].api_key_required and not self.api_key:
            raise ValueError(f"api_key: required for kind {self.kind}")
        if problem := credentials_problem(kind=self.kind, api_key=self.api_key or ""):
            raise ValueError(f"api_key: {problem}")
        for public, target in self.models.items():
            if problem := route_capabilities_problem(kind=self.kind,
                                                     responses_api=target.responses_api):
                raise ValueError(f"models.{public}.{problem}")
        return self

    @property
    def routes(self) -> tuple[RouteSpec, ...]:
        return tuple(RouteSpec(public_model=public, upstream_model=t.upstream, weight=t.weight,
                               priority=t.priority, reasoning=t.reasoning,
                               max_output_tokens=t.max_output_tokens,
                               responses_api=t.responses_api)
                     for public, t in self.models.items())


def _price(value: object) -> Decimal | None:
    if value is None:
        return None
    # A bare YAML number arrives as float; str() gives its shortest round-trip text ("0.15").
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("must be a decimal number") from None
    if not result.is_finite() or result < 0:
        raise ValueError("must be a non-negative decimal number")
    return result


def _price_required(value: object) -> Decimal:
    if value is None:
        raise ValueError("is required")
    return _price(value)


def _effective_from(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    elif not isinstance(value, datetime):
        value = parse_datetime(str(value))
    if value is None:
        raise ValueError("must be an ISO 8601 date-time")
    return timezone.make_aware(value, dt_timezone.utc) if timezone.is_naive(value) else value


Price = Annotated[Decimal, BeforeValidator(_price_required)]


OptionalPrice = Annotated[Decimal | None, BeforeValidator(_price)]


class LongContextSpec(ConfigModel):
    """`long_context:` of a price: above `threshold` input tokens, the whole request is billed
    at these rates (usage.pricing)."""
    threshold: int = Field(gt=0)
    input: OptionalPrice = None
    output: OptionalPrice = None
    cached_input: OptionalPrice = None
    cache_write_5m: OptionalPrice = None
    cache_write_1h: OptionalPrice = None


class PriceSpec(ConfigModel):
    upstream_model: str = Field(alias="model", min_length=1)
    provider: str | None = None
    input_per_mtok: Price = Field(alias="input")
    output_per_mtok: Price = Field(alias="output")
    cached_input_per_mtok: OptionalPrice = Field(None, alias="cached_input")
    cache_write_5m_per_mtok: OptionalPrice = Field(None, alias="cache_write_5m")
    cache_write_1h_per_mtok: OptionalPrice = Field(None, alias="cache_write_1h")
    reasoning_per_mtok: OptionalPrice = Field(None, alias="reasoning")
    audio_input_per_mtok: OptionalPrice = Field(None, alias="audio_input")
    audio_output_per_mtok: OptionalPrice = Field(None, alias="audio_output")
    image_input_per_mtok: OptionalPrice = Field(None, alias="image_input")
    image_output_per_mtok: OptionalPrice = Field(None, alias="image_output")
    long_context: LongContextSpec | None = None
    effective_from: Annotated[datetime | None, BeforeValidator(_effective_from)] = None

    def price_fields(self) -> dict[str, Any]:
        """The Price columns this entry sets (providers.models.PRICE_OPTIONAL_FIELDS and the
        two required rates), None for the rates it leaves out."""
        tier = self.long_context
        fields = {name: getattr(self, name) for name in (
            "input_per_mtok", "output_per_mtok", "cached_input_per_mtok",
            "cache_write_5m_per_mtok", "cache_write_1h_per_mtok", "reasoning_per_mtok",
            "audio_input_per_mtok", "audio_output_per_mtok", "image_input_per_mtok",
            "image_output_per_mtok")}
        fields["long_context_threshold"] = tier.threshold if tier else None
        for name in ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h"):
            fields[f"long_context_{name}_per_mtok"] = getattr(tier, name) if tier else None
        return fields


@dataclass(frozen=True)
class SectionResult:
    written: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class ConfigSection:
    """A top-level section of the file owned by another app.

    `item`: the model one list entry validates into; `unique`: the field no two entries may
    share. `apply(specs, prune=)` writes the entries inside config_apply's transaction (raising
    ConfigError for what only the database can tell, such as an unknown team); with `prune`
    it deletes the rows the section no longer lists. `export()`: the entries as the file
    writes them."""
    name: str
    item: type[ConfigModel]
    apply: Callable[..., SectionResult]
    export: Callable[[], list[dict[str, Any]]]
    unique: str | None = None


def config_sections() -> dict[str, ConfigSection]:
    """The sections the installed apps declare, by name."""
    return {section.name: section for app in apps.get_app_configs()
            if hasattr(app, "config_sections") for section in app.config_sections()}


@dataclass(frozen=True)
class ConfigSpec:
    providers: tuple[ProviderSpec, ...]
    prices: tuple[PriceSpec, ...]
    # The other apps' sections that the file has, by name: only those are applied (and, with
    # --prune, pruned).
    sections: Mapping[str, tuple[ConfigModel, ...]] = field(default_factory=dict)


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
    """Parse and validate the routing file text. Raises ConfigError naming every problem."""
    expanded = env_expand(text, environ)
    try:
        data = yaml.load(expanded, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{where}invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = _LineMap()
        data.line = 1
    sections = config_sections()
    known = ("providers", "prices", *sections)
    if not isinstance(data, dict):
        raise ConfigError(f"line 1: the file must be a mapping with {', '.join(known)}")
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"line {data.line}: unknown top-level field(s): "
                          f"{', '.join(sorted(map(str, unknown)))}")
    items = {"providers": (ProviderSpec, "name"), "prices": (PriceSpec, None),
             **{name: (s.item, s.unique) for name, s in sections.items()}}
    parsed: dict[str, tuple] = {}
    problems: list[str] = []
    for name, (model, unique) in items.items():
        if name not in data:
            parsed[name] = ()
            continue
        try:
            parsed[name] = tuple(TypeAdapter(list[model]).validate_python(data[name] or []))
        except ValidationError as exc:
            problems += [_problem(data, (name, *error["loc"]), error) for error in exc.errors()]
            continue
        if unique:
            values = [getattr(spec, unique) for spec in parsed[name]]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                problems.append(f"{name}: duplicate {unique}(s): {', '.join(dupes)}")
    if problems:
        raise ConfigError("\n".join(problems[:MAX_PROBLEMS]))
    return ConfigSpec(providers=parsed["providers"], prices=parsed["prices"],
                      sections={name: parsed[name] for name in sections if name in data})


def _problem(data: _LineMap, loc: Sequence[str | int], error: Mapping[str, Any]) -> str:
    line, node = data.line, data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, _LineMap):
            line = node.line
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"line {line}: {where}: {_message(error)}"


def _message(error: Mapping[str, Any]) -> str:
    """pydantic's error in the file's own words."""
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op, bound = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
                     "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
        limit = ctx[bound]
        return f"must be {op} {int(limit) if float(limit).is_integer() else limit}"
    if kind == "too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    return _MESSAGES.get(kind, error["msg"])


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}

