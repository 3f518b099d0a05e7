"""Budget reservations in Redis, when REDIS_URL is set: one Lua script per request instead of a
database transaction, exact across workers and replicas.

Each (scope, id, period) has a Redis hash {s: spent units, r: units reserved in Redis, d: units
reserved in the database, t: when d was read}, seeded from the database counter the first time
it is needed (and again after a week unused, or after a Redis restart). `reserve` checks
`s + r + d + amount <= limit` for every scope and reserves in all of them or none, atomically;
`settle` turns the reservation into spend. The database stays the record: the ledger batch adds
each row's cost to its counters' `spent_units` (see usage.services), so counters still equal
the ledger; Redis only answers "is there room?".

The Redis copy is never behind the database (`lua/budget_sync.lua`): a sync sets `s` to the
larger of Redis's spend and the database's and `d` to the database's reservations.
- While Redis is unreachable (`gateway.shared_state`) the caller reserves in the database
  (usage.budgets), and settles there. This process notes the counters it reserved there, and the
  Redis reservations whose settlement did not reach Redis; when Redis answers again, before its
  first shared call, it settles the latter in Redis and syncs the former.
- While `d` is not 0 (reservations made in the database, by any process, not settled yet),
  `reserve` syncs the counter again once per SYNC_INTERVAL, so those settle into Redis's view.
- Redis holds an epoch (a random id, set when missing: on first use and after Redis restarted
  empty). Each process keeps the reservations it holds in Redis until they settle; a process
  whose epoch is not Redis's holds them again there (`lua/budget_restore.lua`) before its next
  reservation, so a restart does not free the room of requests still in flight.

A reservation whose request never settles (a crashed worker) is reaped by the next `reserve`
in its shard after RESERVATION_TTL. The scripts are in `lua/budget_*.lua`.

Shards (Redis Cluster): every key a budget script touches carries one hash tag, `{b<n>}`, one of
SHARDS, so each script runs within one slot. A request's shard is that of its root scope: its
team when it has a team budget (a team's counter is reserved together with the counters of all
its keys), else its key (`budget_shard`). The shard holds the counters, the reservations and
their expiry, the epoch and the intents (usage.intents) of the requests reserved there, which
the reservation writes in the same script. Why a fixed number of shards rather than one tag per
scope: the reaper must find every intent, and 64 sets are scanned in one pipelined round trip
per node, where one per team or key would need an index of its own; 64 tags spread the budget
traffic over up to 64 masters (about 21 each on three). The epoch is kept per shard, so a
failover that lost one shard's data restores only that shard's reservations.

Failover of a master (Redis Cluster; replication is asynchronous): what the dead master had
acknowledged but not yet sent to its replica is lost, typically the last milliseconds of
reservations and settlements. Until the replica is promoted, a process that calls that shard
finds Redis unreachable and reserves in the database, as in any outage. The epoch a
reservation checks includes the serving master's replication id, which a promoted replica
changes: each process's next reservation in that shard first holds again its in-flight
reservations there (`lua/budget_restore.lua`, a no-op for those the replica has) and brings
their counters up to the database, as after a restart, so lost reservations and settlements
count again.

Both at once in one process (the moments an outage starts and ends, when some of its
requests reserve in Redis while others reserve in the database): each side sees the other's
reservations of this process, so they never add up past a limit. A reservation on its way to
Redis counts as held (`held_units`) for a database reservation checked meanwhile, and a
database reservation (`database_reservation`) counts against the limit a Redis reservation is
checked with while it is in flight; once committed, its counter is synced into Redis (`d`)
before this process reserves in it in Redis again. Across processes the database's
reservations reach Redis at the next sync (SYNC_INTERVAL).

What is still open: spend settled in Redis in the moments before a restart and not yet
committed to the database, and the in-flight reservations of a process that has not reserved
since the restart, are not counted until they settle.
"""
from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from gateway.errors import BudgetExceeded
from gateway.redis_client import AsyncClient, SyncClient, redis_sync
from gateway.shared_state import REDIS_UNREACHABLE, LuaScript, SharedState
from usage.budgets import RESERVATION_TTL, BudgetLimit, period_bounds, retry_after, usd_to_units

logger = logging.getLogger(__name__)

SHARDS = 64
IDLE_TTL_S = 7 * 86400
REAP_PER_CALL = 20
SYNC_INTERVAL = timedelta(seconds=1)
# What one process remembers for write-back at most (bounded memory in a long outage; beyond
# it, the oldest is forgotten and left to the reservation TTL and the next sync).
MAX_REMEMBERED = 100_000

_RESERVE = LuaScript.beside(__file__, "budget_reserve.lua")
_SETTLE = LuaScript.beside(__file__, "budget_settle.lua")
_SYNC = LuaScript.beside(__file__, "budget_sync.lua")
_RESTORE = LuaScript.beside(__file__, "budget_restore.lua")

# The database's figures of a counter: (spent, reserved) units, or spent alone.
CounterUnits = Callable[[BudgetLimit, datetime], Awaitable["tuple[int, int] | int"]]


@dataclass(frozen=True, slots=True)
class Shard:
    """The key names of one budget shard (module docstring), all under the hash tag `{tag}`.
    `tag` None names the keys as they were before shards (standalone Redis only: the reaper
    still takes intents a process of the previous version left there)."""
    tag: str | None

    def _name(self, tagged: str, legacy: str) -> str:
        return legacy if self.tag is None else f"{tagged}:{{{self.tag}}}"

    @property
    def reservations(self) -> str:
        """Hash: request id -> "amount counter-key counter-key ..."."""
        return self._name("gw:budget-res", "gw:budget-res")

    @property
    def expiry(self) -> str:
        """Sorted set: request id by reservation expiry (ms)."""
        return self._name("gw:budget-res-exp", "gw:budget-res:exp")

    @property
    def epoch(self) -> str:
        """String: the id of this shard's dataset (set again when Redis lost it)."""
        return self._name("gw:budget-epoch", "gw:budget-epoch")

    @property
    def intents(self) -> str:
        """Hash: request id -> encoded intent (usage.intents)."""
        return self._name("gw:intent", "gw:intent")

    @property
    def intent_expiry(self) -> str:
        """Sorted set: request id by intent lease expiry (ms)."""
        return self._name("gw:intent-exp", "gw:intent:exp")

    @property
    def intent_final(self) -> str:
        """Hash: request id -> its finished ledger row (usage.spool line), journaled before the
        response ended and not yet committed (usage.intents, GATEWAY_LEDGER_JOURNAL)."""
        return self._name("gw:intent-final", "gw:intent:final")

    def counter(self, limit: BudgetLimit, now: datetime) -> str:
        start, _ = period_bounds(limit.period, now)
        return self.period_key(scope=limit.scope, scope_id=limit.scope_id, period=limit.period,
                               period_start=start)

    def period_key(self, *, scope: str, scope_id: int, period: str,
                   period_start: datetime) -> str:
        tagged = "gw:budget:" if self.tag is None else f"gw:budget:{{{self.tag}}}:"
        return f"{tagged}{scope}:{scope_id}:{period}:{int(period_start.timestamp())}"

    def keys(self, limits: Sequence[BudgetLimit], at: datetime) -> list[str]:
        """The keys the settle and restore scripts take: reservations, expiry, counters."""
        return [self.reservations, self.expiry, *(self.counter(limit, at) for limit in limits)]


LEGACY = Shard(None)
ALL_SHARDS = tuple(Shard(f"b{n}") for n in range(SHARDS))


def _shard_of(name: str) -> Shard:
    return ALL_SHARDS[zlib.crc32(name.encode()) % SHARDS]


def budget_shard(limits: Sequence[BudgetLimit]) -> Shard:
    """The shard of a request's budget counters: its team's when it has a team budget (every
    key of the team reserves against that counter too), else its key's."""
    root = next((limit for limit in limits if limit.scope == "team"), limits[0])
    return _shard_of(f"{root.scope}:{root.scope_id}")


def intent_shard(request_id: str, shared_limits: Sequence[BudgetLimit] = ()) -> Shard:
    """Where a request's intent lives: with its budget reservation (the reservation script
    writes it), else spread by request id."""
    return budget_shard(shared_limits) if shared_limits else _shard_of(request_id)


def counter_key(limit: BudgetLimit, now: datetime, shard: Shard | None = None) -> str:
    """The Redis key of a counter in `shard` (default: the shard of this limit alone, which is
    the request's shard unless it also has a team budget)."""
    return (shard or budget_shard([limit])).counter(limit, now)


def shared_spend_forget(*, scope: str, scope_id: int, period: str, period_start: datetime) -> None:
    """Drop the Redis copy of a database counter that reconciliation corrected, so the next
    request seeds it again from the corrected figure. A no-op without Redis or while it is
    down (the copy then lives until it has been unused for a week). A key's counter lives in
    its team's shard or its own, which the counter does not say: it is dropped from every
    shard (one DEL per slot, rare)."""
    if not settings.REDIS_URL:
        return
    names = [shard.period_key(scope=scope, scope_id=scope_id, period=period,
                              period_start=period_start) for shard in ALL_SHARDS]
    client = None
    try:
        client = redis_sync()
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.delete(name)
            pipe.execute()
    except REDIS_UNREACHABLE as exc:
        logger.warning("budgets: Redis copy of a corrected counter not dropped (%s)",
                       type(exc).__name__)
    finally:
        if client is not None:
            client.close()


def _key_ttl_s(limit: BudgetLimit, now: datetime) -> int:
    _, end = period_bounds(limit.period, now)
    if end is None:
        return IDLE_TTL_S
    return int((end - now).total_seconds()) + 86400


class RedisBudgets:
    """Reserve/settle through Redis; `reserve` returns False while Redis is unreachable (the
    caller then reserves in the database). One instance per event loop, like its client."""

    def __init__(self, redis: AsyncClient, *, retry_interval_s: float = 1.0) -> None:
        self._shared = SharedState(redis, name="budgets",
                                   fallback="reservations are made in the database",
                                   logger=logger, retry_interval_s=retry_interval_s,
                                   on_recover=self._recover)
        # shard tag -> the epoch this process last reserved under (at most SHARDS entries).
        self._epochs: dict[str | None, str] = {}
        self._units: CounterUnits | None = None
        # request id -> (limits, when it started, amount, expiry ms): held in Redis, unsettled.
        self._held: dict[str, tuple[list[BudgetLimit], datetime, int, int]] = {}
        # request id -> (limits, when it started, cost): settled while Redis was unreachable.
        self._unsettled: dict[str, tuple[list[BudgetLimit], datetime, int]] = {}
        # counter key -> (shard, limit, a time in its period): reserved in the database meanwhile.
        self._dirty: dict[str, tuple[Shard, BudgetLimit, datetime]] = {}
        # request id -> (limits, when it started, amount): its reservation script is in flight.
        self._reserving: dict[str, tuple[list[BudgetLimit], datetime, int]] = {}
        # counter key -> request id -> amount: database reservations of this process in flight.
        self._db_open: dict[str, dict[str, int]] = {}
        # counter key -> sequence number of this process's latest database reservation in it
        # that no sync has read yet (`_sync` drops it), and the sequence they are numbered by.
        self._db_committed: dict[str, int] = {}
        self._db_seq = 0

    async def reserve(self, *, request_id: str, limits: list[BudgetLimit], amount_units: int,
                      now: datetime, spent_units: CounterUnits,
                      intent: tuple[str, int] | None = None) -> bool:
        """Reserve `amount_units` against every limit, or none. `spent_units(limit, now)` is an
        async callable giving the database's (spent, reserved) units of a counter (an int: spent
        alone). `intent` (encoded, lease expiry ms) is the request's intent (usage.intents),
        written with the reservation by the same script, in the shard `intent_shard` names.
        Returns True when reserved (and the intent written), False when Redis is unreachable.
        Raises BudgetExceeded."""
        self._units = spent_units
        now_ms = int(now.timestamp() * 1000)
        expiry_ms = now_ms + int(RESERVATION_TTL / timedelta(milliseconds=1))
        shard = budget_shard(limits)

        tried = False

        async def shared() -> bool:
            nonlocal tried
            tried = True
            client = self._shared.redis
            keys = [shard.reservations, shard.expiry, shard.epoch, shard.intents,
                    shard.intent_expiry, *(shard.counter(limit, now) for limit in limits)]
            args: list[object] = [request_id, amount_units, now_ms,
                                  int(RESERVATION_TTL / timedelta(milliseconds=1)), REAP_PER_CALL,
                                  "", int(SYNC_INTERVAL / timedelta(milliseconds=1)),
                                  *(intent or ("", 0))]
            for limit in limits:
                args += [0, _key_ttl_s(limit, now)]
            # A counter Redis has not seen, or whose database reservations are due to be read
            # again, is synced from the database, then the reservation is tried again (another
            # counter may need it too); a new epoch first restores this process's reservations.
            for _ in range(2 * len(limits) + 3):
                # This process's database reservations (module docstring): a committed one is
                # synced in first; one in flight is that much less room. From the last check to
                # the script going out nothing awaits, so none slips in between.
                for _ in range(3):
                    stale = [limit for limit, key in zip(limits, keys[5:])
                             if key in self._db_committed]
                    if not stale:
                        break
                    await self._sync(shard, stale[0], now)
                else:
                    return False  # still committing there: this one reserves there too
                for i, (limit, key) in enumerate(zip(limits, keys[5:])):
                    in_flight = sum(self._db_open.get(key, {}).values())
                    args[9 + 2 * i] = usd_to_units(limit.limit_usd) - in_flight
                args[5] = self._epochs.get(shard.tag, "")
                self._reserving[request_id] = (limits, now, amount_units)
                try:
                    result = await _RESERVE(client, keys=keys, args=args)
                    outcome = int(result[0])
                    if outcome == 1:
                        # Held before it stops being on its way: `held_units`, reading from
                        # another thread in the other order, sees it at least once.
                        self._remember(self._held, request_id,
                                       (limits, now, amount_units, expiry_ms))
                finally:
                    self._reserving.pop(request_id, None)
                if outcome == 1:
                    self._remember(self._epochs, shard.tag, _text(result[1]))
                    return True
                if outcome == -2:
                    await client.set(shard.epoch, uuid.uuid4().hex, nx=True)
                    continue
                if outcome == -3:
                    await self._restore_held(shard)
                    self._epochs[shard.tag] = _text(result[1])
                    continue
                limit = limits[int(result[1]) - 1]
                if outcome == 0:
                    raise BudgetExceeded(
                        f"the {limit.scope}'s {limit.period} budget of ${limit.limit_usd} is "
                        "exhausted", headers={"retry-after": retry_after(limit.period, now)})
                await self._sync(shard, limit, now)
            return False

        async def in_the_database() -> bool:
            for limit in limits:
                self._remember(self._dirty, shard.counter(limit, now), (shard, limit, now))
            if tried:
                # The script may have run after all (a paused Redis executes what it had
                # received when it resumes): release it there once Redis answers.
                self._remember(self._unsettled, request_id, (limits, now, 0))
            return False

        return await self._shared.run(shared, in_the_database)

    @asynccontextmanager
    async def database_reservation(self, *, request_id: str, limits: list[BudgetLimit],
                                   now: datetime, amount_units: int
                                   ) -> AsyncIterator[Callable[[], list[int]]]:
        """Around a reservation this process makes in the database (usage.budgets
        `budget_reserve`) while Redis is unreachable: its Redis reservations meanwhile count it
        against their limits, and it counts theirs. Yields the `held_elsewhere` callable to pass
        it (safe to call from the database thread). A body that returns is taken as committed;
        one that raises, as nothing reserved."""
        keys = [budget_shard(limits).counter(limit, now) for limit in limits]
        for key in keys:
            self._db_open.setdefault(key, {})[request_id] = amount_units
        committed = False
        try:
            yield lambda: self.held_units(limits=limits, now=now)
            committed = True
        finally:
            self._db_seq += 1
            for key in keys:
                in_flight = self._db_open.get(key)
                if in_flight is not None:
                    in_flight.pop(request_id, None)
                    if not in_flight:
                        del self._db_open[key]
                if committed:
                    self._db_committed[key] = self._db_seq

    def held_units(self, *, limits: list[BudgetLimit], now: datetime) -> list[int]:
        """What this process holds reserved in Redis against each of `limits`' counters at
        `now`, including reservations on their way there, for a reservation made in the
        database while Redis is unreachable (its copy of them may be lost, and the database
        does not see them). Safe to call from another thread (it reads copies)."""
        shard = budget_shard(limits)
        wanted = [shard.counter(limit, now) for limit in limits]
        held = [0] * len(limits)
        # On its way first, then held: a reservation moving from one to the other is counted.
        reserving = [(held_limits, at, amount, 0)
                     for held_limits, at, amount in list(self._reserving.values())]
        for held_limits, at, amount, _ in list(self._held.values()) + reserving:
            held_shard = budget_shard(held_limits)
            keys = {held_shard.counter(limit, at) for limit in held_limits}
            for i, key in enumerate(wanted):
                if key in keys:
                    held[i] += amount
        return held

    async def settle(self, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                     cost_units: int) -> None:
        """Release the reservation and add the spend. Tried even while Redis is considered
        down (the reservation was made there). Never raises for Redis trouble: the settlement
        is then made in Redis when it answers again (the database records the spend anyway)."""
        keys = budget_shard(limits).keys(limits, at)
        self._held.pop(request_id, None)

        async def shared() -> None:
            await _SETTLE(self._shared.redis, keys=keys, args=[request_id, cost_units])

        async def when_redis_answers() -> None:
            self._remember(self._unsettled, request_id, (limits, at, cost_units))

        await self._shared.run(shared, when_redis_answers, force=True)

    def settle_queued(self, pipe, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                      cost_units: int) -> bool:
        """Queue `settle` on a Redis pipeline the caller runs with
        `gateway.shared_state.pipeline_execute` (redo: `settle`, for a NOSCRIPT answer); False
        while Redis is considered down (then call `settle`)."""
        keys = budget_shard(limits).keys(limits, at)
        queued = self._shared.queue(pipe, _SETTLE, keys=keys, args=[request_id, cost_units])
        if queued:
            self._held.pop(request_id, None)
        return queued

    def settle_missed(self, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                      cost_units: int, error: BaseException) -> None:
        """A queued `settle` whose pipeline failed with `error` (one of REDIS_UNREACHABLE):
        Redis counts as unreachable, and the settlement is made there when it answers again,
        instead of the reservation waiting for its TTL."""
        self._shared.failed(error)
        self._remember(self._unsettled, request_id, (limits, at, cost_units))

    async def _sync(self, shard: Shard, limit: BudgetLimit, at: datetime) -> None:
        """Bring one counter's Redis copy up to the database (lua/budget_sync.lua)."""
        if self._units is None:
            return
        key = shard.counter(limit, at)
        read_after = self._db_seq  # this process's database reservations the read below sees
        units = await self._units(limit, at)
        spent, reserved = units if isinstance(units, tuple) else (units, 0)
        await _SYNC(self._shared.redis, keys=[key],
                    args=[spent, reserved, int(time.time() * 1000), _key_ttl_s(limit, at)])
        if self._db_committed.get(key, read_after + 1) <= read_after:
            del self._db_committed[key]

    async def _restore_held(self, shard: Shard | None = None) -> None:
        """Hold again in Redis the reservations of this process it lost (a restart, or a
        failover that lost the last writes), in `shard` or in every shard; each counter is
        brought up to the database first. Reservations Redis still has are left alone."""
        now_ms = int(time.time() * 1000)
        for request_id, (_, _, _, expiry_ms) in list(self._held.items()):
            if expiry_ms <= now_ms:
                self._held.pop(request_id, None)
        held = [(request_id, budget_shard(limits), limits, at, amount, expiry_ms)
                for request_id, (limits, at, amount, expiry_ms) in list(self._held.items())]
        held = [h for h in held if shard is None or h[1] == shard]
        counters = {s.counter(limit, at): (s, limit, at)
                    for _, s, limits, at, _, _ in held for limit in limits}
        for s, limit, at in counters.values():
            await self._sync(s, limit, at)
        for request_id, s, limits, at, amount, expiry_ms in held:
            await _RESTORE(self._shared.redis, keys=s.keys(limits, at),
                           args=[request_id, amount, expiry_ms])

    async def _recover(self) -> None:
        """Redis answers again: settle there what was settled meanwhile (and release what was
        reserved there by a call that timed out), then sync the counters reserved in the
        database meanwhile. Raises one of REDIS_UNREACHABLE when Redis is still down (what is
        left is tried again next time)."""
        for request_id, (limits, at, cost) in list(self._unsettled.items()):
            await _SETTLE(self._shared.redis, keys=budget_shard(limits).keys(limits, at),
                          args=[request_id, cost, 1])
            # pop: the calls that find Redis back run this concurrently (each settlement is
            # conditional on Redis holding the reservation, so a second one changes nothing).
            self._unsettled.pop(request_id, None)
        for key, (shard, limit, at) in list(self._dirty.items()):
            await self._sync(shard, limit, at)
            self._dirty.pop(key, None)

    @staticmethod
    def _remember(into: dict, key, value) -> None:
        if key not in into and len(into) >= MAX_REMEMBERED:
            del into[next(iter(into))]
        into[key] = value


def reservation_settle_if_held(client: SyncClient, *, request_id: str,
                               limits: list[BudgetLimit], at: datetime, cost_units: int,
                               pipe=None, shard: Shard | None = None) -> None:
    """Settle a reservation from outside its request (the reaper of a crashed process's
    requests, usage.intents), with a synchronous client: only if Redis still holds it, so a
    second reaper, or the request's own settlement, is never counted twice. `shard` defaults
    to the limits' (`LEGACY` for an intent of the previous version). Queued on `pipe` when
    given (a pipeline of `client`); load the script first (`reaper_scripts_load`). Raises
    RedisError."""
    keys = (shard or budget_shard(limits)).keys(limits, at)
    # execute_command: a cluster pipeline refuses `evalsha` by name (gateway.shared_state).
    (pipe if pipe is not None else client).execute_command(
        "EVALSHA", _SETTLE.sha, len(keys), *keys, request_id, cost_units, 1)


def reaper_scripts_load(client: SyncClient) -> None:
    """Load the settle script `reservation_settle_if_held` runs by digest (on every master of
    a cluster). Raises RedisError."""
    client.script_load(_SETTLE.source)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
