"""Reads of the tasks app: the task table the endpoints are served from, and the tasks as the
routing file writes them."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from providers.selectors import KeyInfo
from tasks.models import Task


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as the endpoint serves it (immutable; see tasks.models.Task)."""
    slug: str
    model: str
    system_prompt: str
    max_tokens: int
    temperature: float | None
    output_schema: Mapping[str, Any] | bool | None
    allowed_key_ids: frozenset[int]
    allowed_team_ids: frozenset[int]

    def allows(self, key: KeyInfo) -> bool:
        """No allowed keys and teams: every key; else the key or its team must be listed."""
        if not self.allowed_key_ids and not self.allowed_team_ids:
            return True
        return key.id in self.allowed_key_ids or (
            key.team_id is not None and key.team_id in self.allowed_team_ids)


def task_table_load() -> dict[str, TaskInfo]:
    """Every enabled task by slug, in three queries."""
    tasks = Task.objects.enabled().prefetch_related("allowed_keys", "allowed_teams")
    return {t.slug: TaskInfo(
        slug=t.slug, model=t.model, system_prompt=t.system_prompt, max_tokens=t.max_tokens,
        temperature=t.temperature, output_schema=t.output_schema,
        allowed_key_ids=frozenset(k.pk for k in t.allowed_keys.all()),
        allowed_team_ids=frozenset(team.pk for team in t.allowed_teams.all()),
    ) for t in tasks}


def tasks_export() -> list[dict[str, Any]]:
    """Every task as the routing file's `tasks:` section writes it (allowed keys are admin-only
    and not exported; defaults are left out)."""
    out = []
    for task in Task.objects.prefetch_related("allowed_teams").order_by("slug"):
        item: dict[str, Any] = {"slug": task.slug, "model": task.model}
        if task.description:
            item["description"] = task.description
        item.update({"system_prompt": task.system_prompt, "max_tokens": task.max_tokens})
        if task.temperature is not None:
            item["temperature"] = task.temperature
        if task.output_schema is not None:
            item["output_schema"] = task.output_schema
        teams = sorted(team.name for team in task.allowed_teams.all())
        if teams:
            item["teams"] = teams
        if not task.enabled:
            item["enabled"] = False
        out.append(item)
    return out
