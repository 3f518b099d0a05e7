"""Routing state stores: the same behaviour per process and shared through a real Redis.

Behaviour tests run on a pair of stores that stand for two worker processes: for "local" both
names are one LocalRoutingState (one process), for "redis" they are two RedisRoutingState
instances on two separate clients sharing a random key prefix. Redis is REDIS_URL, default
redis://127.0.0.1:6379/0; without REDIS_URL an unreachable default skips the Redis cases.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.routing import Candidate, Plan
from gateway.routing_state import Lease, LocalRoutingState, RedisRoutingState, RoutingState

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = 1_000_000.0


def client(url: str = REDIS_URL) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1,
                                   socket_timeout=2)


async def redis_or_skip() -> aioredis.Redis:
    r = client()
    try:
        await r.ping()
    except (aioredis.ConnectionError, OSError):
        await r.aclose()
        if "REDIS_URL" in os.environ:
            raise
        pytest.skip(f"no Redis at {REDIS_URL}")
    return r


async def drop_keys(prefix: str) -> None:
    r = client()
    keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest_asyncio.fixture
async def prefix() -> AsyncIterator[str]:
    value = f"gwtest:{uuid.uuid4().hex}:"
    yield value
    try:
        await drop_keys(value)
    except (aioredis.ConnectionError, OSError):
        pass


@pytest_asyncio.fixture(params=["local", "redis"])
async def pair(request, prefix) -> AsyncIterator[tuple[RoutingState, RoutingState]]:
    if request.param == "local":
        state = LocalRoutingState()
        yield state, state
        return
    first, second = await redis_or_skip(), client()
    yield RedisRoutingState(first, prefix=prefix), RedisRoutingState(second, prefix=prefix)
    await first.aclose()
    await second.aclose()


async def lease_first(state: RoutingState, plan: Plan) -> tuple[Candidate, Lease] | None:
    """What the proxy does: walk the plan, skip providers at capacity; None if all are."""
    for c in plan.routes:
        lease = await state.acquire(c)
        if lease is not None:
            return c, lease
    return None


async def fail(state: RoutingState, c: Candidate, times: int, *, now: float = NOW) -> None:
    for _ in range(times):
        await state.record_failure(c, "http_503", now=now)


def first_ids(plans: list[Plan]) -> list[int]:
    return [p.routes[0].route_id for p in plans]


async def alternate(pair, cs: list[Candidate], n: int, *, now: float = NOW,
                    model: str = "m") -> list[Plan]:
    return [await pair[i % 2].plan(model, cs, now=now) for i in range(n)]


W321 = [Candidate(1, 1, weight=3), Candidate(2, 2, weight=2), Candidate(3, 3, weight=1)]


@pytest.mark.asyncio
async def test_600_plans_alternating_between_workers_split_300_200_100(pair):
    plans = await alternate(pair, W321, 600)
    assert Counter(first_ids(plans)) == {1: 300, 2: 200, 3: 100}
    assert all(sorted(c.route_id for c in p.routes) == [1, 2, 3] for p in plans)


@pytest.mark.asyncio
async def test_equal_weights_never_repeat_and_weight_zero_never_appears(pair):
    cs = [Candidate(1, 1), Candidate(2, 2), Candidate(3, 3), Candidate(4, 4, weight=0)]
    seq = first_ids(await alternate(pair, cs, 90))
    assert all(a != b for a, b in zip(seq, seq[1:]))
    assert Counter(seq) == {1: 30, 2: 30, 3: 30}


@pytest.mark.asyncio
async def test_only_drained_routes_plan_empty_with_no_active_route(pair):
    plan = await pair[0].plan("m", [Candidate(1, 1, weight=0)], now=NOW)
    assert plan.routes == () and plan.reason == "no_active_route"


@pytest.mark.asyncio
async def test_fallback_priority_is_used_only_when_the_best_is_open(pair):
    a, b = pair
    cs = [Candidate(1, 1), Candidate(2, 2), Candidate(3, 3, priority=1)]
    for p in await alternate(pair, cs, 20):
        assert {r.route_id for r in p.routes[:2]} == {1, 2} and p.routes[2].route_id == 3
    await fail(a, cs[0], 5)
    await fail(b, cs[1], 5)
    for p in await alternate(pair, cs, 10):
        assert [r.route_id for r in p.routes] == [3]


@pytest.mark.asyncio
async def test_fallback_priority_is_used_only_when_the_best_is_at_capacity(pair):
    a, b = pair
    cs = [Candidate(1, 1, max_inflight=1), Candidate(2, 2, max_inflight=1),
          Candidate(3, 3, priority=1, max_inflight=1)]
    held = []
    for state in (a, b):
        c, lease = await lease_first(state, await state.plan("m", cs, now=NOW))
        assert c.priority == 0
        held.append(lease)
    c, lease = await lease_first(a, await a.plan("m", cs, now=NOW))
    assert c.route_id == 3
    assert await lease_first(b, await b.plan("m", cs, now=NOW)) is None
    await b.release(held[0])
    c, _ = await lease_first(b, await b.plan("m", cs, now=NOW))
    assert c.route_id == held[0].route_id


@pytest.mark.asyncio
async def test_in_flight_cap_is_shared_and_release_is_idempotent(pair):
    a, b = pair
    c = Candidate(1, 7, max_inflight=2)
    other_route_same_provider = Candidate(2, 7, max_inflight=2)
    first = await a.acquire(c)
    second = await b.acquire(other_route_same_provider)
    assert first and second
    assert await a.acquire(c) is None and await b.acquire(c) is None
    await b.release(first)
    await a.release(first)
    third = await b.acquire(c)
    assert third is not None and await a.acquire(c) is None
    assert (await a.snapshot([c]))[1].in_flight == 2


@pytest.mark.asyncio
async def test_breaker_excludes_until_cooldown_then_admits_exactly_one_probe(pair):
    a, b = pair
    cs = [Candidate(1, 1), Candidate(2, 2)]
    await fail(a, cs[0], 4)
    assert all(1 in {r.route_id for r in p.routes} for p in await alternate(pair, cs, 4))
    await fail(b, cs[0], 1)
    for p in await alternate(pair, cs, 4, now=NOW + 29.9):
        assert [r.route_id for r in p.routes] == [2]

    plans = await asyncio.gather(*(pair[i % 2].plan("m", cs, now=NOW + 30) for i in range(20)))
    probes = [p for p in plans if 1 in {r.route_id for r in p.routes}]
    assert len(probes) == 1
    assert probes[0].probe == 1 and probes[0].routes[0].route_id == 1

    await b.record_failure(cs[0], "ConnectError", now=NOW + 31)
    for p in await alternate(pair, cs, 4, now=NOW + 31 + 59.9):
        assert [r.route_id for r in p.routes] == [2]
    view = (await a.snapshot(cs))[1]
    assert (view.state, view.cooldown_s, view.last_error_class) == ("open", 60.0, "ConnectError")
    assert view.opened_until == NOW + 91 and view.consecutive_failures == 6

    probe = await b.plan("m", cs, now=NOW + 91)
    assert probe.probe == 1
    await a.record_success(cs[0])
    for p in await alternate(pair, cs, 4, now=NOW + 92):
        assert {r.route_id for r in p.routes} == {1, 2} and p.probe is None
    view = (await b.snapshot(cs))[1]
    assert (view.state, view.consecutive_failures, view.opened_until) == ("closed", 0, None)


@pytest.mark.asyncio
async def test_a_probe_that_never_answers_is_given_up_after_its_timeout(pair):
    a, b = pair
    c = Candidate(1, 1, probe_timeout_s=10.0)
    await fail(a, c, 5)
    assert (await a.plan("m", [c], now=NOW + 30)).probe == 1
    blocked = await b.plan("m", [c], now=NOW + 39)
    assert blocked.routes == () and blocked.reason == "circuit_open"
    assert blocked.retry_after_s == pytest.approx(1.0)
    assert (await b.plan("m", [c], now=NOW + 40)).probe == 1


@pytest.mark.asyncio
async def test_all_open_plans_empty_with_retry_after(pair):
    a, _ = pair
    cs = [Candidate(1, 1), Candidate(2, 2, cooldown_s=10.0)]
    await fail(a, cs[0], 5)
    await fail(a, cs[1], 5)
    plan = await a.plan("m", cs, now=NOW + 1)
    assert plan.reason == "circuit_open" and plan.retry_after_s == pytest.approx(9.0)


@pytest.mark.asyncio
async def test_wrr_adapts_to_live_weight_changes_without_restart(pair):
    await alternate(pair, W321, 7)
    edited = [replace(W321[0], weight=1), W321[1]]
    assert Counter(first_ids(await alternate(pair, edited, 99))) == {1: 33, 2: 66}
    assert Counter(first_ids(await alternate(pair, W321, 6))) == {1: 3, 2: 2, 3: 1}


@pytest.mark.asyncio
async def test_models_keep_separate_wrr_positions(pair):
    cs = [Candidate(1, 1), Candidate(2, 2)]
    other = [Candidate(3, 1), Candidate(4, 2)]
    seq = [(await pair[0].plan("m", cs, now=NOW)).routes[0].route_id,
           (await pair[1].plan("other", other, now=NOW)).routes[0].route_id,
           (await pair[0].plan("m", cs, now=NOW)).routes[0].route_id]
    assert seq == [1, 3, 2]


@pytest.mark.asyncio
async def test_redis_sequence_matches_the_in_process_one(prefix):
    r = await redis_or_skip()
    shared, local = RedisRoutingState(r, prefix=prefix), LocalRoutingState()
    rng = random.Random(42)
    cs = [Candidate(i, i, weight=rng.randint(0, 9), priority=rng.randint(0, 1))
          for i in range(1, 9)]
    for step in range(300):
        if step % 50 == 49:
            victim = rng.choice(cs)
            for state in (shared, local):
                await fail(state, victim, 5, now=NOW + step)
        now = NOW + step
        ours, theirs = await shared.plan("m", cs, now=now), await local.plan("m", cs, now=now)
        assert ours == theirs
    assert await shared.snapshot(cs) == {k: replace(v, shared=True)
                                         for k, v in (await local.snapshot(cs)).items()}
    await r.aclose()


@pytest.mark.asyncio
async def test_crashed_holders_slots_expire(prefix):
    crashed = await redis_or_skip()
    survivor = client()
    c = Candidate(1, 1, max_inflight=1)
    assert await RedisRoutingState(crashed, prefix=prefix, lease_ttl_s=0.3).acquire(c)
    await crashed.aclose()
    state = RedisRoutingState(survivor, prefix=prefix, lease_ttl_s=0.3)
    assert await state.acquire(c) is None
    await asyncio.sleep(0.35)
    assert (await state.snapshot([c]))[1].in_flight == 0
    assert await state.acquire(c) is not None
    await asyncio.sleep(0.35)
    assert await survivor.exists(f"{prefix}inflight:1") == 0
    await survivor.aclose()


@pytest.mark.asyncio
async def test_local_leases_expire_too():
    clock = [0.0]
    state = LocalRoutingState(lease_ttl_s=5.0, clock=lambda: clock[0])
    c = Candidate(1, 1, max_inflight=1)
    assert await state.acquire(c) and await state.acquire(c) is None
    clock[0] = 5.0
    assert await state.acquire(c) is not None


@pytest.mark.asyncio
async def test_every_redis_key_expires(prefix):
    r = await redis_or_skip()
    state = RedisRoutingState(r, prefix=prefix)
    # Two routes share priority 0, so the WRR step runs (one vector per priority level).
    cs = [Candidate(1, 1, max_inflight=3), Candidate(3, 3), Candidate(2, 2, priority=1)]
    await state.plan("m", cs, now=NOW)
    await state.acquire(cs[0])
    await fail(state, cs[2], 2)
    keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
    kinds = sorted(k.decode()[len(prefix):].split(":")[0] for k in keys)
    assert kinds == ["cb", "inflight", "wrr", "wrr"]
    assert all([await r.pttl(k) > 0 for k in keys])
    await r.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_redis_down_falls_back_to_local_behaviour(caplog):
    r = client(f"redis://127.0.0.1:{closed_port()}/0")
    state = RedisRoutingState(r, prefix="gwtest:down:")
    caplog.set_level(logging.WARNING, logger="gateway.routing_state")
    plans = [await state.plan("m", W321, now=NOW) for _ in range(60)]
    assert Counter(first_ids(plans)) == {1: 30, 2: 20, 3: 10}
    assert state.degraded
    c = Candidate(1, 1, max_inflight=1)
    lease = await state.acquire(c)
    assert lease is not None and not lease.shared and await state.acquire(c) is None
    await state.release(lease)
    await fail(state, W321[0], 5)
    assert all(1 not in {r.route_id for r in p.routes}
               for p in [await state.plan("m", W321, now=NOW) for _ in range(6)])
    view = (await state.snapshot(W321))[1]
    assert view.state == "open" and not view.shared
    assert len([r for r in caplog.records if r.name == "gateway.routing_state"]) == 1
    await r.aclose()


class Forwarder:
    """A TCP relay to Redis that can be cut and restored, to stage an outage."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.asyncio
async def test_redis_outage_falls_back_then_shares_again_when_it_returns(prefix, caplog):
    direct = await redis_or_skip()
    kwargs = direct.connection_pool.connection_kwargs
    relay = Forwarder(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379))
    await relay.start()
    db = kwargs.get("db", 0)
    relayed = client(f"redis://127.0.0.1:{relay.port}/{db}")
    state = RedisRoutingState(relayed, prefix=prefix, retry_interval_s=0.0)
    observer = RedisRoutingState(direct, prefix=prefix)
    cs = [Candidate(1, 1), Candidate(2, 2)]
    await fail(state, cs[0], 5)
    assert (await observer.snapshot(cs))[1].state == "open"

    caplog.set_level(logging.INFO, logger="gateway.routing_state")
    await relay.stop()
    during = [await state.plan("m", cs, now=NOW) for _ in range(4)]
    assert state.degraded
    # This process keeps the open breaker it last read from Redis.
    assert all([r.route_id for r in p.routes] == [2] for p in during)

    await relay.start()
    after = [await state.plan("m", cs, now=NOW) for _ in range(4)]
    assert not state.degraded
    assert all([r.route_id for r in p.routes] == [2] for p in after)
    ours = [r.levelname for r in caplog.records if r.name == "gateway.routing_state"]
    assert ours == ["WARNING", "INFO"]
    await relay.stop()
    await relayed.aclose()
    await direct.aclose()


@pytest.mark.asyncio
async def test_a_one_route_plan_comes_with_its_slot_taken_in_the_same_round_trip(prefix):
    # The proxy's first acquire is folded into the plan's breaker read for a model with one
    # route; a plan that does not start there (its circuit open) gives the slot back.
    r = await redis_or_skip()
    state = RedisRoutingState(r, prefix=prefix)
    c = Candidate(1, 7, max_inflight=2)
    first = await state.plan("m", [c], now=NOW)
    assert first.routes == (c,) and first.lease is not None
    assert (first.lease.route_id, first.lease.provider_id, first.lease.shared) == (1, 7, True)
    second = await state.plan("m", [c], now=NOW)
    assert second.lease is not None and second.lease.token != first.lease.token
    at_cap = await state.plan("m", [c], now=NOW)
    assert at_cap.routes == (c,) and at_cap.lease is None  # planned; the proxy's acquire refuses
    assert (await state.snapshot([c]))[1].in_flight == 2
    await state.release(first.lease)
    await fail(state, c, c.breaker.failure_threshold)
    opened = await state.plan("m", [c], now=NOW)
    assert opened.routes == () and opened.lease is None
    assert (await state.snapshot([c]))[1].in_flight == 1
    # More than one route: nothing is taken with the plan.
    two = [Candidate(2, 8, weight=1), Candidate(3, 9, weight=1)]
    assert (await state.plan("m2", two, now=NOW)).lease is None
    assert {v.in_flight for v in (await state.snapshot(two)).values()} == {0}
    await r.aclose()


def test_a_forked_worker_draws_lease_tokens_of_its_own():
    # Tokens are a per-process random prefix and a counter (no system call per request); a
    # worker forked from a parent that had imported the module (gunicorn) gets a new prefix,
    # or the two would release each other's in-flight slots.
    from gateway import routing_state

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, routing_state._lease_token().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    ours = routing_state._lease_token()
    assert len(child) > 16 and child[:16] != ours[:16]
    assert routing_state._lease_token() != ours
