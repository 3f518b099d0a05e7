"""`Idempotency-Key` on POSTs, scoped to the API key and kept 24 h.

The same key with the same body replays the first response byte for byte (a stream replays as
the same SSE bytes) with one upstream call and one charge; a different body gets 422; a
duplicate while the first is still running gets 409. Only successful responses are kept: a
request that failed may be retried under the same key.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from gateway.errors import Conflict, Unprocessable
from usage.models import IdempotencyRecord, IdempotencyStatus

TTL = timedelta(hours=24)
MAX_STORED_BYTES = 8 * 1024 * 1024


def body_hash(path: str, raw: bytes) -> str:
    return hashlib.sha256(path.encode() + b"\0" + raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    headers: dict[str, str]
    body: bytes


def idempotency_claim(*, api_key_id: int, key: str, digest: str) -> int | Replay:
    """Claim `key` for this request (returns the claim's id) or return the stored response.
    Raises Conflict (409) while the first is in flight, Unprocessable (422) for another body."""
    now = timezone.now()
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.filter(api_key_id=api_key_id, key=key, expires_at__lte=now).delete()
            record = IdempotencyRecord.objects.create(
                api_key_id=api_key_id, key=key, body_hash=digest,
                status=IdempotencyStatus.IN_PROGRESS, expires_at=now + TTL)
            return record.pk
    except IntegrityError:
        pass
    record = IdempotencyRecord.objects.filter(api_key_id=api_key_id, key=key).first()
    if record is None:
        raise Conflict("a request with this Idempotency-Key is still in progress")
    if record.body_hash != digest:
        raise Unprocessable("this Idempotency-Key was used with a different request body",
                            param="Idempotency-Key")
    if record.status != IdempotencyStatus.DONE:
        raise Conflict("a request with this Idempotency-Key is still in progress")
    return Replay(status=record.response_status, headers=dict(record.response_headers),
                  body=bytes(record.response_body))


def idempotency_complete(*, claim_id: int, status: int, headers: dict[str, str], body: bytes) -> None:
    """Store the response for replay; responses over MAX_STORED_BYTES release the key instead."""
    if len(body) > MAX_STORED_BYTES or status >= 300:
        idempotency_release(claim_id=claim_id)
        return
    IdempotencyRecord.objects.filter(pk=claim_id).update(
        status=IdempotencyStatus.DONE, response_status=status, response_headers=headers,
        response_body=body)


def idempotency_release(*, claim_id: int) -> None:
    IdempotencyRecord.objects.filter(pk=claim_id, status=IdempotencyStatus.IN_PROGRESS).delete()


def idempotency_purge(*, now=None) -> int:
    """Delete expired keys (Celery beat). Safe to run twice."""
    return IdempotencyRecord.objects.filter(expires_at__lte=now or timezone.now()).delete()[0]
