"""System prompt templates of tasks: `{name}` placeholders filled from the request's
`variables`, `{{` and `}}` for literal braces. Pure; no attribute access or format specs (unlike
str.format), so a template can never reach into Python objects.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptError(ValueError):
    """The template needs variables the request did not send (`missing`, sorted)."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"missing variable(s): {', '.join(missing)}")
        self.missing = missing


def prompt_variables(template: str) -> set[str]:
    """The variable names a template uses."""
    return {m.group(1) for m in _TOKEN.finditer(template) if m.group(1)}


def prompt_render(template: str, variables: Mapping[str, object]) -> str:
    """The template with every `{name}` replaced; strings as they are, other JSON values as
    JSON text. Raises PromptError naming every variable that is missing."""
    missing = sorted(prompt_variables(template) - set(variables))
    if missing:
        raise PromptError(missing)

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        value = variables[match.group(1)]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TOKEN.sub(replace, template)
