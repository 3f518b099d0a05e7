"""The ledger spool: where a row waits when the database cannot take it, until it can.

A failed ledger write is pushed where it survives a restart of Redis as well as of this process:
the Redis list REDIS_KEY when REDIS_URL is set, Redis answers and it runs with an append-only
file (`INFO persistence` says `aof_enabled:1`, so a Redis restarted from its data directory
comes back with the list); otherwise an fsync'ed JSON-lines file per process under
GATEWAY_SPOOL_DIR. A Redis without AOF would lose the list on its next restart, which during a
database outage is the only copy of those rows. The Redis list is shared by every replica and
the Celery worker; the files by the processes that share the directory. On a Redis Cluster the
list is one key, so it lives on the master of its slot (and its replica): the append-only check
asks that master, and every list command goes there.

Rows are flushed later by the serving process itself and by the `usage.flush_spool` Celery
task, from both places. Writes are idempotent on request id, so a row flushed twice lands once
and settles its budget once. Bounded: beyond MAX_SPOOLED rows, new rows are logged and dropped
rather than exhausting memory or disk.
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import redis.cluster
from django.conf import settings
from django.db import DatabaseError, IntegrityError

from gateway.redis_client import SyncClient, redis_sync
from gateway.shared_state import REDIS_UNREACHABLE
from usage.budgets import BudgetLimit
from usage.services import LedgerEntry, StoredResponse, usage_record_write

logger = logging.getLogger(__name__)

REDIS_KEY = "gw:ledger:spool"
MAX_SPOOLED = 1_000_000
BATCH = 500


def _spool_dir() -> Path:
    path = Path(settings.GATEWAY_SPOOL_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _redis() -> SyncClient | None:
    """A client, or None without Redis or when a cluster has no node that answers (a
    standalone client connects on its first command, where its callers catch the error)."""
    try:
        return redis_sync(socket_timeout=2, socket_connect_timeout=2)
    except REDIS_UNREACHABLE as exc:
        logger.warning("ledger spool: Redis unreachable (%s)", type(exc).__name__)
        return None


_ENTRY_FIELDS = tuple(f.name for f in fields(LedgerEntry))


def spool_encode(*, entry: LedgerEntry, settle_budget: bool, response: StoredResponse | None,
                 release_claim: int | None, charge_limits: tuple[BudgetLimit, ...] = ()) -> str:
    # Every field is a scalar: a shallow copy (dataclasses.asdict deep-copies each value, and
    # a journaled row is encoded on the event loop, gateway.finish).
    data = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    data["created_at"] = entry.created_at.isoformat()
    data["cost_usd"] = str(entry.cost_usd)
    return json.dumps({
        "entry": data, "settle_budget": settle_budget, "release_claim": release_claim,
        "charge_limits": [[limit.scope, limit.scope_id, str(limit.limit_usd), limit.period]
                          for limit in charge_limits],
        "response": None if response is None else {
            "claim_id": response.claim_id, "status": response.status, "headers": response.headers,
            "body": base64.b64encode(response.body).decode()},
    })


def spool_decode(line: str) -> dict:
    item = json.loads(line)
    entry = item["entry"]
    entry["created_at"] = datetime.fromisoformat(entry["created_at"])
    entry["cost_usd"] = Decimal(entry["cost_usd"])
    response = item["response"]
    return {
        "entry": LedgerEntry(**entry), "settle_budget": item["settle_budget"],
        "charge_limits": tuple(BudgetLimit(scope=scope, scope_id=scope_id, limit_usd=Decimal(limit),
                                           period=period)
                               for scope, scope_id, limit, period in item.get("charge_limits", ())),
        "release_claim": item["release_claim"],
        "response": None if response is None else StoredResponse(
            claim_id=response["claim_id"], status=response["status"], headers=response["headers"],
            body=base64.b64decode(response["body"])),
    }


def _redis_persists(client: SyncClient) -> bool:
    """Whether the Redis holding the spool keeps what it is given across a restart (an
    append-only file); on a cluster, the master of the spool's slot."""
    if isinstance(client, redis.cluster.RedisCluster):
        info = client.info("persistence", target_nodes=client.get_node_from_key(REDIS_KEY))
    else:
        info = client.info("persistence")
    return int(info.get("aof_enabled", 0)) == 1


def spool_push(*lines: str) -> None:
    """Keep encoded writes for later, in Redis when it persists them, else on local disk.
    Never raises for Redis: the requests have already been served; OSError from the disk is
    the caller's to log."""
    if not lines:
        return
    client = _redis()
    if client is not None:
        try:
            if _redis_persists(client):
                if client.llen(REDIS_KEY) + len(lines) <= MAX_SPOOLED:
                    client.rpush(REDIS_KEY, *lines)
                    return
                logger.error("ledger spool full; %d ledger row(s) dropped", len(lines))
                return
            logger.warning("ledger spool: Redis runs without appendonly; spooling to disk")
        except REDIS_UNREACHABLE:
            logger.warning("ledger spool: Redis unreachable; spooling to disk")
        finally:
            client.close()
    path = _spool_dir() / f"ledger-{os.getpid()}.jsonl"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0  # none yet, or a flusher just claimed it (renamed it away): start a new one
    if size > MAX_SPOOLED * 2048:
        logger.error("ledger spool full; %d ledger row(s) dropped", len(lines))
        return
    _append(path, lines)


def _append(path: Path, lines: Sequence[str]) -> None:
    """Append lines to a spool file under its lock, fsync'ed before returning."""
    while True:
        with path.open("a", encoding="utf-8") as spool:
            fcntl.flock(spool, fcntl.LOCK_EX)
            # A flusher may have claimed (renamed) the file between open and lock: start over.
            try:
                current = path.stat().st_ino
            except FileNotFoundError:
                continue
            if os.fstat(spool.fileno()).st_ino != current:
                continue
            spool.write("".join(line + "\n" for line in lines))
            spool.flush()
            os.fsync(spool.fileno())
            return


def spool_size() -> int:
    count = sum(1 for p in _spool_dir().glob("ledger-*.jsonl*") for _ in p.open(encoding="utf-8"))
    client = _redis()
    if client is not None:
        try:
            count += client.llen(REDIS_KEY)
        except REDIS_UNREACHABLE:
            pass
        finally:
            client.close()
    return count


def _spooled_row_write(line: str) -> None:
    """Write one spooled row. A row the database refuses for good (an integrity error that is
    not its own earlier write: usage_record_write treats that as done) would stop every row
    spooled after it for ever, so it is set aside in `rejected-ledger.jsonl` beside the spool,
    logged with its request id, and the flush goes on. Raises DatabaseError otherwise (the
    database is still away: the row stays spooled)."""
    try:
        usage_record_write(**spool_decode(line))
    except IntegrityError as exc:
        _append(_spool_dir() / "rejected-ledger.jsonl", [line])
        logger.error("ledger spool: a row the database refuses (%s) set aside in "
                     "rejected-ledger.jsonl: %s", type(exc).__name__,
                     json.loads(line).get("entry", {}).get("request_id", "?"))


def ledger_spool_flush() -> int:
    """Write spooled rows to the database. Stops at the first database error (rows stay
    spooled). Returns the number taken out of the spool (written, or set aside as refused for
    good: `_spooled_row_write`). Safe to run concurrently and twice."""
    written = 0
    client = _redis()
    if client is not None:
        try:
            while True:
                lines = client.lrange(REDIS_KEY, 0, BATCH - 1)
                if not lines:
                    break
                done = []
                try:
                    for line in lines:
                        _spooled_row_write(line.decode())
                        done.append(line)
                finally:
                    # Remove exactly the rows written (each line is unique: it holds its request
                    # id), not "the first N": another flusher may have removed those already, and
                    # an LTRIM would then drop rows nobody wrote.
                    written += len(done)
                    with client.pipeline(transaction=False) as pipe:
                        for line in done:
                            pipe.lrem(REDIS_KEY, 1, line)
                        pipe.execute()
        except DatabaseError:
            return written
        except REDIS_UNREACHABLE:
            logger.warning("ledger spool: Redis unreachable while flushing")
        finally:
            client.close()
    for path in sorted(_spool_dir().glob("ledger-*.jsonl*")):
        rows, refused = _flush_file(path)
        written += rows
        if refused:
            return written
    return written


def _flush_file(path: Path) -> tuple[int, bool]:
    """Write the rows of one spool file: (rows written, whether the database refused one).

    A flusher takes `ledger-<pid>.jsonl` by renaming it to `….flushing-<pid>-<token>` while it
    holds the file's lock, and keeps the lock until the file is gone, so writers (who check
    they locked the file still under that name) start a new one. A `.flushing` file whose lock
    can be taken was left by a flusher that died mid-way (locks die with their process): it is
    taken over, not left stranded. Rows the database refuses go back to `ledger-<pid>.jsonl`."""
    original = path.with_name(path.name.split(".jsonl")[0] + ".jsonl")
    try:
        spool = path.open(encoding="utf-8")
    except FileNotFoundError:
        return 0, False  # another flusher took it
    with spool:
        if path == original:
            fcntl.flock(spool, fcntl.LOCK_EX)  # wait for a writer that has it open
        else:
            try:
                fcntl.flock(spool, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0, False  # its flusher is alive and at work
        try:
            if os.stat(path).st_ino != os.fstat(spool.fileno()).st_ino:
                return 0, False  # taken (and replaced) while we waited for the lock
        except FileNotFoundError:
            return 0, False
        claimed = path
        if path == original:
            claimed = path.with_name(f"{path.name}.flushing-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            path.rename(claimed)
        lines = spool.read().splitlines()
        for i, line in enumerate(lines):
            try:
                _spooled_row_write(line)
            except DatabaseError:
                _append(original, lines[i:])
                claimed.unlink(missing_ok=True)
                return i, True
        claimed.unlink(missing_ok=True)
        return len(lines), False
