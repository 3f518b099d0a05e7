"""Routing decisions for the proxy: which deployment to try, in what order, and when to stop.

Everything here is pure: plain frozen data in, plain data out, no I/O, no clock, no randomness of
its own (time and a random generator are passed in). `gateway.routing_state` keeps the mutable
state (WRR current weights, circuit breakers, in-flight counts) and calls these functions; its Lua
scripts (`gateway/lua/`) mirror `smooth_wrr_pick` and `breaker_transition` step for step.

Vocabulary: a *candidate* is one enabled route (provider x public model) that can serve the
requested public model. Candidates are grouped into *levels* by priority (lower first); within a
level, smooth weighted round-robin (nginx's algorithm) spreads requests by weight. A route's
circuit breaker can exclude it; weight 0 drains it completely.

Retry and exhaustion: a request tries the routes of its `Plan` in order, at most `MAX_ATTEMPTS`
of them, waiting `backoff_delay` before each retry. A plan with no routes (`exhausted_plan`)
says why nothing can be tried and when to come back.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

# Upstream calls one request makes at most, each to the next deployment of its plan; a
# deployment at its in-flight cap is skipped without counting.
MAX_ATTEMPTS = 3


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    """What a breaker allows right now: normal traffic, one probe, or nothing."""
    PASS = "pass"
    PROBE = "probe"
    BLOCK = "block"


class BreakerEvent(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    PROBE = "probe"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    # A probe whose outcome is never reported (its worker died) frees the slot after this long.
    probe_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One enabled route able to serve the requested public model.

    `route_id` keys the circuit breaker and the WRR position; `provider_id` keys the in-flight
    count, because `max_inflight` is a provider setting (None: no cap). Breaker settings come from
    the provider too. Raises ValueError on settings no breaker could honour.
    """
    route_id: int
    provider_id: int
    weight: int = 1
    priority: int = 0
    max_inflight: int | None = None
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    probe_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"route {self.route_id}: weight must be >= 0")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ValueError(f"route {self.route_id}: max_inflight must be >= 1 or None")
        if self.failure_threshold < 1:
            raise ValueError(f"route {self.route_id}: failure_threshold must be >= 1")
        if not 0 < self.cooldown_s <= self.max_cooldown_s:
            raise ValueError(f"route {self.route_id}: need 0 < cooldown_s <= max_cooldown_s")
        if self.probe_timeout_s <= 0:
            raise ValueError(f"route {self.route_id}: probe_timeout_s must be > 0")

    @property
    def breaker(self) -> BreakerConfig:
        return BreakerConfig(failure_threshold=self.failure_threshold, cooldown_s=self.cooldown_s,
                             max_cooldown_s=self.max_cooldown_s,
                             probe_timeout_s=self.probe_timeout_s)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One route's circuit. Times are the caller's clock (seconds, e.g. `time.time()`).

    `cooldown_s` is the length of the current (or last) open period, doubled after each failed
    probe; `probe_until` is when an unanswered half-open probe is given up.
    """
    status: Circuit = Circuit.CLOSED
    failures: int = 0
    cooldown_s: float = 0.0
    opened_until: float = 0.0
    probe_until: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True)
class Level:
    """The candidates of one priority, each sorted by route_id (the WRR tie-break order).

    `routes` holds every route with weight > 0 (it names the WRR state, so a breaker opening
    does not reset it); `passing` those whose breaker lets normal traffic through; `probe_ready`
    those whose cool-down has ended and that wait for a half-open probe, longest-waiting first.
    """
    priority: int
    routes: tuple[Candidate, ...]
    passing: tuple[Candidate, ...]
    probe_ready: tuple[Candidate, ...]

    @property
    def digest(self) -> str:
        return level_digest(self.routes)


@dataclass(frozen=True, slots=True)
class Lease:
    """One in-flight slot on a provider. `shared` says Redis granted it (else this process)."""
    provider_id: int
    route_id: int
    token: str
    shared: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered failover list for one request.

    `routes` is the try order; `probe` is the route_id this caller won the half-open probe for
    (always first in `routes`), else None. When `routes` is empty, `reason` says why
    ("no_active_route": nothing enabled with weight > 0; "circuit_open": every active route is
    open or being probed by another caller) and `retry_after_s` when one may come back.
    `lease`: an in-flight slot already taken on `routes[0]` with the plan (a shared store folds
    the two round trips into one); the caller uses it instead of acquiring one, and gives it
    back if it does not send there.
    """
    routes: tuple[Candidate, ...]
    probe: int | None = None
    reason: str | None = None
    retry_after_s: float | None = None
    lease: Lease | None = None


def smooth_wrr_pick(candidates: Sequence[Candidate], current_weights: Mapping[int, int],
                    ) -> tuple[Candidate, dict[int, int]]:
    """One step of nginx's smooth weighted round-robin.

    Every candidate's current weight (missing: 0) grows by its weight; the largest wins (ties:
    lowest route_id) and gives back the total. Over any run of `sum(weights)` picks from all-zero
    weights each candidate is chosen exactly `weight` times, interleaved rather than in bursts.
    Returns the chosen candidate and a copy of `current_weights` with the candidates' entries
    updated (others untouched). Raises ValueError when no candidate has weight > 0.
    """
    active = sorted((c for c in candidates if c.weight > 0), key=lambda c: c.route_id)
    if not active:
        raise ValueError("smooth_wrr_pick needs a candidate with weight > 0")
    new = dict(current_weights)
    total = 0
    best: Candidate | None = None
    for c in active:
        new[c.route_id] = new.get(c.route_id, 0) + c.weight
        total += c.weight
        if best is None or new[c.route_id] > new[best.route_id]:
            best = c
    assert best is not None
    new[best.route_id] -= total
    return best, new


def wrr_order(candidates: Sequence[Candidate], current_weights: Mapping[int, int], *,
              first: int) -> tuple[Candidate, ...]:
    """The try order within a level once route `first` has been picked.

    The rest follow in the order further WRR picks would choose them, simulated from
    `current_weights` (the weights after the real pick) without being persisted.
    """
    head = [c for c in candidates if c.route_id == first]
    rest = [c for c in candidates if c.route_id != first and c.weight > 0]
    weights = {c.route_id: current_weights.get(c.route_id, 0) for c in rest}
    order = head
    while rest:
        chosen, weights = smooth_wrr_pick(rest, weights)
        order.append(chosen)
        rest.remove(chosen)
    return tuple(order)


def level_digest(routes: Sequence[Candidate]) -> str:
    """A short stable name for a level's (route, weight) set.

    WRR state is stored under it, so editing a weight or adding/removing a route starts that
    level from fresh current weights instead of carrying positions computed for other weights.
    """
    text = ";".join(f"{c.route_id}:{c.weight}" for c in sorted(routes, key=lambda c: c.route_id))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def breaker_admission(state: BreakerState, *, now: float) -> Admission:
    """PASS when closed; PROBE when open past its cool-down, or half-open with its probe given
    up; BLOCK otherwise."""
    if state.status is Circuit.CLOSED:
        return Admission.PASS
    deadline = state.opened_until if state.status is Circuit.OPEN else state.probe_until
    return Admission.PROBE if now >= deadline else Admission.BLOCK


def breaker_transition(state: BreakerState, event: BreakerEvent, *, now: float,
                       config: BreakerConfig, error_class: str | None = None) -> BreakerState:
    """The circuit breaker's state machine; returns the new state.

    FAILURE counts a consecutive failure and records `error_class`: closed opens at
    `failure_threshold` for `cooldown_s`; half-open (the probe failed) reopens for twice the last
    cool-down, capped at `max_cooldown_s`; open stays as it is. SUCCESS resets the count when
    closed and closes a half-open circuit; an open circuit ignores it (only a probe may close it).
    PROBE turns a route whose admission is PROBE half-open until `now + probe_timeout_s`; for any
    other route it returns `state` unchanged, which is how a caller learns it lost the race.
    """
    if event is BreakerEvent.PROBE:
        if breaker_admission(state, now=now) is not Admission.PROBE:
            return state
        return replace(state, status=Circuit.HALF_OPEN, probe_until=now + config.probe_timeout_s)
    if event is BreakerEvent.SUCCESS:
        if state.status is Circuit.HALF_OPEN:
            return BreakerState(last_error=state.last_error, last_error_at=state.last_error_at)
        if state.status is Circuit.CLOSED and state.failures:
            return replace(state, failures=0)
        return state
    failed = replace(state, failures=state.failures + 1, last_error=error_class,
                     last_error_at=now)
    if state.status is Circuit.CLOSED and failed.failures >= config.failure_threshold:
        cooldown = config.cooldown_s
    elif state.status is Circuit.HALF_OPEN:
        cooldown = min(max(state.cooldown_s * 2, config.cooldown_s), config.max_cooldown_s)
    else:
        return failed
    return replace(failed, status=Circuit.OPEN, cooldown_s=cooldown, opened_until=now + cooldown,
                   probe_until=0.0)


def route_levels(candidates: Sequence[Candidate], *, breakers: Mapping[int, BreakerState],
                 now: float) -> tuple[Level, ...]:
    """Group candidates by priority (ascending) and sort each level by breaker admission.

    Weight-0 routes are dropped everywhere. A route missing from `breakers` is closed.
    Raises ValueError if a route_id appears twice.
    """
    ids = [c.route_id for c in candidates]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate route_id among candidates")
    closed = BreakerState()
    by_priority: dict[int, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: c.route_id):
        if c.weight > 0:
            by_priority.setdefault(c.priority, []).append(c)
    levels = []
    for priority in sorted(by_priority):
        routes = by_priority[priority]
        admission = {c.route_id: breaker_admission(breakers.get(c.route_id, closed), now=now)
                     for c in routes}
        ready = [c for c in routes if admission[c.route_id] is Admission.PROBE]
        ready.sort(key=lambda c: _reopen_at(breakers.get(c.route_id, closed)))
        levels.append(Level(
            priority=priority, routes=tuple(routes),
            passing=tuple(c for c in routes if admission[c.route_id] is Admission.PASS),
            probe_ready=tuple(ready)))
    return tuple(levels)


def failover_order(levels: Sequence[Level], *, probe: Candidate | None,
                   chosen: Mapping[int, int], weights: Mapping[int, int]) -> tuple[Candidate, ...]:
    """Assemble the try order: the won probe (if any), then each level with passing routes in
    priority order, each starting with its WRR pick `chosen[priority]` and continuing in WRR
    order over `weights` (current weights after the pick). Levels above the probe's own level
    have no passing routes by construction, so the probe is always tried first.
    """
    order: list[Candidate] = [probe] if probe is not None else []
    for level in levels:
        if level.passing:
            order.extend(wrr_order(level.passing, weights, first=chosen[level.priority]))
    return tuple(order)


def exhausted_plan(candidates: Sequence[Candidate], *, breakers: Mapping[int, BreakerState],
                   now: float) -> Plan:
    """The empty Plan for when `failover_order` produced nothing, with its reason and the
    seconds until the earliest circuit may let a request through again (at least 1)."""
    active = [c for c in candidates if c.weight > 0]
    if not active:
        return Plan(routes=(), reason="no_active_route")
    closed = BreakerState()
    soonest = min(_reopen_at(breakers.get(c.route_id, closed)) for c in active)
    return Plan(routes=(), reason="circuit_open", retry_after_s=max(1.0, soonest - now))


def backoff_delay(attempt: int, retry_after_s: float | None, rng: random.Random, *,
                  base_s: float = 0.1, cap_s: float = 2.0) -> float:
    """Seconds to wait before attempt number `attempt + 1`, after `attempt` (>= 1) failures.

    Full jitter: uniform in [0, min(cap_s, base_s * 2 ** (attempt - 1))]. A `retry_after_s`
    from the failed upstream raises the delay to at least that much, but never past `cap_s`: a
    proxy holding a client's request fails over to another deployment rather than sleep longer.
    """
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    delay = rng.uniform(0.0, ceiling)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, retry_after_s)
    return min(delay, cap_s)


def _reopen_at(state: BreakerState) -> float:
    if state.status is Circuit.OPEN:
        return state.opened_until
    if state.status is Circuit.HALF_OPEN:
        return state.probe_until
    return -math.inf
