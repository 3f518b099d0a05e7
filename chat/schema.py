"""Task output schemas: a strict subset of JSON Schema (draft 2020-12), checked and applied
without dependencies.

Validation keywords: type, enum, const, properties, required, additionalProperties, items,
minItems, maxItems, uniqueItems, minLength, maxLength, pattern, minimum, maximum,
exclusiveMinimum, exclusiveMaximum, anyOf, allOf, oneOf. Annotations (title, description,
default, examples, format, $schema, $id, $comment) are accepted and ignored, as the draft
allows. Any other keyword ($ref, if/then, …) is refused by `schema_check` when the task is
saved, so a schema never silently validates less than it says.

`output_parse` reads a model's answer as JSON, tolerating one surrounding Markdown code fence.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format", "$schema",
                          "$id", "$comment", "readOnly", "writeOnly", "deprecated"})
_KEYWORDS = frozenset({"type", "enum", "const", "properties", "required", "additionalProperties",
                       "items", "uniqueItems", "pattern", *_SCHEMA_LISTS, *_NUMBERS, *_COUNTS})
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*)\n\s*```\s*$", re.DOTALL)
MAX_ERRORS = 20


def schema_check(schema: object, path: str = "$") -> list[str]:
    """Problems that make `schema` unusable (not an object, unknown keywords, wrong shapes);
    empty when it is fine."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, Mapping):
        return [f"{path}: a schema must be an object"]
    problems = []
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key in _ANNOTATIONS:
            continue
        if key not in _KEYWORDS:
            problems.append(f"{where}: unsupported keyword")
        elif key == "type":
            names = value if isinstance(value, list) else [value]
            if not names or any(n not in TYPES for n in names):
                problems.append(f"{where}: must be one of {', '.join(TYPES)} (or a list of them)")
        elif key == "enum" and not isinstance(value, list):
            problems.append(f"{where}: must be a list")
        elif key == "properties":
            if not isinstance(value, Mapping):
                problems.append(f"{where}: must be an object")
            else:
                for name, sub in value.items():
                    problems += schema_check(sub, f"{where}.{name}")
        elif key == "required" and not (isinstance(value, list)
                                         and all(isinstance(v, str) for v in value)):
            problems.append(f"{where}: must be a list of property names")
        elif key in ("additionalProperties", "items"):
            problems += schema_check(value, where)
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                problems.append(f"{where}: must be a non-empty list of schemas")
            else:
                for i, sub in enumerate(value):
                    problems += schema_check(sub, f"{where}[{i}]")
        elif key in _NUMBERS and not _is_number(value):
            problems.append(f"{where}: must be a number")
        elif key in _COUNTS and not (_is_integer(value) and value >= 0):
            problems.append(f"{where}: must be a non-negative integer")
        elif key == "uniqueItems" and not isinstance(value, bool):
            problems.append(f"{where}: must be true or false")
        elif key == "pattern":
            try:
                re.compile(value)
            except (re.error, TypeError):
                problems.append(f"{where}: must be a regular expression")
    return problems


def schema_validate(instance: Any, schema: object, path: str = "$") -> list[str]:
    """Where `instance` breaks `schema` (a schema `schema_check` accepts), as
    "$.path: message" lines; empty when it matches. At most MAX_ERRORS lines."""
    errors: list[str] = []
    _validate(instance, schema, path, errors)
    return errors[:MAX_ERRORS]


def output_parse(text: str) -> tuple[Any, str | None]:
    """(the JSON value, None) or (None, why it is not JSON). One surrounding ``` fence is
    removed first: models often wrap JSON in one."""
    fenced = _FENCE.match(text)
    raw = fenced.group(1) if fenced else text
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, f"$: the output is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or \
        (isinstance(value, float) and value.is_integer())


def _type_matches(instance: Any, name: str) -> bool:
    return {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "number": _is_number,
        "integer": _is_integer,
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }[name](instance)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _validate(instance: Any, schema: object, path: str, errors: list[str]) -> None:
    if schema is True:
        return
    if schema is False:
        errors.append(f"{path}: no value is allowed here")
        return
    assert isinstance(schema, Mapping)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_matches(instance, n) for n in names):
            errors.append(f"{path}: must be of type {' or '.join(names)}")
            return
    if "enum" in schema and not any(_equal(instance, v) for v in schema["enum"]):
        errors.append(f"{path}: must be one of {json.dumps(schema['enum'])[:200]}")
    if "const" in schema and not _equal(instance, schema["const"]):
        errors.append(f"{path}: must be {json.dumps(schema['const'])[:200]}")
    if isinstance(instance, dict):
        _validate_object(instance, schema, path, errors)
    elif isinstance(instance, list):
        _validate_array(instance, schema, path, errors)
    elif isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            errors.append(f"{path}: must be at least {schema['minLength']} characters long")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            errors.append(f"{path}: must be at most {schema['maxLength']} characters long")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: must match the pattern {schema['pattern']}")
    elif _is_number(instance):
        _validate_number(instance, schema, path, errors)
    _validate_combinators(instance, schema, path, errors)


def _validate_object(instance: dict, schema: Mapping, path: str, errors: list[str]) -> None:
    properties = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in instance:
            errors.append(f"{path}: the property {name!r} is required")
    extra = schema.get("additionalProperties", True)
    for name, value in instance.items():
        where = f"{path}.{name}"
        if name in properties:
            _validate(value, properties[name], where, errors)
        elif extra is False:
            errors.append(f"{where}: is not an allowed property")
        elif extra is not True:
            _validate(value, extra, where, errors)


def _validate_array(instance: list, schema: Mapping, path: str, errors: list[str]) -> None:
    if "minItems" in schema and len(instance) < schema["minItems"]:
        errors.append(f"{path}: must have at least {schema['minItems']} items")
    if "maxItems" in schema and len(instance) > schema["maxItems"]:
        errors.append(f"{path}: must have at most {schema['maxItems']} items")
    if schema.get("uniqueItems"):
        for i, item in enumerate(instance):
            if any(_equal(item, other) for other in instance[:i]):
                errors.append(f"{path}[{i}]: duplicates an earlier item")
                break
    if "items" in schema:
        for i, item in enumerate(instance):
            _validate(item, schema["items"], f"{path}[{i}]", errors)


def _validate_number(instance: float, schema: Mapping, path: str, errors: list[str]) -> None:
    checks = (("minimum", lambda v, m: v >= m, "at least"),
              ("maximum", lambda v, m: v <= m, "at most"),
              ("exclusiveMinimum", lambda v, m: v > m, "greater than"),
              ("exclusiveMaximum", lambda v, m: v < m, "less than"))
    for key, ok, words in checks:
        if key in schema and not ok(instance, schema[key]):
            errors.append(f"{path}: must be {words} {schema[key]}")


def _validate_combinators(instance: Any, schema: Mapping, path: str, errors: list[str]) -> None:
    if "allOf" in schema:
        for sub in schema["allOf"]:
            _validate(instance, sub, path, errors)
    for key in ("anyOf", "oneOf"):
        if key not in schema:
            continue
        matches = sum(not schema_validate(instance, sub, path) for sub in schema[key])
        if key == "anyOf" and matches == 0:
            errors.append(f"{path}: must match at least one of the anyOf schemas")
        elif key == "oneOf" and matches != 1:
            errors.append(f"{path}: must match exactly one of the oneOf schemas (matched {matches})")


def output_validate(text: str, schema: object) -> tuple[Any, list[str]]:
    """A model's answer judged against a task's schema: (the parsed JSON value, problems);
    problems is empty when the answer is JSON that matches."""
    value, error = output_parse(text)
    if error is not None:
        return None, [error]
    return value, schema_validate(value, schema)
