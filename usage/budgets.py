"""Hard budgets per key and per team: reserve the worst case before the upstream is called,
settle to the actual cost in the ledger's own transaction.

The reservation is one conditional UPDATE per scope (`spent + reserved + amount <= limit`)
inside one transaction, so concurrent requests can never take a key or team past its budget, on
SQLite and MySQL alike, with or without Redis. Amounts are integer units of 1e-10 USD.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.db import connections, router, transaction
from django.db.models import F
from django.utils import timezone

from gateway.errors import BudgetExceeded
from usage.models import BudgetCounter, BudgetReservation, BudgetScope, RequestIntent

logger = logging.getLogger(__name__)

UNITS_PER_USD = Decimal(10) ** 10
RESERVATION_TTL = timedelta(minutes=30)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.get_fixed_timezone(0))


def usd_to_units(amount: Decimal) -> int:
    """`amount` in integer units of 1e-10 USD, rounded up. A negative amount (a cost from a
    negative price stored before prices were validated) is logged as an error and counted as
    0: a counter only ever grows, and the request it came from must not fail for it."""
    units = int((amount * UNITS_PER_USD).to_integral_value(rounding=ROUND_CEILING))
    if units < 0:
        logger.error("negative amount %s USD counted as 0 (is a price negative?)", amount)
        return 0
    return units


def units_to_usd(units: int) -> Decimal:
    return (Decimal(units) / UNITS_PER_USD).quantize(Decimal("0.0000000001"))


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) of the UTC budget period containing `now`; `total` never ends."""
    day = now.astimezone(EPOCH.tzinfo).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        return start, end
    return EPOCH, None


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    scope: str
    scope_id: int
    limit_usd: Decimal
    period: str


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    amount_units: int


def _counter(limit: BudgetLimit, now: datetime) -> BudgetCounter:
    start, _ = period_bounds(limit.period, now)
    counter, _ = BudgetCounter.objects.get_or_create(
        scope=limit.scope, scope_id=limit.scope_id, period_start=start,
        defaults={"period": limit.period})
    return counter


def budget_reserve(*, request_id: str, limits: list[BudgetLimit], amount_units: int,
                   now: datetime | None = None,
                   held_elsewhere: Callable[[], list[int]] | None = None,
                   intent: RequestIntent | None = None) -> Reservation:
    """Reserve `amount_units` against every limit, or none of them. `held_elsewhere()[i]` is
    what the caller knows to be reserved against `limits[i]` outside the database (its own
    reservations in Redis, while Redis is unreachable, usage.budgets_redis
    `database_reservation`): that much less room, read inside the transaction. `intent`
    (unsaved; usage.intents) is inserted in the reservation's transaction. Raises
    BudgetExceeded (429, code budget_exceeded) naming the scope that has no room."""
    now = now or timezone.now()
    with transaction.atomic():
        elsewhere = held_elsewhere() if held_elsewhere is not None else [0] * len(limits)
        counters: dict[str, BudgetCounter] = {}
        for limit, held in zip(limits, elsewhere):
            counter = _counter(limit, now)
            room = usd_to_units(limit.limit_usd) - amount_units - held
            # One UPDATE ... WHERE reserved <= room - spent: the check and the write are a single
            # atomic statement (an annotation here would make Django's MySQL backend select the
            # rows first and update them in a second statement).
            updated = (BudgetCounter.objects
                       .filter(pk=counter.pk, reserved_units__lte=room - F("spent_units"))
                       .update(reserved_units=F("reserved_units") + amount_units, updated_at=now))
            if not updated:
                transaction.set_rollback(True)
                raise BudgetExceeded(
                    f"the {limit.scope}'s {limit.period} budget of ${limit.limit_usd} is exhausted",
                    headers={"retry-after": retry_after(limit.period, now)})
            counters[limit.scope] = counter
        BudgetReservation.objects.create(
            request_id=request_id, amount_units=amount_units,
            key_counter=counters.get(BudgetScope.KEY), team_counter=counters.get(BudgetScope.TEAM),
            expires_at=now + RESERVATION_TTL)
        if intent is not None:
            intent.save(force_insert=True)
    return Reservation(request_id=request_id, amount_units=amount_units)


def retry_after(period: str, now: datetime) -> str:
    _, end = period_bounds(period, now)
    return str(int((end - now).total_seconds()) + 1) if end else "86400"


def budget_counter_units(*, limit: BudgetLimit, now: datetime) -> tuple[int, int]:
    """What the database counter of `limit`'s current period holds: (spent, reserved in the
    database) units, (0, 0) when it has none (what its Redis copy is synced to)."""
    start, _ = period_bounds(limit.period, now)
    row = (BudgetCounter.objects.filter(scope=limit.scope, scope_id=limit.scope_id, period_start=start)
           .values_list("spent_units", "reserved_units").first())
    return (int(row[0]), max(int(row[1]), 0)) if row else (0, 0)


def budgets_charge(*, charges: list[tuple[BudgetLimit, datetime, int]]) -> None:
    """Add spend to counters without a database reservation (reserved in Redis); call inside
    the ledger rows' transaction. `charges`: (limit, when the request started, cost units).
    Counters are updated once each, in a fixed order (no deadlock between batches)."""
    totals: dict[tuple[str, int, datetime], list] = {}
    for limit, at, units in charges:
        start, _ = period_bounds(limit.period, at)
        total = totals.setdefault((limit.scope, limit.scope_id, start), [limit.period, 0])
        total[1] += units
    connection = connections[router.db_for_write(BudgetCounter)]
    prepare = BudgetCounter._meta.get_field("period_start").get_db_prep_save
    quote = connection.ops.quote_name
    # Plain SQL: this runs for every ledger batch, and the ORM's query compilation was most of
    # its cost.
    sql = (f"UPDATE {quote(BudgetCounter._meta.db_table)} SET spent_units = spent_units + %s "
           f"WHERE scope = %s AND scope_id = %s AND period_start = %s")
    for (scope, scope_id, start) in sorted(totals):
        period, units = totals[(scope, scope_id, start)]
        if not units:
            continue
        with connection.cursor() as cursor:
            cursor.execute(sql, [units, scope, scope_id, prepare(start, connection)])
            updated = cursor.rowcount
        if not updated:
            counter, _ = BudgetCounter.objects.get_or_create(
                scope=scope, scope_id=scope_id, period_start=start, defaults={"period": period})
            BudgetCounter.objects.filter(pk=counter.pk).update(spent_units=F("spent_units") + units)


def budgets_settle(*, charges: dict[str, int]) -> None:
    """Turn database reservations into spend (request id -> cost units); call inside the ledger
    rows' transaction. A reservation that expired meanwhile was already released from
    `reserved`, so only its spend is added. Counters are updated once each, in id order, so
    concurrent batches lock them in the same order and cannot deadlock one another."""
    reservations = list(BudgetReservation.objects.select_for_update()
                        .filter(request_id__in=list(charges)).order_by("request_id"))
    if not reservations:
        return
    deltas: dict[int, list[int]] = {}
    for reservation in reservations:
        held = 0 if reservation.released else reservation.amount_units
        for counter_id in (reservation.key_counter_id, reservation.team_counter_id):
            if counter_id is not None:
                delta = deltas.setdefault(counter_id, [0, 0])
                delta[0] += held
                delta[1] += charges[reservation.request_id]
    for counter_id in sorted(deltas):
        held, spent = deltas[counter_id]
        BudgetCounter.objects.filter(pk=counter_id).update(
            reserved_units=F("reserved_units") - held, spent_units=F("spent_units") + spent)
    BudgetReservation.objects.filter(pk__in=[r.pk for r in reservations]).delete()


def budget_release(*, request_id: str) -> None:
    """Drop a reservation whose request never reached the upstream (nothing to charge)."""
    with transaction.atomic():
        budgets_settle(charges={request_id: 0})


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release the held amount of reservations whose request never settled (a crashed worker),
    so they stop blocking the budget. Safe to run twice: each is released once, under a row
    lock; one released a day ago and still unsettled is deleted."""
    now = now or timezone.now()
    released = 0
    stale = (BudgetReservation.objects.filter(expires_at__lt=now, released=False)
             .values_list("request_id", flat=True)[:10_000])
    for request_id in list(stale):
        with transaction.atomic():
            reservation = (BudgetReservation.objects.select_for_update()
                           .filter(request_id=request_id, released=False).first())
            if reservation is None:
                continue
            for counter_id in (reservation.key_counter_id, reservation.team_counter_id):
                if counter_id is not None:
                    BudgetCounter.objects.filter(pk=counter_id).update(
                        reserved_units=F("reserved_units") - reservation.amount_units)
            reservation.released = True
            reservation.save(update_fields=["released"])
            released += 1
    BudgetReservation.objects.filter(released=True, expires_at__lt=now - timedelta(days=1)).delete()
    return released
