"""The one place a Redis client is built: `redis_async()` for the event loop, `redis_sync()` for
threads (the reaper, the spool, management commands). Both read REDIS_URL and
GATEWAY_REDIS_CLUSTER (gateway/settings.py) and return None without REDIS_URL.

With GATEWAY_REDIS_CLUSTER the URL names any one node of a Redis Cluster; the client
(`redis.asyncio.cluster.RedisCluster` / `redis.cluster.RedisCluster`) discovers the others and
follows slot moves and failovers. Otherwise it is a plain `redis.Redis` on the URL. Every
module that talks to Redis, including pub/sub listeners, gets its client here: these two names
are stable. `client.pubsub()` works on both kinds: on a cluster a PUBLISH reaches subscribers
on every node (`spublish`/`ssubscribe` keep a channel on its slot's shard); an asyncio cluster
client must have run a command, or `await client.initialize()`, before its first `pubsub()`
subscribes (redis-py's cluster pubsub reads the slot map without loading it).

A synchronous cluster client connects when it is built, so `redis_sync()` raises one of
gateway.shared_state.REDIS_UNREACHABLE when no node answers; the asyncio client connects on its
first command. Both start from REDIS_URL's node and from every node a synchronous client of
this process has seen (a bounded memory), so a dead node named by REDIS_URL (a master that
failed over) does not cut a running process off the cluster.

What the callers may rely on either way: single-key commands, scripts whose keys share one
hash tag (`{...}`), and non-transactional pipelines (`pipeline(transaction=False)`) whose
commands each stay within one slot; a cluster pipeline sends each node its commands in
parallel. Not available on a cluster: MULTI/EXEC across slots and multi-key commands across
slots, which is why every key name that is used together carries the same tag.

A failover on a busy process: redis-py's asyncio cluster client disconnects a failed node's
idle connections while other tasks are taking them from its pool, and those tasks then fail
inside redis-py with an AttributeError, RuntimeError or TypeError on the torn-down transport
instead of a ConnectionError (seen: `'NoneType' object has no attribute 'writelines'`, "the
handler is closed"). The cluster client built here raises those as the ConnectionError they
mean, from a command or a pipeline, so every store falls back as in any outage instead of the
request failing with a 500.
"""
from __future__ import annotations

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

AsyncClient = aioredis.Redis | aiocluster.RedisCluster


def _torn_down(exc: Exception) -> bool:
    """Whether an error from inside redis-py is a connection torn down under the command."""
    if isinstance(exc, (AttributeError, RuntimeError)):
        return True
    return isinstance(exc, TypeError) and "'NoneType'" in str(exc)


def _as_connection_error(exc: Exception) -> redis.ConnectionError:
    return redis.ConnectionError(
        f"connection torn down under the command ({type(exc).__name__}: {exc})")


class _ClusterPipeline(aiocluster.ClusterPipeline):
    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except Exception as exc:
            if _torn_down(exc):
                raise _as_connection_error(exc) from exc
            raise


class _Cluster(aiocluster.RedisCluster):
    """The asyncio cluster client, with torn-down connections raised as ConnectionError (see
    the module docstring)."""

    async def execute_command(self, *args, **kwargs):
        try:
            return await super().execute_command(*args, **kwargs)
        except Exception as exc:
            if _torn_down(exc):
                raise _as_connection_error(exc) from exc
            raise

    def pipeline(self, transaction=None, shard_hint=None) -> aiocluster.ClusterPipeline:
        if shard_hint:
            raise redis.exceptions.RedisClusterException(
                "shard_hint is deprecated in cluster mode")
        return _ClusterPipeline(self, transaction)
SyncClient = redis.Redis | redis.cluster.RedisCluster

MAX_SEEN_NODES = 64
# (host, port) of the cluster nodes this process's synchronous clients have seen, oldest first.
_seen_nodes: dict[tuple[str, int], None] = {}


def _nodes_seen(client: redis.cluster.RedisCluster) -> None:
    for node in client.get_nodes():
        _seen_nodes.pop((node.host, int(node.port)), None)
        _seen_nodes[(node.host, int(node.port))] = None
    while len(_seen_nodes) > MAX_SEEN_NODES:
        del _seen_nodes[next(iter(_seen_nodes))]


def redis_is_cluster() -> bool:
    """Whether REDIS_URL names a Redis Cluster (GATEWAY_REDIS_CLUSTER)."""
    return bool(settings.REDIS_URL) and settings.GATEWAY_REDIS_CLUSTER


def redis_async(*, max_connections: int = 512, pool_wait_s: float = 1.0,
                socket_timeout: float = 0.5, socket_connect_timeout: float = 0.5,
                retries: int | None = None,
                health_check_interval: int = 30) -> AsyncClient | None:
    """A new asyncio client, or None without REDIS_URL. Short timeouts and no retry by default
    standalone: a slow Redis must not stall requests (the stores fall back per process). On a
    cluster one retry by default, after a re-read of the slot map: that is how a command
    reaches the replica promoted after a failover instead of failing once more on the dead
    master. The caller owns it (`await client.aclose()`).

    `max_connections` bounds the connections per server (per node on a cluster). Standalone,
    the pool blocks up to `pool_wait_s` for a free connection beyond it (redis-py's default
    pool refuses past its limit, which a busy worker reaches, and the refusal looked like Redis
    being down); the cluster client has no blocking pool and refuses at once."""
    if not settings.REDIS_URL:
        return None
    if redis_is_cluster():
        return _Cluster.from_url(
            settings.REDIS_URL,
            startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in _seen_nodes],
            max_connections=max_connections,
            retry=AsyncRetry(NoBackoff(), 1 if retries is None else retries),
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=health_check_interval)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=max_connections, timeout=pool_wait_s,
        retry=AsyncRetry(NoBackoff(), retries or 0), socket_connect_timeout=socket_connect_timeout,
        socket_timeout=socket_timeout, health_check_interval=health_check_interval)
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def redis_sync(*, socket_timeout: float = 2.0, socket_connect_timeout: float = 2.0,
               retries: int = 1) -> SyncClient | None:
    """A new synchronous client, or None without REDIS_URL; the caller closes it
    (`client.close()`). One retry by default, so a cluster client that still had a failed
    master's slots re-reads the slot map once instead of failing. Raises one of
    gateway.shared_state.REDIS_UNREACHABLE when a cluster has no node that answers."""
    if not settings.REDIS_URL:
        return None
    if redis_is_cluster():
        client = redis.cluster.RedisCluster.from_url(
            settings.REDIS_URL,
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in _seen_nodes],
            retry=Retry(NoBackoff(), retries), socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout)
        _nodes_seen(client)
        return client
    return redis.Redis.from_url(settings.REDIS_URL, retry=Retry(NoBackoff(), retries),
                                socket_timeout=socket_timeout,
                                socket_connect_timeout=socket_connect_timeout)
