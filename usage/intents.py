"""Crash-safe accounting: every admitted request leaves an intent before its upstream is called,
and a reaper turns the intents of a dead process into `lost` ledger rows.

Where an intent lives:
- Redis, when configured and reachable: in one of the budget shards
  (usage.budgets_redis.Shard, hash tag `{b<n>}`), the hash `gw:intent:{b<n>}` (request id ->
  the encoded `Intent`) and the sorted set `gw:intent-exp:{b<n>}` (request id by lease
  expiry). A budget reserved in Redis writes it in its own script
  (usage/lua/budget_reserve.lua), in the reservation's shard, so admission costs no extra round
  trip; an unbudgeted request writes it with one pipelined HSET + ZADD in the shard of its
  request id (`intent_shard`). The reaper scans every shard.
- The database otherwise (no Redis, or Redis unreachable): a `RequestIntent` row, inserted in
  the database budget reservation's transaction when there is one, else on its own.
- Nowhere when neither answers: the request is served, and a crash then loses its row (logged).

Lease: an intent expires `lease_s()` (three reaper intervals) after it was written or last
renewed. The process holding it renews all its intents every GATEWAY_REAPER_INTERVAL_S (one
round trip per store), so a stream that runs for an hour keeps its intent, and a process that
dies stops renewing. A fixed limit per request would not do: a provider's `timeout_s` (600 s by
default) bounds the gap between chunks, not a stream's length.

Removal: the transaction that writes a request's ledger row deletes its database intent
(usage.services); a Redis intent is removed just after its row is committed or spooled, off the
response path. A crash in between leaves an intent whose row exists: reaping it writes nothing
(the ledger's unique request id) and settles nothing.

The journal (GATEWAY_LEDGER_JOURNAL, Redis only): a finished request whose intent is in Redis
(and which settles nothing in the database: no database budget reservation, no Idempotency-Key
response to store) writes its finished row into its intent's shard (`gw:intent-final:{b<n>}`,
a usage.spool line) in the round trip that gives back its shared state, and its response ends
then; the database commit follows off the response path, and removes intent and row from Redis
as above. A process that dies in between leaves both: reaping them writes that row, with the
tokens and status the client saw, never a `lost` one. The renewal never touches that hash.

The reaper (`intents_reap`: each serving process every interval, from the ASGI lifespan, and
the Celery task `usage.reap_intents`) takes expired intents and for each writes the `lost` row
(tokens = the prompt estimate, `estimated`, priced at admission for the first candidate
deployment) with its budget settled in the same transaction (a database reservation released
and charged that cost, or the spend of a Redis reservation added to the database counters),
then settles the Redis reservation if Redis still holds it and deletes the intent. Every step
is idempotent on request id: two reapers, or one that died halfway, never write a second row or
release a reservation twice. A serving process reaps a store only once it has reached it
continuously for a lease, so the owners that could not renew during that store's outage have
renewed by then; the Celery task, which keeps no such memory, waits `CELERY_MARGIN_LEASES`
leases past expiry.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, IntegrityError
from django.utils import timezone

from gateway.database import db
from gateway.redis_client import AsyncClient, SyncClient, redis_is_cluster, redis_sync
from gateway.shared_state import REDIS_UNREACHABLE, SharedState
from usage.budgets import BudgetLimit, usd_to_units
from usage.budgets_redis import (
    ALL_SHARDS, LEGACY, Shard, intent_shard, reaper_scripts_load, reservation_settle_if_held,
)
from usage.models import RequestIntent, UsageSource, UsageStatus
from usage.services import LedgerEntry, usage_record_write
from usage.spool import ledger_spool_flush, spool_decode

logger = logging.getLogger(__name__)

REAP_BATCH = 200
RENEW_BATCH = 500
# The Celery reaper waits this many leases past an intent's expiry (see the module docstring).
CELERY_MARGIN_LEASES = 3
REDIS = "redis"
DATABASE = "db"


def lease_s() -> float:
    """How long an intent lives without being renewed: three renewal intervals."""
    return 3 * settings.GATEWAY_REAPER_INTERVAL_S


def lease_expiry(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(seconds=lease_s())


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Intent:
    """What the `lost` row of a request needs, known once it is admitted. The deployment is the
    first candidate (routing has not run yet); `cost_usd` is the prompt estimate priced for it
    at the price in force when the request started. `shared_limits`: the budgets reserved in
    Redis (their spend goes to the database counters with the row)."""
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
    prompt_tokens: int
    cost_usd: Decimal
    price_id: int | None
    idempotency_key: str = ""
    shared_limits: tuple[BudgetLimit, ...] = ()
    # Defaults, so intents written before these fields existed still decode.
    key_name: str = ""
    team_name: str = ""
    tags: str = ""
    end_user: str = ""

    def encode(self) -> str:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["created_at"] = self.created_at.isoformat()
        data["cost_usd"] = str(self.cost_usd)
        data["shared_limits"] = [[limit.scope, limit.scope_id, str(limit.limit_usd), limit.period]
                                 for limit in self.shared_limits]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, payload: str | bytes) -> Intent:
        data = json.loads(payload)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["cost_usd"] = Decimal(data["cost_usd"])
        data["shared_limits"] = tuple(
            BudgetLimit(scope=scope, scope_id=scope_id, limit_usd=Decimal(limit), period=period)
            for scope, scope_id, limit, period in data["shared_limits"])
        return cls(**data)

    def lost_entry(self) -> LedgerEntry:
        """The `lost` row: the prompt estimate, no output, no status the client saw (0)."""
        return LedgerEntry(
            request_id=self.request_id, client_request_id=self.client_request_id,
            created_at=self.created_at, api_key_id=self.api_key_id, key_prefix=self.key_prefix,
            team_id=self.team_id, surface=self.surface, public_model=self.public_model,
            upstream_model=self.upstream_model, provider_name=self.provider_name,
            route_id=self.route_id, stream=self.stream, status=UsageStatus.LOST, http_status=0,
            error_type="process_lost", input_tokens=self.prompt_tokens, output_tokens=0,
            cached_tokens=0, reasoning_tokens=0, usage_source=UsageSource.ESTIMATED,
            cost_usd=self.cost_usd, price_id=self.price_id, latency_ms=0, ttft_ms=None,
            idempotency_key=self.idempotency_key, key_name=self.key_name,
            team_name=self.team_name, tags=self.tags, end_user=self.end_user)


def intent_row(*, request_id: str, payload: str, expires_at: datetime) -> RequestIntent:
    """An unsaved database intent (for usage.budgets.budget_reserve to insert)."""
    return RequestIntent(request_id=request_id, payload=payload, expires_at=expires_at)


def intent_db_insert(*, request_id: str, payload: str, expires_at: datetime) -> None:
    intent_row(request_id=request_id, payload=payload, expires_at=expires_at).save(force_insert=True)


def intents_db_renew(*, request_ids: list[str], expires_at: datetime) -> int:
    """Push the lease of these database intents to `expires_at`; returns how many exist."""
    renewed = 0
    for start in range(0, len(request_ids), RENEW_BATCH):
        renewed += RequestIntent.objects.filter(
            request_id__in=request_ids[start:start + RENEW_BATCH]).update(expires_at=expires_at)
    return renewed


def intent_lost_write(*, intent: Intent) -> bool:
    """The `lost` row of `intent` with its budget settled at the estimate, its database intent
    deleted, in one transaction. False when the request already has a row (nothing changed)."""
    return usage_record_write(entry=intent.lost_entry(), settle_budget=True,
                              charge_limits=intent.shared_limits)


@dataclass(frozen=True, slots=True)
class Reaped:
    """One reaper round: rows written, and whether each store answered (None: not configured)."""
    lost: int
    redis_ok: bool | None
    db_ok: bool


def intents_reap(*, redis_before: datetime | None, db_before: datetime | None,
                 limit: int = REAP_BATCH) -> Reaped:
    """Turn the intents that expired before `redis_before` (in Redis) and `db_before` (in the
    database) into `lost` rows, at most `limit` from each; None only checks that the store
    answers. Sync (the ORM and a sync Redis client); never raises for a store being down."""
    lost = 0
    db_ok = True
    redis_ok: bool | None = None
    if settings.REDIS_URL:
        client = None
        try:
            client = redis_sync(socket_timeout=1, socket_connect_timeout=1)
            if redis_before is None:
                client.ping()
            else:
                lost += _reap_redis(client, before=redis_before, limit=limit)
            redis_ok = True
        except REDIS_UNREACHABLE as exc:
            redis_ok = False
            logger.warning("intent reaper: Redis unreachable (%s)", type(exc).__name__)
        except DatabaseError as exc:
            redis_ok, db_ok = True, False
            logger.warning("intent reaper: database unreachable (%s)", type(exc).__name__)
        finally:
            if client is not None:
                client.close()
    if db_ok:
        try:
            if db_before is None:
                RequestIntent.objects.exists()
            else:
                lost += _reap_db(before=db_before, limit=limit)
        except DatabaseError as exc:
            db_ok = False
            logger.warning("intent reaper: database unreachable (%s)", type(exc).__name__)
    if lost:
        logger.warning("intent reaper: %d requests of a dead process recorded as lost", lost)
    return Reaped(lost=lost, redis_ok=redis_ok, db_ok=db_ok)


def _lost_write(request_id: str, intent: Intent) -> bool:
    try:
        return intent_lost_write(intent=intent)
    except IntegrityError as exc:  # not a duplicate (say, a key deleted meanwhile): keep it
        logger.error("intent reaper: the lost row of %s was refused (%s)", request_id, exc)
        return False


def _reap_redis(client: SyncClient, *, before: datetime, limit: int) -> int:
    """Reap the expired intents of every shard (and, on a standalone Redis, those a process of
    the previous version left under the untagged names), at most `limit` in all."""
    shards = list(ALL_SHARDS) if redis_is_cluster() else [*ALL_SHARDS, LEGACY]
    with client.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.zrangebyscore(shard.intent_expiry, "-inf", _ms(before), start=0, num=limit)
        found = pipe.execute()
    due = [(shard, [i.decode() for i in ids]) for shard, ids in zip(shards, found) if ids]
    if not due:
        return 0
    reaper_scripts_load(client)
    lost = 0
    for shard, ids in due:
        ids = ids[:limit]
        limit -= len(ids)
        lost += _reap_shard(client, shard, ids)
        if limit <= 0:
            break
    return lost


def _final_write(request_id: str, line: bytes) -> int:
    """Write a journaled row; 1 when written now, 0 when the request already has its row."""
    item = spool_decode(line.decode())
    try:
        return int(usage_record_write(**item))
    except IntegrityError as exc:  # not a duplicate: keep the rest of the shard going
        logger.error("intent reaper: the journaled row of %s was refused (%s)", request_id, exc)
        return 0


def _reap_shard(client: SyncClient, shard: Shard, ids: list[str]) -> int:
    lost = 0
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(shard.intents, ids)
        pipe.hmget(shard.intent_final, ids)
        payloads, finals = pipe.execute()
    for request_id, payload, final in zip(ids, payloads, finals):
        pipe = client.pipeline(transaction=False)
        if final is not None:
            # The request was answered and its row journaled; its process died before the
            # commit. Its Redis reservation was settled in the round trip that journaled it.
            _final_write(request_id, final)
            pipe.hdel(shard.intent_final, request_id)
        elif payload is not None:
            intent = Intent.decode(payload)
            written = _lost_write(request_id, intent)
            lost += written
            if intent.shared_limits:
                # The spend of a row written just now; nothing for one already there (its
                # request settled, or is settling, its reservation itself).
                reservation_settle_if_held(
                    client, request_id=request_id, limits=list(intent.shared_limits),
                    at=intent.created_at,
                    cost_units=usd_to_units(intent.cost_usd) if written else 0, pipe=pipe,
                    shard=LEGACY if shard is LEGACY else None)
        pipe.hdel(shard.intents, request_id)
        pipe.zrem(shard.intent_expiry, request_id)
        pipe.execute()
    return lost


def _reap_db(*, before: datetime, limit: int) -> int:
    rows = list(RequestIntent.objects.filter(expires_at__lt=before).order_by("expires_at")
                .values_list("request_id", "payload")[:limit])
    if not rows:
        return 0
    # A row waiting in the spool (the database was down when its request ended) must land
    # before its intent is taken for lost.
    ledger_spool_flush()
    lost = 0
    for request_id, payload in rows:
        if _lost_write(request_id, Intent.decode(payload)):
            lost += 1
        else:
            RequestIntent.objects.filter(request_id=request_id).delete()
    return lost


class _LoopIntents:
    """The intents one event loop's requests hold, and its renewal and removal tasks."""

    __slots__ = ("held", "journaled", "redis", "shared", "removals", "remover", "renewer",
                 "timer")

    def __init__(self) -> None:
        # request id -> (store, encoded intent)
        self.held: dict[str, tuple[str, str]] = {}
        # request ids whose finished row is journaled beside their Redis intent
        self.journaled: set[str] = set()
        self.redis: AsyncClient | None = None
        self.shared: SharedState | None = None
        # (request id, encoded intent) whose Redis intent is to be removed
        self.removals: list[tuple[str, str]] = []
        self.remover: asyncio.Task | None = None
        self.renewer: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None


class IntentKeeper:
    """The intents of this process's requests in flight: written, renewed, removed.

    `record` writes one on its own (Redis, else the database); `held` registers one that
    admission wrote with the budget reservation. Registered intents are renewed every
    GATEWAY_REAPER_INTERVAL_S while any is held (a timer, not a task: nothing is left pending
    when a loop closes). `drop` forgets one whose row is written and removes it from Redis in
    the background, after any renewal in flight. Bounded by the requests in flight."""

    def __init__(self) -> None:
        self._loops: dict[asyncio.AbstractEventLoop, _LoopIntents] = {}

    def _state(self) -> _LoopIntents:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            self._loops = {lp: s for lp, s in self._loops.items() if not lp.is_closed()}
            state = self._loops[loop] = _LoopIntents()
        return state

    def _shared(self, state: _LoopIntents, client: AsyncClient) -> SharedState:
        if state.shared is None or state.redis is not client:
            state.redis = client
            state.shared = SharedState(client, name="request intents",
                                       fallback="intents are written to the database",
                                       logger=logger)
        return state.shared

    def held(self, *, request_id: str, payload: str, store: str,
             redis_client: AsyncClient | None = None) -> None:
        """Register an intent written elsewhere (with a budget reservation) in `store`."""
        state = self._state()
        if redis_client is not None:
            self._shared(state, redis_client)
        state.held[request_id] = (store, payload)
        self._schedule(state)

    async def record(self, *, request_id: str, payload: str,
                     redis_client: AsyncClient | None) -> bool:
        """Write an intent: in Redis (one pipelined round trip) when configured and reachable,
        else in the database. False when neither took it (logged; the request goes on)."""
        state = self._state()
        expires_at = lease_expiry()
        if redis_client is not None:
            async def shared() -> bool:
                shard = intent_shard(request_id)
                pipe = redis_client.pipeline(transaction=False)
                pipe.hset(shard.intents, request_id, payload)
                pipe.zadd(shard.intent_expiry, {request_id: _ms(expires_at)})
                await pipe.execute()
                return True

            async def fallback() -> bool:
                return False

            if await self._shared(state, redis_client).run(shared, fallback):
                state.held[request_id] = (REDIS, payload)
                self._schedule(state)
                return True
        try:
            await db.run(intent_db_insert, request_id=request_id, payload=payload,
                         expires_at=expires_at)
        except DatabaseError as exc:
            logger.warning("request %s has no intent: Redis and the database refused it (%s); "
                           "a crash now would lose its row", request_id, type(exc).__name__)
            return False
        state.held[request_id] = (DATABASE, payload)
        self._schedule(state)
        return True

    def final_queued(self, pipe, *, request_id: str, line: str,
                     shared_limits: Sequence[BudgetLimit] = ()) -> bool:
        """Queue the journaling of a finished request's row (a usage.spool line) beside its
        Redis intent on `pipe` (a pipeline of the intent's client, run by the caller).
        `shared_limits`: the budgets it reserved in Redis, which place its intent
        (`intent_shard`), as they did when admission wrote it. False when its intent is not in
        Redis (then the row must be committed before the response ends)."""
        state = self._state()
        held = state.held.get(request_id)
        if held is None or held[0] != REDIS or state.shared is None or state.shared.down:
            return False
        pipe.hset(intent_shard(request_id, shared_limits).intent_final, request_id, line)
        state.journaled.add(request_id)
        return True

    def drop(self, request_id: str) -> None:
        """The request's row is written (or spooled): stop renewing its intent, and remove it
        from Redis soon (a database intent went with the row's transaction)."""
        state = self._state()
        held = state.held.pop(request_id, None)
        if held is None or held[0] != REDIS:
            return
        state.removals.append((request_id, held[1]))
        if state.remover is None or state.remover.done():
            state.remover = asyncio.get_running_loop().create_task(self._remove(state))

    async def _remove(self, state: _LoopIntents) -> None:
        while state.removals:
            if state.renewer is not None and not state.renewer.done():
                await asyncio.wait([state.renewer])
            taken, state.removals = state.removals[:RENEW_BATCH], state.removals[RENEW_BATCH:]
            try:
                pipe = state.redis.pipeline(transaction=False)
                for shard, ids in _by_shard(taken).items():
                    pipe.hdel(shard.intents, *ids)
                    pipe.zrem(shard.intent_expiry, *ids)
                    if any(rid in state.journaled for rid in ids):
                        pipe.hdel(shard.intent_final, *ids)
                state.journaled.difference_update(rid for rid, _ in taken)
                await pipe.execute()
            except REDIS_UNREACHABLE as exc:
                # Their rows are written: a reaper finds them expired and writes nothing.
                logger.warning("%d request intents not removed from Redis (%s)", len(taken),
                               type(exc).__name__)

    def _schedule(self, state: _LoopIntents) -> None:
        if state.timer is None:
            state.timer = asyncio.get_running_loop().call_later(
                settings.GATEWAY_REAPER_INTERVAL_S, self._due, state)

    def _due(self, state: _LoopIntents) -> None:
        state.timer = None
        if state.held and (state.renewer is None or state.renewer.done()):
            state.renewer = asyncio.get_running_loop().create_task(self._renew(state))
        elif state.held:
            self._schedule(state)

    async def _renew(self, state: _LoopIntents) -> None:
        """One round trip per store for every intent held; Redis gets the intent itself again
        too (it may have restarted empty)."""
        expires_at = lease_expiry()
        in_redis = [(rid, payload) for rid, (store, payload) in state.held.items() if store == REDIS]
        in_db = [rid for rid, (store, _) in state.held.items() if store == DATABASE]
        try:
            if in_redis and state.redis is not None:
                pipe = state.redis.pipeline(transaction=False)
                for start in range(0, len(in_redis), RENEW_BATCH):
                    for shard, ids in _by_shard(in_redis[start:start + RENEW_BATCH]).items():
                        pipe.hset(shard.intents, mapping=ids)
                        pipe.zadd(shard.intent_expiry, dict.fromkeys(ids, _ms(expires_at)))
                try:
                    await pipe.execute()
                except REDIS_UNREACHABLE as exc:
                    logger.warning("%d request intents not renewed in Redis (%s)",
                                   len(in_redis), type(exc).__name__)
            if in_db:
                try:
                    await db.run(intents_db_renew, request_ids=in_db, expires_at=expires_at)
                except DatabaseError as exc:
                    logger.warning("%d request intents not renewed in the database (%s)",
                                   len(in_db), type(exc).__name__)
        finally:
            if state.held:
                self._schedule(state)


def _by_shard(intents: list[tuple[str, str]]) -> dict[Shard, dict[str, str]]:
    """(request id, encoded intent) pairs grouped by the shard each intent lives in: its
    budget reservation's, else its request id's (`intent_shard`). Off the request path."""
    groups: dict[Shard, dict[str, str]] = {}
    for request_id, payload in intents:
        limits = json.loads(payload).get("shared_limits") or ()
        shard = intent_shard(request_id, [BudgetLimit(scope=scope, scope_id=scope_id,
                                                      limit_usd=Decimal(limit), period=period)
                                          for scope, scope_id, limit, period in limits])
        groups.setdefault(shard, {})[request_id] = payload
    return groups


intent_keeper = IntentKeeper()


async def intents_reaper(*, interval_s: float | None = None) -> None:
    """Reap expired intents every `interval_s` (GATEWAY_REAPER_INTERVAL_S) until cancelled:
    the serving process's reaper, started by the ASGI lifespan. A store is reaped only after
    it has answered every round for a lease."""
    interval_s = interval_s or settings.GATEWAY_REAPER_INTERVAL_S
    since: dict[str, float | None] = {REDIS: None, DATABASE: None}
    while True:
        now, clock = timezone.now(), time.monotonic()
        ready = {store: at is not None and clock - at >= lease_s() for store, at in since.items()}
        try:
            reaped = await db.run(intents_reap, redis_before=now if ready[REDIS] else None,
                                  db_before=now if ready[DATABASE] else None)
            answered = {REDIS: reaped.redis_ok, DATABASE: reaped.db_ok}
        except Exception as exc:  # keep reaping whatever failed this round
            logger.error("intent reaper failed (%s)", type(exc).__name__)
            answered = {REDIS: False, DATABASE: False}
        for store, ok in answered.items():
            since[store] = (since[store] or clock) if ok else None
        await asyncio.sleep(interval_s)


def intents_reap_late() -> int:
    """The Celery reaper: intents expired more than CELERY_MARGIN_LEASES leases ago."""
    before = timezone.now() - timedelta(seconds=CELERY_MARGIN_LEASES * lease_s())
    return intents_reap(redis_before=before, db_before=before).lost
