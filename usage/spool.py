"""The ledger spool: where a row waits when the database cannot take it, until it can.

A failed ledger write is pushed here (Redis list when REDIS_URL is set and reachable, else an
fsync'ed JSON-lines file under var/spool/) and flushed later by the serving process itself and by
the `usage.flush_spool` Celery task. Writes are idempotent on request id, so a row flushed twice
lands once and settles its budget once. Bounded: beyond MAX_SPOOLED rows, new rows are logged
and dropped rather than exhausting memory or disk.
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import redis
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

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


def _redis() -> redis.Redis | None:
    if not settings.REDIS_URL:
        return None
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def spool_encode(*, entry: LedgerEntry, settle_budget: bool, response: StoredResponse | None,
                 release_claim: int | None, charge_limits: tuple[BudgetLimit, ...] = ()) -> str:
    data = asdict(entry)
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


def spool_push(line: str) -> None:
    """Keep one encoded write for later. Never raises: the request has already been served."""
    client = _redis()
    if client is not None:
        try:
            if client.llen(REDIS_KEY) < MAX_SPOOLED:
                client.rpush(REDIS_KEY, line)
                return
            logger.error("ledger spool full; a ledger row was dropped")
            return
        except RedisError:
            logger.warning("ledger spool: Redis unreachable; spooling to disk")
        finally:
            client.close()
    path = _spool_dir() / f"ledger-{os.getpid()}.jsonl"
    if path.exists() and path.stat().st_size > MAX_SPOOLED * 2048:
        logger.error("ledger spool full; a ledger row was dropped")
        return
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
            spool.write(line + "\n")
            spool.flush()
            os.fsync(spool.fileno())
            return


def spool_size() -> int:
    count = sum(1 for p in _spool_dir().glob("ledger-*.jsonl*") for _ in p.open(encoding="utf-8"))
    client = _redis()
    if client is not None:
        try:
            count += client.llen(REDIS_KEY)
        except RedisError:
            pass
        finally:
            client.close()
    return count


def ledger_spool_flush() -> int:
    """Write spooled rows to the database. Stops at the first database error (rows stay
    spooled). Returns the number written. Safe to run concurrently and twice."""
    written = 0
    client = _redis()
    if client is not None:
        try:
            while True:
                lines = client.lrange(REDIS_KEY, 0, BATCH - 1)
                if not lines:
                    break
                for line in lines:
                    usage_record_write(**spool_decode(line.decode()))
                    written += 1
                client.ltrim(REDIS_KEY, len(lines), -1)
        except DatabaseError:
            return written
        except RedisError:
            logger.warning("ledger spool: Redis unreachable while flushing")
        finally:
            client.close()
    for path in sorted(_spool_dir().glob("ledger-*.jsonl")):
        claimed = path.with_suffix(f".jsonl.flushing-{os.getpid()}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            continue  # another flusher took it
        with claimed.open(encoding="utf-8") as spool:
            fcntl.flock(spool, fcntl.LOCK_EX)  # wait for a writer that opened it before the rename
            lines = spool.read().splitlines()
        for i, line in enumerate(lines):
            try:
                usage_record_write(**spool_decode(line))
            except DatabaseError:
                with path.open("a", encoding="utf-8") as rest:
                    rest.write("".join(f"{remaining}\n" for remaining in lines[i:]))
                claimed.unlink()
                return written
            written += 1
        claimed.unlink()
    return written
