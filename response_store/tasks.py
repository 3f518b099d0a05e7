from __future__ import annotations

from celery import shared_task

from response_store.services import stored_responses_purge


@shared_task(name="response_store.purge")
def stored_responses_purge_task() -> int:
    return stored_responses_purge()
