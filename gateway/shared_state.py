"""Shared through Redis, per process while Redis is unreachable: the rule the routing state, the
rate limits and the Redis budgets follow, written once.

The rule (`SharedState.run`):
- A store's shared operation runs in Redis. When it raises a RedisError (connection refused or
  reset, timeout, no free pooled connection, any error answer) or an OSError, the store's
  fallback answers the same call instead: the routing state and the rate limits keep a
  per-process copy, the budgets hand the reservation to the database.
- Redis is then *down* for `retry_interval_s`: shared operations are not tried and the fallback
  answers at once, so an outage costs one failed round trip per interval, not one per call. The
  first call after the interval tries Redis again; a failure starts another interval.
- An operation that should reach Redis whenever it can (settling a reservation Redis granted)
  passes `force=True`: it is tried during the interval too, and its failure only extends it.
- One warning per outage, at its first failure, and one info line at the first success after
  it, both on the owner's logger, naming the store and what serves it meanwhile.
- A store that kept state of its own during the outage passes `on_recover`: it is awaited
  before the first shared operation after an outage, to write that state back (Redis may have
  come back empty, or with a copy that missed the outage). Until it succeeds Redis is still
  down: its failure is one more failed attempt, and the fallback answers.
- A cancellation redis-py swallowed during the call is raised after it (`gateway.cancellation`).

Scripts (`LuaScript`) are `.lua` files in a `lua/` directory next to their owner, read once per
process, when the owner is imported. The scripts one event loop runs on one client within the
same iteration (a request's rate limit and budget reservation, gathered; other requests' at
the same moment) go to Redis as one pipeline, one write and one read instead of one each
(`_Coalescer`); each caller still gets its own result or error. They run by digest (EVALSHA)
and are loaded into Redis (SCRIPT LOAD) only when it answers NOSCRIPT: once per Redis server,
again after a restart or a SCRIPT FLUSH (on a Redis Cluster: on every master, and again on a
replica promoted by a failover, which never received the SCRIPT LOAD). A pipeline queues them
by digest (`SharedState.queue`), and `pipeline_execute` redoes each command answered NOSCRIPT
on its own.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.cancellation import reraise_swallowed_cancel

T = TypeVar("T")

# What "Redis is unreachable" means to every store. RedisClusterException: a cluster client that
# cannot map a slot to a live master (all its startup nodes down, or a slot left uncovered
# mid-failover) raises it instead of a RedisError.
REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (RedisError, OSError, RedisClusterException)


@dataclass(frozen=True, slots=True)
class LuaScript:
    """One Lua script: its source and the digest Redis knows it by."""
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    @classmethod
    def beside(cls, module_file: str, name: str) -> LuaScript:
        """Read `lua/<name>` in the directory of `module_file` (pass the owner's `__file__`).
        Raises OSError when the file is missing."""
        return cls(name, (Path(module_file).parent / "lua" / name).read_text(encoding="utf-8"))

    async def __call__(self, client: aioredis.Redis, *, keys: Sequence[Any],
                       args: Sequence[Any] = ()) -> Any:
        """Run the script by digest, loading it first when Redis answers NOSCRIPT; together
        with the other scripts this loop runs on `client` in the same iteration. Redis errors
        propagate (the caller is normally inside `SharedState.run`)."""
        loop = asyncio.get_running_loop()
        coalescer = _coalescers.get(client)
        if coalescer is None or coalescer.loop is not loop:
            # A client taken to another loop (tests run one per test) starts afresh: what a
            # closed loop had queued would never be sent.
            coalescer = _coalescers[client] = _Coalescer(client, loop)
        return await coalescer.submit(self, keys, args)

    async def run_alone(self, client: aioredis.Redis, *, keys: Sequence[Any],
                        args: Sequence[Any] = ()) -> Any:
        """The script on its own (EVALSHA, SCRIPT LOAD on NOSCRIPT): what a coalesced batch
        sends for a single call, and redoes for a call of a pipeline answered NOSCRIPT."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: aioredis.client.Pipeline, *, keys: Sequence[Any],
              args: Sequence[Any] = ()) -> None:
        """Queue the script by digest on a pipeline; execute it with `pipeline_execute`. Its
        keys must share one slot (a cluster pipeline sends it to that slot's master)."""
        # Not `pipe.evalsha`: redis-py's cluster pipeline refuses that method by name, though it
        # routes the command itself by its keys like any other.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class _Coalescer:
    """The scripts submitted on one client during one event-loop iteration, sent together.

    `submit` queues a call and, for the first of an iteration, schedules the send with
    `call_soon`, which runs after every callback already ready: the gathered calls of that
    iteration join the queue first. One call goes alone (EVALSHA); several go as one
    non-transactional pipeline, and a NOSCRIPT answer is redone on its own. Each future gets
    its call's result or error; a failed round trip fails every call in it. A caller that is
    cancelled meanwhile stops waiting; its call may still run (as a sent command would)."""

    __slots__ = ("client", "loop", "queue", "sending", "__weakref__")

    def __init__(self, client: aioredis.Redis, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.queue: list[tuple[LuaScript, Sequence[Any], Sequence[Any], asyncio.Future]] = []
        self.sending: set[asyncio.Task] = set()

    def submit(self, script: LuaScript, keys: Sequence[Any],
               args: Sequence[Any]) -> asyncio.Future:
        done = self.loop.create_future()
        self.queue.append((script, keys, args, done))
        if len(self.queue) == 1:
            self.loop.call_soon(self._send_queued)
        return done

    def _send_queued(self) -> None:
        batch, self.queue = self.queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, batch: list[tuple[LuaScript, Sequence[Any], Sequence[Any],
                                            asyncio.Future]]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, _ = batch[0]
                results: list[Any] = [await script.run_alone(self.client, keys=keys, args=args)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    script.queue(pipe, keys=keys, args=args)
                results = await pipeline_execute(
                    pipe, [functools.partial(self._alone, script, keys, args)
                           for script, keys, args, _ in batch], raise_on_error=False)
        except Exception as exc:  # the round trip failed: every call in it did
            for *_, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        except BaseException:  # this task was cancelled (its loop is closing): so are they
            for *_, done in batch:
                done.cancel()
            raise
        for (*_, done), result in zip(batch, results):
            if done.done():
                continue
            if isinstance(result, Exception):
                done.set_exception(result)
            else:
                done.set_result(result)

    async def _alone(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """A NOSCRIPT call redone on its own; its failure is that call's answer alone."""
        try:
            return await script.run_alone(self.client, keys=keys, args=args)
        except Exception as exc:
            return exc


# client -> its coalescer; a client belongs to one event loop (gateway.redis_client).
_coalescers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SharedState:
    """One store's link to Redis, under the rule in the module docstring.

    `name` names the store in the log ("rate limits"), `fallback` what serves it while Redis is
    down ("each process enforces them on its own"); `logger` is the owner's. Not thread-safe:
    one instance belongs to one event loop, like its Redis client.
    """

    def __init__(self, redis: aioredis.Redis, *, name: str, fallback: str,
                 logger: logging.Logger, retry_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_recover: Callable[[], Awaitable[None]] | None = None) -> None:
        self.redis = redis
        self._on_recover = on_recover
        self._name = name
        self._fallback = fallback
        self._logger = logger
        self._retry_interval_s = retry_interval_s
        self._clock = clock
        self._degraded = False
        self._down_until = 0.0

    @property
    def degraded(self) -> bool:
        """True from a failed Redis call until the next successful one."""
        return self._degraded

    @property
    def down(self) -> bool:
        """True while degraded and inside the retry interval: shared operations are not tried."""
        return self._degraded and self._clock() < self._down_until

    async def run(self, shared: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]],
                  *, force: bool = False) -> T:
        """`shared()`'s result, or `fallback()`'s while Redis is down or when `shared()` (or
        `on_recover`) raises one of REDIS_UNREACHABLE. Any other exception propagates unchanged;
        one from `shared()` (the owner's own answer, such as a refusal) ends the outage like a
        result does. Raises CancelledError when the task was cancelled during the Redis call."""
        if not force and self.down:
            return await fallback()
        recovered = False
        try:
            if self._degraded and self._on_recover is not None:
                await self._on_recover()
            recovered = True
            result = await shared()
        except REDIS_UNREACHABLE as exc:
            reraise_swallowed_cancel()
            self._failed(exc)
            return await fallback()
        except Exception:
            reraise_swallowed_cancel()
            if recovered:
                self._back()
            raise
        reraise_swallowed_cancel()
        self._back()
        return result

    def _back(self) -> None:
        if self._degraded:
            self._degraded = False
            self._logger.info("%s: Redis is back; shared again", self._name)

    def queue(self, pipe: aioredis.client.Pipeline, script: LuaScript, *, keys: Sequence[Any],
              args: Sequence[Any] = ()) -> bool:
        """Queue `script` on a pipeline the caller runs with `pipeline_execute`; False while
        Redis is down (then the caller runs the operation itself, through `run`)."""
        if self.down:
            return False
        script.queue(pipe, keys=keys, args=args)
        return True

    def failed(self, exc: BaseException) -> None:
        """Count a failure of a shared operation run outside `run` (a pipeline the owner's
        caller executed), as `run` would."""
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self._retry_interval_s
        if not self._degraded:
            self._degraded = True
            self._logger.warning("%s: Redis unreachable (%s: %s); %s until it answers again",
                                 self._name, type(exc).__name__, exc, self._fallback)


async def pipeline_execute(pipe: aioredis.client.Pipeline,
                           redo: Sequence[Callable[[], Awaitable[Any]] | None], *,
                           raise_on_error: bool = True) -> list[Any]:
    """Execute `pipe` in one round trip and return its results, in order.

    `redo[i]` is what to await instead of the i-th queued command when Redis answers NOSCRIPT
    for it (None: nothing to redo); its result takes that command's place. Any other error
    answer is raised (the first one) with `raise_on_error`, else left in place as the exception.
    Raises one of REDIS_UNREACHABLE when the round trip fails, and CancelledError when the task
    was cancelled during it.
    """
    try:
        results = await pipe.execute(raise_on_error=False)
    finally:
        reraise_swallowed_cancel()
    if len(results) != len(redo):
        raise ValueError(f"{len(results)} pipelined commands but {len(redo)} redo entries")
    out = []
    for result, again in zip(results, redo):
        if isinstance(result, NoScriptError) and again is not None:
            result = await again()
        out.append(result)
    if raise_on_error:
        for result in out:
            if isinstance(result, Exception):
                raise result
    return out
