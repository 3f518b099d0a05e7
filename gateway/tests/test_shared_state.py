"""The shared-or-local rule (gateway.shared_state): fallback while Redis is unreachable, back-off
before trying it again, one warning per outage, and scripts run by digest with NOSCRIPT handled.

The rule's tests use a fake clock and operations that raise Redis's own exceptions; the script
tests use the real Redis at REDIS_URL and are skipped without it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from gateway.shared_state import LuaScript, SharedState, pipeline_execute

REDIS_URL = os.environ.get("REDIS_URL", "")
LOGGER = "gateway.tests.shared_state"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Op:
    """A shared operation that fails with `error` while it is set, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: BaseException | None = None

    async def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "shared"


async def local() -> str:
    return "local"


def shared_state(clock: Clock) -> SharedState:
    return SharedState(None, name="things", fallback="each process counts its own",
                       logger=logging.getLogger(LOGGER), retry_interval_s=1.0, clock=clock)


def records(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


@pytest.mark.asyncio
async def test_an_outage_falls_back_backs_off_and_recovers_with_one_warning(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, op = Clock(), Op()
    state = shared_state(clock)
    assert await state.run(op, local) == "shared" and not state.degraded

    op.error = ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    assert await state.run(op, local) == "local"
    assert state.degraded and state.down and op.calls == 2
    # Inside the retry interval Redis is not tried at all.
    assert [await state.run(op, local) for _ in range(5)] == ["local"] * 5 and op.calls == 2

    clock.now += 1.0
    op.error = TimeoutError("Timeout reading from socket")
    assert await state.run(op, local) == "local" and op.calls == 3 and state.down

    clock.now += 1.0
    op.error = None
    assert await state.run(op, local) == "shared"
    assert not state.degraded and not state.down
    assert records(caplog) == [
        ("WARNING", "things: Redis unreachable (ConnectionError: Error 111 connecting to "
                    "127.0.0.1:6379. Connection refused.); each process counts its own until "
                    "it answers again"),
        ("INFO", "things: Redis is back; shared again"),
    ]


@pytest.mark.asyncio
async def test_an_os_error_counts_as_unreachable_and_other_errors_propagate():
    clock, op = Clock(), Op()
    state = shared_state(clock)
    op.error = ConnectionResetError()
    assert await state.run(op, local) == "local" and state.down
    clock.now += 1.0
    op.error = ValueError("the owner's own error")
    with pytest.raises(ValueError):
        await state.run(op, local)
    # Not a Redis failure: the back-off is not extended.
    assert not state.down


@pytest.mark.asyncio
async def test_on_recover_runs_once_before_the_first_shared_call_after_an_outage():
    clock, op, order = Clock(), Op(), []
    recover = Op()

    async def on_recover() -> None:
        order.append("recover")
        await recover()

    async def shared() -> str:
        order.append("shared")
        return await op()

    state = SharedState(None, name="things", fallback="each process counts its own",
                        logger=logging.getLogger(LOGGER), clock=clock, on_recover=on_recover)
    assert await state.run(shared, local) == "shared" and order == ["shared"]
    op.error = ConnectionError("down")
    assert await state.run(shared, local) == "local"
    op.error = None
    # Redis answers the shared call but not yet the write-back: still down, the fallback answers.
    clock.now += 1.0
    recover.error = ConnectionError("still down")
    assert await state.run(shared, local) == "local" and state.down and op.calls == 2
    clock.now += 1.0
    recover.error = None
    assert await state.run(shared, local) == "shared" and not state.degraded
    assert await state.run(shared, local) == "shared"
    assert order == ["shared", "shared", "recover", "recover", "shared", "shared"]


@pytest.mark.asyncio
async def test_force_tries_redis_during_the_back_off():
    clock, op = Clock(), Op()
    state = shared_state(clock)
    op.error = ConnectionError("down")
    await state.run(op, local)
    op.error = None
    assert await state.run(op, local, force=True) == "shared" and op.calls == 2
    assert not state.degraded


@pytest.mark.asyncio
async def test_queue_refuses_while_down():
    class Pipe:
        def __init__(self) -> None:
            self.queued: list[tuple] = []

        def execute_command(self, *args) -> None:
            self.queued.append(args)

    clock, op = Clock(), Op()
    state = shared_state(clock)
    script = LuaScript("echo", "return ARGV[1]")
    pipe = Pipe()
    assert state.queue(pipe, script, keys=["k"], args=[7])
    assert pipe.queued == [("EVALSHA", script.sha, 1, "k", 7)]
    op.error = ConnectionError("down")
    await state.run(op, local)
    assert not state.queue(pipe, script, keys=["k"], args=[8]) and len(pipe.queued) == 1


@pytest.mark.asyncio
async def test_a_cancel_swallowed_by_the_redis_call_is_raised_after_it():
    state = shared_state(Clock())

    async def swallows_its_cancel() -> str:
        asyncio.current_task().cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass  # what redis-py does under cancellation in some states
        return "shared"

    task = asyncio.create_task(state.run(swallows_its_cancel, local))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_scripts_are_read_from_the_owners_lua_directory():
    import gateway.routing_state as owner

    script = LuaScript.beside(owner.__file__, "inflight_count.lua")
    assert script.source == (Path(owner.__file__).parent / "lua" / "inflight_count.lua").read_text()
    assert len(script.sha) == 40 and script == LuaScript(script.name, script.source)


async def redis_or_skip() -> aioredis.Redis:
    if not REDIS_URL:
        pytest.skip("scripts run against a real Redis: set REDIS_URL")
    return aioredis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)


def fresh_script() -> LuaScript:
    """A script this Redis has never seen, so its first run answers NOSCRIPT."""
    return LuaScript("fresh", f"-- {uuid.uuid4().hex}\nreturn tonumber(ARGV[1]) + 1")


@pytest.mark.asyncio
async def test_a_script_redis_does_not_know_is_loaded_and_run():
    client = await redis_or_skip()
    script = fresh_script()
    assert await client.script_exists(script.sha) == [False]
    assert await script(client, keys=[], args=[41]) == 42
    assert await client.script_exists(script.sha) == [True]
    assert await script(client, keys=[], args=[1]) == 2
    await client.aclose()


@pytest.mark.asyncio
async def test_pipeline_redoes_each_noscript_answer_on_its_own():
    client = await redis_or_skip()
    known, unknown = fresh_script(), fresh_script()
    await client.script_load(known.source)
    key = f"gwtest:{uuid.uuid4().hex}"
    pipe = client.pipeline(transaction=False)
    known.queue(pipe, keys=[], args=[1])
    unknown.queue(pipe, keys=[], args=[10])
    pipe.set(key, "v", px=5000)
    redone: list[int] = []

    async def redo_unknown() -> int:
        redone.append(1)
        return await unknown(client, keys=[], args=[10])

    assert await pipeline_execute(pipe, [None, redo_unknown, None]) == [2, 11, True]
    assert redone == [1]

    pipe = client.pipeline(transaction=False)
    pipe.hget(key, "f")  # WRONGTYPE: the key holds a string
    pipe.get(key)
    with pytest.raises(ResponseError):
        await pipeline_execute(pipe, [None, None])
    pipe = client.pipeline(transaction=False)
    pipe.hget(key, "f")
    pipe.get(key)
    errors, value = await pipeline_execute(pipe, [None, None], raise_on_error=False)
    assert isinstance(errors, ResponseError) and value == b"v"
    await client.delete(key)
    await client.aclose()


@pytest.mark.asyncio
async def test_scripts_run_in_one_iteration_share_one_round_trip():
    # A request's rate limit and budget reservation are gathered; with other requests' at the
    # same moment they go to Redis as one pipeline: one connection of the pool, not one each.
    # Each caller gets its own answer: a result, a script Redis did not know (loaded and run
    # on its own), an error reply.
    from gateway.tests.redis_server import RedisServer

    server = RedisServer()
    server.start()
    try:
        client = aioredis.Redis.from_url(server.url, socket_timeout=2)
        known, unknown = fresh_script(), fresh_script()
        failing = LuaScript("failing", "return redis.error_reply('nope ' .. ARGV[1])")
        await client.script_load(known.source)
        await client.script_load(failing.source)
        before = (await client.info("stats"))["total_connections_received"]
        results = await asyncio.gather(
            known(client, keys=[], args=[1]), unknown(client, keys=[], args=[10]),
            failing(client, keys=[], args=["x"]), known(client, keys=[], args=[100]),
            return_exceptions=True)
        assert results[0] == 2 and results[1] == 11 and results[3] == 101
        assert isinstance(results[2], ResponseError) and "nope x" in str(results[2])
        assert (await client.info("stats"))["total_connections_received"] == before
        assert len(client.connection_pool._available_connections) == 1
        # A failed round trip fails every call in it.
        server.pause()
        try:
            short = aioredis.Redis.from_url(server.url, socket_timeout=0.2)
            errors = await asyncio.gather(*(known(short, keys=[], args=[n]) for n in range(3)),
                                          return_exceptions=True)
            assert [type(e) for e in errors] == [TimeoutError] * 3
        finally:
            server.resume()
        await short.aclose()
        await client.aclose()
    finally:
        server.stop()
