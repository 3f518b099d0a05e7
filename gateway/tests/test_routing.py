"""The pure routing core: smooth WRR, failover order, breaker state machine, retry backoff."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from gateway.routing import (
    Admission, BreakerConfig, BreakerEvent, BreakerState, Candidate, Circuit, backoff_delay,
    breaker_admission, breaker_transition, exhausted_plan, failover_order, level_digest,
    route_levels, smooth_wrr_pick, wrr_order,
)

CONFIG = BreakerConfig(failure_threshold=5, cooldown_s=30.0, max_cooldown_s=300.0,
                       probe_timeout_s=60.0)


def picks(candidates: list[Candidate], n: int) -> list[int]:
    weights: dict[int, int] = {}
    out = []
    for _ in range(n):
        chosen, weights = smooth_wrr_pick(candidates, weights)
        out.append(chosen.route_id)
    return out


def plan_of(candidates: list[Candidate], breakers: dict[int, BreakerState], *, now: float,
            ) -> tuple[Candidate, ...]:
    levels = route_levels(candidates, breakers=breakers, now=now)
    chosen, weights = {}, {}
    for level in levels:
        if level.passing:
            pick, new = smooth_wrr_pick(level.passing, {})
            chosen[level.priority] = pick.route_id
            weights.update(new)
    return failover_order(levels, probe=None, chosen=chosen, weights=weights)


def test_weights_3_2_1_give_exact_proportions_over_600_picks():
    cs = [Candidate(1, 1, weight=3), Candidate(2, 2, weight=2), Candidate(3, 3, weight=1)]
    assert Counter(picks(cs, 600)) == {1: 300, 2: 200, 3: 100}


def test_equal_weights_never_pick_the_same_route_twice_in_a_row():
    cs = [Candidate(1, 1), Candidate(2, 1), Candidate(3, 1)]
    seq = picks(cs, 300)
    assert all(a != b for a, b in zip(seq, seq[1:]))
    assert Counter(seq) == {1: 100, 2: 100, 3: 100}


def test_heavy_weight_is_interleaved_not_burst():
    # nginx documents {a, a, b, a, c, a, a} for weights 5, 1, 1.
    cs = [Candidate(1, 1, weight=5), Candidate(2, 1, weight=1), Candidate(3, 1, weight=1)]
    assert picks(cs, 7) == [1, 1, 2, 1, 3, 1, 1]


def test_weight_zero_is_never_picked_nor_planned():
    cs = [Candidate(1, 1, weight=0), Candidate(2, 1, weight=1), Candidate(9, 1, weight=0,
                                                                         priority=1)]
    assert set(picks(cs, 50)) == {2}
    assert [c.route_id for c in plan_of(cs, {}, now=0.0)] == [2]
    with pytest.raises(ValueError):
        smooth_wrr_pick([Candidate(1, 1, weight=0)], {})


def test_pick_leaves_weights_of_other_routes_untouched():
    chosen, new = smooth_wrr_pick([Candidate(1, 1, weight=2)], {7: 5})
    assert chosen.route_id == 1 and new == {1: 0, 7: 5}


def test_wrr_order_starts_with_the_pick_and_follows_further_picks():
    cs = [Candidate(1, 1, weight=3), Candidate(2, 1, weight=2), Candidate(3, 1, weight=1)]
    chosen, weights = smooth_wrr_pick(cs, {})
    order = wrr_order(cs, weights, first=chosen.route_id)
    assert [c.route_id for c in order] == [1, 2, 3]


def test_failover_order_tries_the_whole_best_priority_before_fallbacks():
    cs = [Candidate(1, 1, priority=0), Candidate(2, 2, priority=0),
          Candidate(3, 3, priority=1), Candidate(4, 4, priority=2)]
    order = [c.route_id for c in plan_of(cs, {}, now=0.0)]
    assert set(order[:2]) == {1, 2} and order[2:] == [3, 4]


def test_open_routes_are_left_out_and_fallback_priority_takes_over():
    cs = [Candidate(1, 1, priority=0), Candidate(2, 2, priority=0), Candidate(3, 3, priority=1)]
    opened = BreakerState(status=Circuit.OPEN, failures=5, cooldown_s=30.0, opened_until=130.0)
    breakers = {1: opened, 2: opened}
    assert [c.route_id for c in plan_of(cs, breakers, now=100.0)] == [3]
    levels = route_levels(cs, breakers=breakers, now=130.0)
    assert [c.route_id for c in levels[0].probe_ready] == [1, 2]
    assert levels[0].passing == ()


def test_level_digest_changes_when_a_weight_or_route_changes():
    a = [Candidate(1, 1, weight=3), Candidate(2, 1, weight=1)]
    assert level_digest(a) == level_digest(list(reversed(a)))
    assert level_digest(a) != level_digest([replace(a[0], weight=2), a[1]])
    assert level_digest(a) != level_digest(a[:1])


def test_duplicate_route_ids_are_rejected():
    with pytest.raises(ValueError):
        route_levels([Candidate(1, 1), Candidate(1, 2)], breakers={}, now=0.0)


def test_candidate_rejects_settings_no_breaker_can_honour():
    with pytest.raises(ValueError):
        Candidate(1, 1, weight=-1)
    with pytest.raises(ValueError):
        Candidate(1, 1, cooldown_s=600.0, max_cooldown_s=300.0)
    with pytest.raises(ValueError):
        Candidate(1, 1, max_inflight=0)


def fail(state: BreakerState, now: float, times: int = 1) -> BreakerState:
    for _ in range(times):
        state = breaker_transition(state, BreakerEvent.FAILURE, now=now, config=CONFIG,
                                   error_class="http_503")
    return state


def test_breaker_opens_after_threshold_consecutive_failures():
    state = fail(BreakerState(), now=100.0, times=4)
    assert state.status is Circuit.CLOSED and state.failures == 4
    state = fail(state, now=101.0)
    assert state.status is Circuit.OPEN
    assert state.opened_until == 131.0 and state.last_error == "http_503"
    assert breaker_admission(state, now=130.9) is Admission.BLOCK
    assert breaker_admission(state, now=131.0) is Admission.PROBE


def test_success_resets_the_consecutive_count():
    state = fail(BreakerState(), now=1.0, times=4)
    state = breaker_transition(state, BreakerEvent.SUCCESS, now=2.0, config=CONFIG)
    assert fail(state, now=3.0, times=4).status is Circuit.CLOSED


def test_only_one_probe_is_let_through_until_it_answers_or_times_out():
    opened = fail(BreakerState(), now=0.0, times=5)
    assert breaker_transition(opened, BreakerEvent.PROBE, now=10.0, config=CONFIG) is opened
    probing = breaker_transition(opened, BreakerEvent.PROBE, now=30.0, config=CONFIG)
    assert probing.status is Circuit.HALF_OPEN
    assert breaker_admission(probing, now=31.0) is Admission.BLOCK
    assert breaker_transition(probing, BreakerEvent.PROBE, now=31.0, config=CONFIG) is probing
    # The prober died without reporting: after probe_timeout_s another caller may probe.
    assert breaker_admission(probing, now=90.0) is Admission.PROBE


def test_failed_probe_doubles_the_cooldown_up_to_the_cap():
    state = fail(BreakerState(), now=0.0, times=5)
    cooldowns = []
    now = 0.0
    for _ in range(6):
        now = state.opened_until
        state = breaker_transition(state, BreakerEvent.PROBE, now=now, config=CONFIG)
        state = fail(state, now=now)
        cooldowns.append(state.cooldown_s)
    assert cooldowns == [60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    assert state.status is Circuit.OPEN and state.opened_until == now + 300.0


def test_successful_probe_closes_and_resets_the_cooldown():
    state = fail(BreakerState(), now=0.0, times=5)
    state = breaker_transition(state, BreakerEvent.PROBE, now=30.0, config=CONFIG)
    state = fail(state, now=30.0)
    state = breaker_transition(state, BreakerEvent.PROBE, now=90.0, config=CONFIG)
    state = breaker_transition(state, BreakerEvent.SUCCESS, now=91.0, config=CONFIG)
    assert state.status is Circuit.CLOSED and state.failures == 0
    assert state.last_error == "http_503"
    reopened = fail(state, now=100.0, times=5)
    assert reopened.cooldown_s == 30.0


def test_open_circuit_ignores_late_success_and_keeps_counting_failures():
    state = fail(BreakerState(), now=0.0, times=5)
    assert breaker_transition(state, BreakerEvent.SUCCESS, now=1.0, config=CONFIG) is state
    later = fail(state, now=2.0)
    assert later.failures == 6 and later.opened_until == state.opened_until


def test_exhausted_plan_says_why_and_when_to_retry():
    cs = [Candidate(1, 1), Candidate(2, 2)]
    breakers = {1: BreakerState(status=Circuit.OPEN, opened_until=140.0),
                2: BreakerState(status=Circuit.HALF_OPEN, probe_until=125.0)}
    plan = exhausted_plan(cs, breakers=breakers, now=100.0)
    assert plan.routes == () and plan.reason == "circuit_open" and plan.retry_after_s == 25.0
    drained = exhausted_plan([Candidate(1, 1, weight=0)], breakers={}, now=0.0)
    assert drained.routes == () and drained.reason == "no_active_route"


def test_backoff_grows_jittered_and_capped():
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, None, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100
    assert backoff_delay(1, 1.5, rng) == 1.5
    assert backoff_delay(1, 60.0, rng) == 2.0
    assert backoff_delay(3, 0.0, random.Random(1)) == backoff_delay(3, None, random.Random(1))
