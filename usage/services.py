"""Writes to the usage ledger."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction

from usage.budgets import budget_settle, usd_to_units
from usage.idempotency import idempotency_complete, idempotency_release
from usage.models import UsageRecord


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    request_id: str
    client_request_id: str
    created_at: datetime
    api_key_id: int | None
    key_prefix: str
    team_id: int | None
    surface: str
    public_model: str
    upstream_model: str
    provider_name: str
    route_id: int | None
    stream: bool
    status: str
    http_status: int
    error_type: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    usage_source: str
    cost_usd: Decimal
    price_id: int | None
    latency_ms: int
    ttft_ms: int | None
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response to keep for an Idempotency-Key claim."""
    claim_id: int
    status: int
    headers: dict[str, str]
    body: bytes


def usage_record_write(*, entry: LedgerEntry, settle_budget: bool = False,
                       response: StoredResponse | None = None, release_claim: int | None = None) -> bool:
    """Insert the row for one request, settle its budget reservation and store its response
    for idempotent replay, in one transaction. Idempotent on `request_id`: a second write of
    the same request changes nothing (returns False), so a retried flush never double-charges."""
    try:
        with transaction.atomic():
            UsageRecord.objects.create(**{k: v for k, v in asdict(entry).items()})
            if settle_budget:
                budget_settle(request_id=entry.request_id, cost_units=usd_to_units(entry.cost_usd))
            if response is not None:
                idempotency_complete(claim_id=response.claim_id, status=response.status,
                                     headers=response.headers, body=response.body)
            if release_claim is not None:
                idempotency_release(claim_id=release_claim)
    except IntegrityError:
        if UsageRecord.objects.filter(request_id=entry.request_id).exists():
            return False
        raise
    return True
