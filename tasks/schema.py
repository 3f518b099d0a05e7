"""Task output schemas: JSON Schema, draft 2020-12, through the `jsonschema` library.

`schema_check` refuses, when a task is saved, a schema that is not valid against the draft's
meta-schema, that uses a keyword the draft does not define (a typo such as `requried` would
otherwise validate nothing), or whose `$ref` cannot be resolved inside the schema itself. No
reference is ever fetched: the only documents a `$ref` can reach are the schema and the
draft's own meta-schemas.

`schema_validate` gives the places where a value breaks a schema as "$.path: message" lines.
The messages are the gateway's own and never quote the value: they go back to API clients
beside an output that can be long. `output_parse` reads a model's answer as JSON, tolerating
one surrounding Markdown code fence.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

MAX_ERRORS = 20
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*)\n\s*```\s*$", re.DOTALL)
# The draft's meta-schema, with any keyword it does not evaluate refused. `$dynamicAnchor:
# meta` makes every subschema of the checked schema come back to this document (that is how
# the draft extends its meta-schema), so the rule applies at every depth.
_STRICT_META_ID = "urn:gateway:tasks:strict-2020-12"
_STRICT_META = {"$schema": Draft202012Validator.META_SCHEMA["$id"], "$id": _STRICT_META_ID,
                "$dynamicAnchor": "meta", "$ref": Draft202012Validator.META_SCHEMA["$id"],
                "unevaluatedProperties": False}
_META_REGISTRY = SPECIFICATIONS.with_resource(_STRICT_META_ID, DRAFT202012.create_resource(_STRICT_META))
_META = Draft202012Validator(Draft202012Validator.META_SCHEMA,
                             format_checker=Draft202012Validator.FORMAT_CHECKER)
_STRICT = Draft202012Validator(_STRICT_META, registry=_META_REGISTRY)
# Every keyword the draft's vocabularies define (the properties of its meta-schemas).
_KEYWORDS = frozenset(
    name for uri in SPECIFICATIONS
    if uri.startswith("https://json-schema.org/draft/2020-12/")
    for name in SPECIFICATIONS.contents(uri).get("properties", {}))


def _path(parts: Iterable[object], root: str = "$") -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def schema_check(schema: object) -> list[str]:
    """Problems that make `schema` unusable, as "$.path: message" lines; empty when it is fine."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, Mapping):
        return ["$: a schema must be an object"]
    problems = [f"{_path(e.absolute_path)}: {_meta_message(e)}"
                for e in sorted(_META.iter_errors(schema), key=lambda e: list(e.absolute_path))]
    if problems:
        return problems
    for error in _STRICT.iter_errors(schema):
        unknown = sorted(set(error.instance) - _KEYWORDS, key=str)
        problems += [f"{_path([*error.absolute_path, name])}: unsupported keyword"
                     for name in unknown]
    return problems or _references_unresolvable(schema)


def _meta_message(error: ValidationError) -> str:
    """The innermost reason (`type: "text"` fails an anyOf of two; say which values it may take)."""
    while error.context:
        error = min(error.context, key=lambda e: (-len(e.absolute_path), e.validator != "enum"))
    if error.validator == "enum":
        return "must be one of " + ", ".join(map(str, error.validator_value))
    message = _MESSAGES.get(error.validator)
    return message(error.validator_value) if message else error.message


def _references_unresolvable(schema: Mapping) -> list[str]:
    """Each `$ref` that resolves to nothing, walking the subschemas the draft defines."""
    root = DRAFT202012.create_resource(schema)
    problems: list[str] = []

    def walk(resource: Resource, resolver, path: str) -> None:
        contents = resource.contents
        if not isinstance(contents, Mapping):
            return
        ref = contents.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                problems.append(f"{path}.$ref: cannot be resolved within the schema ({ref})")
        for sub in resource.subresources():
            walk(sub, resolver.in_subresource(sub), path + _where(contents, sub.contents))

    walk(root, Registry().resolver_with_root(root), "$")
    return problems


def _where(parent: Mapping, child: object) -> str:
    """The path from a schema to one of its direct subschemas."""
    for key, value in parent.items():
        if value is child:
            return f".{key}"
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is child:
                    return f".{key}[{i}]"
        elif isinstance(value, Mapping):
            for name, item in value.items():
                if item is child:
                    return f".{key}.{name}"
    return ""


def _validator(schema: object) -> Draft202012Validator:
    # An empty registry: `$ref` reaches the schema itself and the draft's meta-schemas only
    # (jsonschema's default would fetch any other URL over the network).
    return Draft202012Validator(schema, registry=Registry())


def schema_validate(instance: Any, schema: object) -> list[str]:
    """Where `instance` breaks `schema` (one `schema_check` accepts), as "$.path: message" lines
    in the order of the instance (a value's own problems before its members'); empty when it
    matches. At most MAX_ERRORS lines. A value of the wrong type gets that one line, not one
    for every keyword it could not be checked against."""
    validator = _validator(schema)
    errors = list(islice(validator.iter_errors(instance), 4 * MAX_ERRORS))
    mistyped = {(tuple(e.absolute_path), tuple(e.absolute_schema_path)[:-1])
                for e in errors if e.validator == "type"}
    found: list[tuple[list, str]] = []
    for error in errors:
        where = tuple(error.absolute_path)
        if error.validator != "type" and (where, tuple(error.absolute_schema_path)[:-1]) in mistyped:
            continue
        found += _messages(validator, error)
    found.sort(key=lambda item: _position(instance, item[0]))
    return list(dict.fromkeys(f"{_path(parts)}: {message}" for parts, message in found))[:MAX_ERRORS]


def _position(instance: Any, parts: list) -> tuple[int, ...]:
    """Where a path leads in the instance, as indexes (object members in their order)."""
    key, node = [], instance
    for part in parts:
        if isinstance(node, dict) and part in node:
            key.append(list(node).index(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            key.append(part)
            node = node[part]
        else:
            break
    return tuple(key)


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)[:200]


def _messages(validator: Draft202012Validator, error: ValidationError) -> list[tuple[list, str]]:
    """(path, message) of each problem one error stands for."""
    path, kind, expected, value = (list(error.absolute_path), error.validator,
                                   error.validator_value, error.instance)
    if kind is None:  # the schema `false`
        return [(path, "no value is allowed here")]
    if kind == "required":
        return [(path, f"the property {name!r} is required")
                for name in expected if isinstance(value, dict) and name not in value]
    if kind == "uniqueItems":
        index = next(i for i in range(1, len(value))
                     if not validator.evolve(schema={"uniqueItems": True}).is_valid(value[:i + 1]))
        return [([*path, index], "duplicates an earlier item")]
    if kind == "additionalProperties" and expected is False:
        allowed = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        return [([*path, name], "is not an allowed property") for name in value
                if name not in allowed and not any(re.search(p, name) for p in patterns)]
    if kind == "oneOf":
        matched = sum(validator.evolve(schema=sub).is_valid(value) for sub in expected)
        return [(path, f"must match exactly one of the oneOf schemas (matched {matched})")]
    message = _MESSAGES.get(kind)
    return [(path, message(expected) if message else error.message)]


_MESSAGES: dict[str, Callable[[Any], str]] = {
    "type": lambda t: "must be of type " + " or ".join(t if isinstance(t, list) else [t]),
    "enum": lambda e: f"must be one of {_text(e)}",
    "const": lambda c: f"must be {_text(c)}",
    "minLength": lambda n: f"must be at least {n} characters long",
    "maxLength": lambda n: f"must be at most {n} characters long",
    "pattern": lambda p: f"must match the pattern {p}",
    "minItems": lambda n: f"must have at least {n} items",
    "maxItems": lambda n: f"must have at most {n} items",
    "minProperties": lambda n: f"must have at least {n} properties",
    "maxProperties": lambda n: f"must have at most {n} properties",
    "minimum": lambda m: f"must be at least {m}",
    "maximum": lambda m: f"must be at most {m}",
    "exclusiveMinimum": lambda m: f"must be greater than {m}",
    "exclusiveMaximum": lambda m: f"must be less than {m}",
    "multipleOf": lambda m: f"must be a multiple of {m}",
    "anyOf": lambda _: "must match at least one of the anyOf schemas",
    "not": lambda _: "must not match the schema under `not`",
    "contains": lambda _: "must contain a matching item",
    "minContains": lambda n: f"must contain at least {n} matching items",
    "maxContains": lambda n: f"must contain at most {n} matching items",
    "format": lambda f: f"must be a valid {f}",
    "dependentRequired": lambda _: "is missing a property that another one requires",
    "propertyNames": lambda _: "has a property name the schema does not allow",
}


def output_parse(text: str) -> tuple[Any, str | None]:
    """(the JSON value, None) or (None, why it is not JSON). One surrounding ``` fence is
    removed first: models often wrap JSON in one."""
    fenced = _FENCE.match(text)
    raw = fenced.group(1) if fenced else text
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, f"$: the output is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


def output_validate(text: str, schema: object) -> tuple[Any, list[str]]:
    """A model's answer judged against a task's schema: (the parsed JSON value, problems);
    problems is empty when the answer is JSON that matches."""
    value, error = output_parse(text)
    if error is not None:
        return None, [error]
    return value, schema_validate(value, schema)
