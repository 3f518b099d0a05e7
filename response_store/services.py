"""Writes of stored responses (sync; the proxy runs them through gateway.database.db)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from response_store.models import StoredResponse


def stored_response_save(*, response_id: str, key_id: int, provider_id: int | None,
                               upstream_id: str, model: str, items: list[dict[str, Any]],
                               input_count: int, response: dict[str, Any],
                               ttl_s: float) -> None:
    """Store (or replace) one response for `ttl_s` seconds."""
    now = timezone.now()
    StoredResponse.objects.update_or_create(id=response_id, defaults={
        "api_key_id": key_id, "provider_id": provider_id, "upstream_id": upstream_id,
        "model": model[:200], "items": items, "input_count": input_count,
        "response": response, "created_at": now, "expires_at": now + timedelta(seconds=ttl_s)})


def stored_response_delete(*, key_id: int, response_id: str) -> bool:
    """Delete the key's own response; False when it has none of that id."""
    deleted, _ = StoredResponse.objects.of_key(key_id).filter(id=response_id).delete()
    return bool(deleted)


def stored_responses_purge() -> int:
    """Delete every expired response; returns how many (a periodic task)."""
    deleted, _ = StoredResponse.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
