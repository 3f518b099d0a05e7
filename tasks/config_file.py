"""The routing file's `tasks:` section (CONTRACT §3): one entry per task, by slug.

```yaml
tasks:
  - slug: risk_check
    model: gpt-4o-mini
    system_prompt: "You are a risk reviewer for {team}."
    max_tokens: 600
    temperature: 0.2          # optional, 0 to 2
    output_schema: {…}        # optional JSON Schema (tasks.schema)
    teams: [finance]          # optional: only these teams' keys may call it
    enabled: true
    description: …
```
Declared to providers.config_file by TasksConfig.config_sections() (tasks/apps.py); applied
by tasks.services.tasks_apply, exported by tasks.selectors.tasks_export.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator

from providers.config_file import ConfigModel, Slug
from tasks.schema import schema_check


class TaskSpec(ConfigModel):
    """A named prompt endpoint (tasks.models.Task). `teams`: the teams whose keys may call it
    (None: leave the task's access lists as the admin set them)."""
    slug: Annotated[Slug, Field(max_length=64)]
    model: str = Field(min_length=1, max_length=200)
    system_prompt: str = ""
    max_tokens: int = Field(1024, ge=1)
    temperature: float | None = None
    output_schema: Any = None
    teams: list[Annotated[str, Field(min_length=1)]] | None = None
    enabled: bool = True
    description: str = Field("", max_length=300)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 2:
            raise ValueError("must be a number from 0 to 2")
        return value

    @field_validator("output_schema")
    @classmethod
    def _output_schema(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            value = json.loads(json.dumps(value))  # plain JSON, as the database stores it
        except (TypeError, ValueError):
            raise ValueError("must be JSON (no dates or other YAML-only values)") from None
        problems = schema_check(value)
        if problems:
            raise ValueError(problems[0])
        return value

