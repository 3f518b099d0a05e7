"""Reads of the chat app: a user's sessions and their history (as the JSON the chat page
uses)."""
from __future__ import annotations

from typing import Any

from chat.models import ChatMessage, ChatSession


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
