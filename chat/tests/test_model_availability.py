"""Which of a user's models the chat picker offers (chat.turns.model_unavailable): pure, on
the breaker views gateway.routing_state reports."""
from __future__ import annotations

from gateway.routing import Candidate
from gateway.routing_state import BreakerView
from providers.selectors import Deployment

NOW = 1_000.0


def deployment(route_id: int, weight: int = 1) -> Deployment:
    return Deployment(route_id=route_id, provider_id=route_id, provider_name=f"p{route_id}",
                      kind="openai", base_url="http://upstream.test", upstream_model="m",
                      weight=weight, priority=0, timeout_s=30, max_inflight=10,
                      candidate=Candidate(route_id=route_id, provider_id=route_id, weight=weight))


def view(route_id: int, state: str, opened_until: float | None = None) -> BreakerView:
    return BreakerView(route_id=route_id, provider_id=route_id, state=state,
                       consecutive_failures=0 if state == "closed" else 2,
                       last_error_class=None, last_error_at=None, opened_until=opened_until,
                       cooldown_s=30, in_flight=0, max_inflight=10, shared=False)


def unavailable(deployments, views):
    from chat.turns import model_unavailable

    return model_unavailable(deployments, {v.route_id: v for v in views}, now=NOW)


def test_one_closed_circuit_is_enough():
    assert unavailable([deployment(1), deployment(2)],
                       [view(1, "open", NOW + 20), view(2, "closed")]) is None
    assert unavailable([deployment(1)], []) is None  # no state yet: closed


def test_every_circuit_open_makes_the_model_unavailable_until_the_first_cool_down_ends():
    assert unavailable([deployment(1), deployment(2)],
                       [view(1, "open", NOW + 20.2), view(2, "open", NOW + 4.5)]) == \
        {"reason": "circuit_open", "retry_after_s": 5}
    # A probe in flight on the other route: still nothing to send to now.
    assert unavailable([deployment(1), deployment(2)],
                       [view(1, "open", NOW + 0.1), view(2, "half_open", NOW - 1)]) == \
        {"reason": "circuit_open", "retry_after_s": 1}


def test_a_circuit_past_its_cool_down_serves_the_next_request_as_its_probe():
    assert unavailable([deployment(1)], [view(1, "open", NOW)]) is None


def test_routes_without_weight_do_not_count():
    assert unavailable([deployment(1, weight=0), deployment(2)],
                       [view(1, "closed"), view(2, "open", NOW + 10)]) == \
        {"reason": "circuit_open", "retry_after_s": 10}
    assert unavailable([deployment(1, weight=0)], [view(1, "closed")]) == \
        {"reason": "no_active_route", "retry_after_s": None}
