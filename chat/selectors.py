"""Reads of the chat app: a user's sessions and their history (as the JSON the chat page
uses), and the task table the task endpoints are served from."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chat.models import ChatMessage, ChatSession, Task
from providers.selectors import KeyInfo


def session_json(session: ChatSession) -> dict[str, Any]:
    return {"id": session.pk, "title": session.title, "model": session.model,
            "created_at": session.created_at.isoformat(),
            "updated_at": session.updated_at.isoformat()}


def message_json(message: ChatMessage) -> dict[str, Any]:
    return {"id": message.pk, "role": message.role, "content": message.content,
            "status": message.status, "error": message.error, "model": message.model,
            "provider": message.provider, "request_id": message.request_id,
            "input_tokens": message.input_tokens, "output_tokens": message.output_tokens,
            "cost_usd": str(message.cost_usd), "context_trimmed": message.context_trimmed,
            "created_at": message.created_at.isoformat()}


def chat_sessions_list(*, user_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """The user's sessions, most recently used first."""
    return [session_json(s) for s in ChatSession.objects.for_user(user_id)[:limit]]


def chat_session_detail(*, user_id: int, session_id: int) -> dict[str, Any]:
    """A session with its whole history. Raises ChatSession.DoesNotExist for another user's."""
    session = ChatSession.objects.for_user(user_id).get(pk=session_id)
    return {**session_json(session),
            "messages": [message_json(m) for m in session.messages.order_by("id")]}


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as the endpoint serves it (immutable; see chat.models.Task)."""
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
