"""Writes of the chat app: chat accounts (each user's own API key), sessions and messages.

All are sync ORM functions; async views call them through gateway.database.db.run.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction

from chat.context import Turn
from chat.models import ChatAccount, ChatMessage, ChatSession, MessageRole
from providers.services import api_key_create

# A title is the first words of the first message: about what a history sidebar shows on
# one line (~40 characters), and a little more for the tooltip and the page header.
TITLE_LENGTH = 60


class NothingToRetry(Exception):
    """A retry was asked for in a session without a user message."""


def chat_account_key_hash(*, user_id: int, username: str) -> str:
    """The key hash of the user's chat API key, creating the account and its key (named
    `chat:<username>`, no limits until an admin sets some) on first use."""
    account = ChatAccount.objects.filter(user_id=user_id).select_related("api_key").first()
    if account is not None:
        return account.api_key.key_hash
    try:
        with transaction.atomic():
            key, _raw = api_key_create(name=f"chat:{username}"[:100])
            ChatAccount.objects.create(user_id=user_id, api_key=key)
            return key.key_hash
    except IntegrityError:
        # A concurrent first request created it; ours was rolled back.
        return ChatAccount.objects.select_related("api_key").get(user_id=user_id).api_key.key_hash


def chat_session_create(*, user_id: int, model: str = "", title: str = "") -> ChatSession:
    return ChatSession.objects.create(user_id=user_id, model=model[:200], title=title[:200])


def chat_session_rename(*, user_id: int, session_id: int, title: str) -> ChatSession:
    """Raises ChatSession.DoesNotExist for another user's session."""
    session = ChatSession.objects.for_user(user_id).get(pk=session_id)
    session.title = title.strip()[:200]
    # Not `updated_at`: the list is ordered by use, and a rename is not use.
    session.save(update_fields=["title"])
    return session


def chat_session_delete(*, user_id: int, session_id: int) -> bool:
    """Delete a session with its messages; False when the user has no such session."""
    deleted, _ = ChatSession.objects.for_user(user_id).filter(pk=session_id).delete()
    return bool(deleted)


def title_from(content: str) -> str:
    """The first words of `content` on one line, at most TITLE_LENGTH characters: cut after
    the last whole word that fits, with "…" (a first word longer than that is cut itself)."""
    line = " ".join(content.split())
    if len(line) <= TITLE_LENGTH:
        return line
    head = line[:TITLE_LENGTH]  # room for the ellipsis: the cut drops at least one character
    words = head[:head.rfind(" ")] if " " in head else head[:TITLE_LENGTH - 1]
    return words.rstrip(" ,.;:!?-") + "…"


@dataclass(frozen=True, slots=True)
class TurnStart:
    session_id: int
    history: list[Turn]


@transaction.atomic
def chat_turn_begin(*, user_id: int, session_id: int, content: str, retry: bool,
                    model: str) -> TurnStart:
    """Record the user's message (or, for a retry, drop the answers after the last user
    message) and return the history to send: every message with content, oldest first.
    Raises ChatSession.DoesNotExist (not the user's) or NothingToRetry."""
    session = ChatSession.objects.for_user(user_id).select_for_update().get(pk=session_id)
    if retry:
        last = session.messages.filter(role=MessageRole.USER).order_by("-id").first()
        if last is None:
            raise NothingToRetry("this chat has no message to retry")
        session.messages.filter(id__gt=last.id).delete()
    else:
        ChatMessage.objects.create(session=session, role=MessageRole.USER, content=content,
                                   model=model)
        if not session.title:
            session.title = title_from(content)
    session.model = model
    session.save(update_fields=["model", "title", "updated_at"])
    history = [Turn(role=role, content=text) for role, text in
               session.messages.exclude(content="").order_by("id").values_list("role", "content")]
    return TurnStart(session_id=session.pk, history=history)


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """An assistant answer as it ended (complete, stopped or failed)."""
    session_id: int
    content: str
    status: str
    error: str = ""
    model: str = ""
    provider: str = ""
    request_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    context_trimmed: int = 0


def chat_answer_store(*, answer: AnswerRecord) -> int | None:
    """Store an assistant answer; None when its session was deleted meanwhile."""
    session = ChatSession.objects.filter(pk=answer.session_id).first()
    if session is None:
        return None
    message = ChatMessage.objects.create(
        session=session, role=MessageRole.ASSISTANT, content=answer.content,
        status=answer.status, error=answer.error[:500], model=answer.model,
        provider=answer.provider, request_id=answer.request_id,
        input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
        cost_usd=answer.cost_usd, context_trimmed=answer.context_trimmed)
    session.save(update_fields=["updated_at"])
    return message.pk
