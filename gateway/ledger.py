"""The ledger writer: each proxied request's one row, committed off the event loop with group
commit, spooled when the database refuses it."""
from __future__ import annotations

import asyncio
import logging

from django.db import DatabaseError

from gateway.database import db
from usage.budgets import BudgetLimit
from usage.services import LedgerEntry, LedgerWrite, StoredResponse, usage_records_write
from usage.spool import ledger_spool_flush, spool_encode, spool_push, spool_size

logger = logging.getLogger(__name__)


class _LoopBatch:
    """The writes waiting in one event loop, and the task committing them."""

    __slots__ = ("queue", "worker")

    def __init__(self) -> None:
        self.queue: list[tuple[LedgerWrite, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None


class LedgerWriter:
    """Writes ledger rows off the event loop, with group commit.

    `write` returns once the row is committed (or spooled): durability is per request
    (`enqueue` only queues it: for a row journaled elsewhere first, gateway.finish). Writes
    arriving while a commit is running queue up and go together in the next transaction, one
    thread hop per batch instead of one per request. A write started during a client disconnect
    (task cancellation) still completes. A batch the database refuses is spooled (usage.spool)
    and a flusher in this process retries every few seconds until the database takes it; the
    Celery `usage.flush_spool` task does the same across processes. Rows left spooled by an
    earlier process are flushed from this one's first write on."""

    FLUSH_INTERVAL_S = 2.0
    MAX_BATCH = 256

    def __init__(self) -> None:
        self._batches: dict[asyncio.AbstractEventLoop, _LoopBatch] = {}
        self._flusher: asyncio.Task | None = None
        self._leftovers_checked = False

    def _flusher_running(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a flusher is at work on `loop`. One started on another loop does not count:
        a loop closed while its flusher slept (a worker thread's, a test's) leaves that task
        pending for ever, and no row spooled since would be flushed by this process."""
        flusher = self._flusher
        return flusher is not None and not flusher.done() and flusher.get_loop() is loop

    async def write(self, entry: LedgerEntry, *, settle_budget: bool = False,
                    charge_limits: tuple[BudgetLimit, ...] = (),
                    response: StoredResponse | None = None, release_claim: int | None = None) -> None:
        """Return once the row is committed (or spooled)."""
        await asyncio.shield(self.enqueue(entry, settle_budget=settle_budget,
                                          charge_limits=charge_limits, response=response,
                                          release_claim=release_claim))

    def enqueue(self, entry: LedgerEntry, *, settle_budget: bool = False,
                charge_limits: tuple[BudgetLimit, ...] = (),
                response: StoredResponse | None = None,
                release_claim: int | None = None) -> asyncio.Future:
        """Queue the row for the next commit; the future is done once it is committed (or
        spooled). `drain` waits for it."""
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            self._batches = {lp: b for lp, b in self._batches.items() if not lp.is_closed()}
            batch = self._batches[loop] = _LoopBatch()
        done = loop.create_future()
        batch.queue.append((LedgerWrite(entry=entry, settle_budget=settle_budget,
                                        charge_limits=charge_limits, response=response,
                                        release_claim=release_claim), done))
        if batch.worker is None or batch.worker.done():
            batch.worker = loop.create_task(self._commit_queued(batch))
        if not self._leftovers_checked:
            self._leftovers_checked = True
            loop.create_task(self._flush_leftovers())
        return done

    async def _flush_leftovers(self) -> None:
        """Rows a previous process left spooled (it crashed, or was stopped, during a database
        outage) are flushed by this one too, without waiting for a failure of its own."""
        try:
            left = await asyncio.get_running_loop().run_in_executor(None, spool_size)
        except OSError:
            return
        loop = asyncio.get_running_loop()
        if left and not self._flusher_running(loop):
            self._flusher = loop.create_task(self._flush_until_empty())

    async def _commit_queued(self, batch: _LoopBatch) -> None:
        while batch.queue:
            taken, batch.queue = batch.queue[:self.MAX_BATCH], batch.queue[self.MAX_BATCH:]
            writes = [w for w, _ in taken]
            try:
                await self._commit(writes)
            except Exception as exc:  # never strand a waiting request
                logger.error("ledger write failed: %s", type(exc).__name__)
            for _, done in taken:
                if not done.done():
                    done.set_result(None)

    async def _commit(self, writes: list[LedgerWrite]) -> None:
        try:
            await db.run(usage_records_write, writes=writes)
            return
        except DatabaseError as exc:
            if not self._flusher_running(asyncio.get_running_loop()):
                logger.error("ledger writes failing (%s); spooling rows until the database "
                             "recovers", type(exc).__name__)
        lines = [spool_encode(entry=w.entry, settle_budget=w.settle_budget, response=w.response,
                              release_claim=w.release_claim, charge_limits=w.charge_limits)
                 for w in writes]
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, spool_push, *lines)
        except OSError as exc:
            logger.critical("ledger rows %s could not be spooled (%s)",
                            ", ".join(w.entry.request_id for w in writes), type(exc).__name__)
        if not self._flusher_running(loop):
            self._flusher = loop.create_task(self._flush_until_empty())

    async def _flush_until_empty(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_INTERVAL_S)
            try:
                await db.run(ledger_spool_flush)
                if await asyncio.get_running_loop().run_in_executor(None, spool_size) == 0:
                    return
            except Exception as exc:  # keep retrying whatever failed; rows wait in the spool
                logger.warning("ledger spool flush failed (%s); retrying", type(exc).__name__)

    async def drain(self) -> None:
        """Wait for this loop's queued writes to be committed (graceful shutdown)."""
        batch = self._batches.get(asyncio.get_running_loop())
        while batch is not None and batch.worker is not None and not batch.worker.done():
            await asyncio.shield(batch.worker)


ledger_writer = LedgerWriter()
