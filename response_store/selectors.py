"""Reads of stored responses (sync; the proxy runs them through gateway.database.db)."""
from __future__ import annotations

from response_store.models import StoredResponse


def stored_response_get(*, key_id: int, response_id: str) -> StoredResponse | None:
    """The key's own unexpired response `response_id`, else None (another key's included)."""
    return StoredResponse.objects.live().of_key(key_id).filter(id=response_id).first()
