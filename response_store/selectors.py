"""Reads of stored responses (async: they run on the proxy path)."""
from __future__ import annotations

from response_store.models import StoredResponse


async def stored_response_get(*, key_id: int, response_id: str) -> StoredResponse | None:
    """The key's own unexpired response `response_id`, else None (another key's included)."""
    return await StoredResponse.objects.live().of_key(key_id).filter(id=response_id).afirst()
