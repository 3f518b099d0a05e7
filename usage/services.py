"""Writes to the usage ledger."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction

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


def usage_record_write(*, entry: LedgerEntry) -> bool:
    """Insert the row for one request. Idempotent on `request_id`: a second write of the same
    request is ignored (returns False), so a retried flush never duplicates spend."""
    try:
        with transaction.atomic():
            UsageRecord.objects.create(**asdict(entry))
    except IntegrityError:
        if UsageRecord.objects.filter(request_id=entry.request_id).exists():
            return False
        raise
    return True
