"""Writes to the usage ledger."""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal

from django.db import IntegrityError, connections, router, transaction

from usage.budgets import BudgetLimit, budgets_charge, budgets_settle, usd_to_units
from usage.idempotency import idempotency_complete, idempotency_release
from usage.models import LedgerRequest, RequestIntent, UsageRecord
from usage.rollups import late_days_and_hours, ledger_late_count


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as it is inserted (the columns of usage.models.UsageRecord)."""
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
    # Defaults, so rows spooled before these columns existed still decode (usage.spool).
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    key_name: str = ""
    team_name: str = ""
    tags: str = ""
    end_user: str = ""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response to keep for an Idempotency-Key claim."""
    claim_id: int
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class LedgerWrite:
    """One request's ledger write: its row, whether it settles a budget reservation, and its
    idempotency outcome (a response to store, or a claim to release)."""
    entry: LedgerEntry
    settle_budget: bool = False
    charge_limits: tuple[BudgetLimit, ...] = ()
    response: StoredResponse | None = None
    release_claim: int | None = None


_ENTRY_FIELDS = tuple(f.name for f in fields(LedgerEntry))


@functools.lru_cache(maxsize=8)
def _insert_statement(alias: str) -> tuple[str, tuple]:
    by_attname = {f.attname: f for f in UsageRecord._meta.concrete_fields}
    columns = tuple(by_attname[name] for name in _ENTRY_FIELDS)
    quote = connections[alias].ops.quote_name
    sql = (f"INSERT INTO {quote(UsageRecord._meta.db_table)} "
           f"({', '.join(quote(f.column) for f in columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))})")
    return sql, columns


@functools.lru_cache(maxsize=8)
def _claim_statement(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    return (f"INSERT INTO {quote(LedgerRequest._meta.db_table)} "
            f"({quote('request_id')}, {quote('created_at')}) VALUES (%s, %s)")


def _rows_insert(entries: list[LedgerEntry]) -> None:
    """One multi-row INSERT of ledger rows: each value goes through its model field's own
    database preparation, without building model instances or compiling a query per batch
    (the ORM's share of the hot path's CPU). On MySQL-family databases the ledger is
    partitioned and its request ids go to LedgerRequest first: that primary key is what
    refuses a second row of a request there (usage.partitions)."""
    alias = router.db_for_write(UsageRecord)
    connection = connections[alias]
    sql, columns = _insert_statement(alias)
    rows = [[f.get_db_prep_save(getattr(entry, f.attname), connection) for f in columns]
            for entry in entries]
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            at = UsageRecord._meta.get_field("created_at")
            cursor.executemany(_claim_statement(alias), [
                (entry.request_id, at.get_db_prep_save(entry.created_at, connection))
                for entry in entries])
        cursor.executemany(sql, rows)


def _intents_delete(request_ids: list[str]) -> None:
    """Drop the database intents (usage.intents) of requests whose rows are being written: in
    the rows' transaction, so a request has its intent or its row, never neither. Plain SQL,
    one statement per batch (most requests have no intent here: Redis holds it)."""
    alias = router.db_for_write(RequestIntent)
    connection = connections[alias]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {quote(RequestIntent._meta.db_table)} WHERE "
                       f"{quote('request_id')} IN ({', '.join(['%s'] * len(request_ids))})",
                       request_ids)


def _writes_apply(writes: list[LedgerWrite]) -> None:
    """The rows, budget settlements and idempotency outcomes of `writes`, and the requests'
    database intents dropped; call inside a transaction. Raises IntegrityError when a row is
    already there."""
    _rows_insert([w.entry for w in writes])
    _intents_delete([w.entry.request_id for w in writes])
    charges = {w.entry.request_id: usd_to_units(w.entry.cost_usd)
               for w in writes if w.settle_budget}
    if charges:
        budgets_settle(charges=charges)
    spend = [(limit, w.entry.created_at, usd_to_units(w.entry.cost_usd))
             for w in writes for limit in w.charge_limits]
    if spend:
        budgets_charge(charges=spend)
    for w in writes:
        if w.response is not None:
            idempotency_complete(claim_id=w.response.claim_id, status=w.response.status,
                                 headers=w.response.headers, body=w.response.body)
        if w.release_claim is not None:
            idempotency_release(claim_id=w.release_claim)
    days, hours = late_days_and_hours([w.entry.created_at for w in writes], datetime.now(UTC))
    if days or hours:
        ledger_late_count(days=days, hours=hours)  # last: its locks are held the shortest


def usage_record_write(*, entry: LedgerEntry, settle_budget: bool = False,
                       charge_limits: tuple[BudgetLimit, ...] = (),
                       response: StoredResponse | None = None, release_claim: int | None = None) -> bool:
    """Insert the row for one request, settle its budget reservation (`settle_budget`: one made
    in the database; `charge_limits`: one made in Redis, so only the spend is added here) and
    store its response for idempotent replay, in one transaction. Idempotent on `request_id`:
    a second write of the same request changes nothing (returns False), so a retried flush
    never double-charges."""
    try:
        with transaction.atomic():
            _writes_apply([LedgerWrite(entry=entry, settle_budget=settle_budget,
                                       charge_limits=charge_limits, response=response,
                                       release_claim=release_claim)])
    except IntegrityError:
        # Its row, or (partitioned ledger) its request id's claim: the row may be archived.
        if (UsageRecord.objects.filter(request_id=entry.request_id).exists()
                or LedgerRequest.objects.filter(request_id=entry.request_id).exists()):
            return False
        raise
    return True


def usage_records_write(*, writes: list[LedgerWrite]) -> None:
    """Write many requests' rows, budget settlements and idempotency outcomes in one
    transaction (the gateway's group commit). Rows already written (a retried write) make the
    batch fall back to one transaction per write, each idempotent as `usage_record_write`.
    Raises DatabaseError when the database refuses the writes; nothing is then kept."""
    try:
        with transaction.atomic():
            _writes_apply(writes)
    except IntegrityError:
        for w in writes:
            usage_record_write(entry=w.entry, settle_budget=w.settle_budget,
                               charge_limits=w.charge_limits, response=w.response,
                               release_claim=w.release_claim)
