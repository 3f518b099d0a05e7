"""Typed readers for fields of a client's parsed JSON body.

Each reader returns the value with its Python type, or raises `InvalidRequest` whose `param`
names the offending field the way OpenAI does (`messages[2].content`). JSON booleans are never
accepted as numbers. `count` is the lenient exception, for upstream token counts.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest


def as_object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object", param=param)
    return value


def as_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be an array", param=param)
    return value


def as_str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string", param=param)
    return value


def join(prefix: str, key: str | int) -> str:
    """The param path of `key` inside `prefix`: "messages" + 2 -> "messages[2]"."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def opt_str(body: Mapping[str, Any], key: str, prefix: str = "", *,
            required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"'{join(prefix, key)}' is required", param=join(prefix, key))
        return None
    return as_str(value, join(prefix, key))


def req_str(body: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = opt_str(body, key, prefix, required=True)
    assert value is not None
    return value


def opt_bool(body: Mapping[str, Any], key: str, prefix: str = "") -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{join(prefix, key)}' must be a boolean", param=join(prefix, key))
    return value


def opt_int(body: Mapping[str, Any], key: str, prefix: str = "", *, minimum: int = 0,
            required: bool = False) -> int | None:
    param = join(prefix, key)
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"'{param}' is required", param=param)
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{param}' must be an integer", param=param)
    if value < minimum:
        raise InvalidRequest(f"'{param}' must be at least {minimum}", param=param)
    return value


def opt_number(body: Mapping[str, Any], key: str, prefix: str = "", *, minimum: float,
               maximum: float) -> float | None:
    param = join(prefix, key)
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidRequest(f"'{param}' must be a number", param=param)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"'{param}' must be between {minimum:g} and {maximum:g}",
                             param=param)
    return value


def opt_object(body: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any] | None:
    value = body.get(key)
    return None if value is None else as_object(value, join(prefix, key))


def opt_list(body: Mapping[str, Any], key: str, prefix: str = "", *,
             required: bool = False) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"'{join(prefix, key)}' is required", param=join(prefix, key))
        return None
    return as_list(value, join(prefix, key))


def str_or_list(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """Stop sequences: absent, one string, or an array of strings."""
    value = body.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(as_str(v, join(key, i)) for i, v in enumerate(as_list(value, key)))


def str_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    """A metadata-style object whose values are all strings."""
    value = opt_object(body, key)
    if value is None:
        return {}
    return {k: as_str(v, join(key, k)) for k, v in value.items()}


def count(value: Any) -> int:
    """A token count read from an upstream's JSON, where a missing or odd value counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def unsupported(param: str, what: str) -> InvalidRequest:
    """The error for input the gateway understands but cannot carry to any upstream."""
    return InvalidRequest(f"{what} is not supported by this gateway", param=param)
